"""The classical baselines: each improves on its corrupted input, is timed, and rejects bad arguments clearly."""

import numpy as np
import pytest
import torch
from conftest import import_experiment, save_png

from dip_lightning import baselines as B
from dip_lightning.errors import DIPError
from dip_lightning.metrics import psnr_y_shaved


@pytest.fixture(scope="module")
def clean():
    from skimage import data

    return data.astronaut()[100:164, 180:244].astype(np.float64) / 255.0  # 64x64 colour, with a face edge


@pytest.fixture(scope="module")
def noisy(clean):
    rng = np.random.default_rng(0)
    return np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1)


def test_bm3d_colour_denoises_and_is_timed(clean, noisy):
    res = B.bm3d_denoise(noisy, sigma=25)
    assert res.image.shape == clean.shape and res.seconds > 0
    assert B.psnr(res.image, clean) > B.psnr(noisy, clean) + 4


def test_bm3d_grayscale(clean, noisy):
    res = B.bm3d_denoise(noisy[..., 1], sigma=25)
    assert res.image.shape == clean.shape[:2]
    assert B.psnr(res.image, clean[..., 1]) > B.psnr(noisy[..., 1], clean[..., 1]) + 3


def test_nlm_estimated_and_known_sigma(clean, noisy):
    assert 15 < B.estimate_sigma(noisy) < 35
    for sigma in (None, 25):
        res = B.nlm_denoise(noisy, sigma=sigma)
        assert res.image.shape == clean.shape and res.seconds > 0
        assert B.psnr(res.image, clean) > B.psnr(noisy, clean) + 2
    assert "estimated" in B.nlm_denoise(noisy).name


def test_zs_n2n_denoises_by_a_margin_without_the_noise_level(clean, noisy):
    """200 of the paper's 2000 iterations already give most of its gain on a 64x64 crop (measured: 20.45 -> 27.76
    dB, +7.3; 2000 iterations: +6.2, the tiny image is overfitted a little), about 4 s on one CPU thread."""
    res = B.zs_n2n_denoise(noisy, iterations=200, threads=1)
    assert res.name == "ZS-N2N" and res.image.shape == clean.shape and res.seconds > 0
    assert res.image.min() >= 0 and res.image.max() <= 1
    assert B.psnr(res.image, clean) > B.psnr(noisy, clean) + 5


def test_zs_n2n_is_seeded_and_leaves_the_callers_rng_and_threads(clean, noisy):
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = B.zs_n2n_denoise(noisy, iterations=20, seed=3, threads=1)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert np.array_equal(first.image, B.zs_n2n_denoise(noisy, iterations=20, seed=3, threads=1).image)
    assert not np.array_equal(first.image, B.zs_n2n_denoise(noisy, iterations=20, seed=4, threads=1).image)


def test_zs_n2n_grayscale_odd_sizes_and_uint8(clean, noisy):
    """An odd side loses its last row/column in the halves only: the result keeps the input's shape."""
    gray, gray_noisy = clean[:63, :61, 1], noisy[:63, :61, 1]
    res = B.zs_n2n_denoise(gray_noisy, iterations=150, device="cpu")
    assert res.image.shape == gray.shape
    assert B.psnr(res.image, gray) > B.psnr(gray_noisy, gray) + 3
    u8 = np.round(noisy[:8, :8] * 255).astype(np.uint8)
    assert B.zs_n2n_denoise(u8, iterations=2).image.shape == (8, 8, 3)


def test_sr_lr_and_upsampling(clean):
    lr = B.make_lr(clean, 4)
    assert lr.shape == (16, 16, 3)
    assert np.allclose(lr * 255, np.round(lr * 255))  # 8-bit, as the paper's PIL pipeline
    bic, near = B.upsample(lr, 4, "bicubic"), B.upsample(lr, 4, "nearest")
    assert bic.image.shape == near.image.shape == clean.shape
    assert np.array_equal(near.image[::4, ::4], lr)  # nearest replicates each LR pixel
    assert B.psnr_y_shaved(bic.image, clean, 4) > B.psnr_y_shaved(near.image, clean, 4)


def test_psnr_y_shaved_matches_the_framework(clean, noisy):
    t = lambda a: torch.from_numpy(a.transpose(2, 0, 1)[None].copy()).float()  # noqa: E731
    assert B.psnr_y_shaved(noisy, clean, 4) == pytest.approx(float(psnr_y_shaved(t(noisy), t(clean), 4)), abs=1e-3)
    assert B.psnr(noisy, clean) == pytest.approx(-10 * np.log10(np.mean((noisy - clean) ** 2)))


def test_biharmonic_inpaints_missing_pixels(clean):
    gray = clean.mean(axis=-1)
    known = np.random.default_rng(1).random(gray.shape) > 0.5
    observed = np.where(known, gray, 0.0)
    assert np.array_equal(B.mask_from_input(observed), known & (gray != 0))
    res = B.biharmonic_inpaint(observed, known)
    assert res.image.shape == gray.shape and res.seconds > 0
    assert np.allclose(res.image[known], gray[known])  # known pixels are kept
    assert B.psnr(B.biharmonic_inpaint(observed).image, gray) > B.psnr(observed, gray) + 10  # mask = input != 0
    assert B.psnr(res.image, gray) > B.psnr(observed, gray) + 10


def test_torch_layout_and_uint8_inputs(clean):
    u8 = np.round(clean * 255).astype(np.uint8)
    assert B.as_float_image(u8).max() <= 1.0
    chw = clean.transpose(2, 0, 1)[None]
    assert B.as_float_image(chw).shape == clean.shape


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda img: B.bm3d_denoise(img, sigma=-1), "sigma=-1"),
        (lambda img: B.nlm_denoise(img, sigma=300), "sigma=300"),
        (lambda img: B.upsample(img, 0), "factor=0"),
        (lambda img: B.upsample(img, 2, "cubic-spline"), "cubic-spline"),
        (lambda img: B.make_lr(img[:63], 4), "multiple of factor 4"),
        (lambda img: B.biharmonic_inpaint(img[..., 0], np.ones((3, 3), bool)), "does not match"),
        (lambda img: B.as_float_image(np.zeros((2, 3, 4, 5))), "expected \\(H, W\\)"),
        (lambda img: B.zs_n2n_denoise(img, iterations=0), "iterations=0 is not valid; expected a whole number >= 1"),
        (lambda img: B.zs_n2n_denoise(img, iterations=2.5), "iterations=2.5"),
        (lambda img: B.zs_n2n_denoise(img, lr=0), "lr=0 is not valid; expected a finite learning rate > 0"),
        (lambda img: B.zs_n2n_denoise(img, lr=float("nan")), "lr=nan"),
        (lambda img: B.zs_n2n_denoise(img, threads=0), "threads=0"),
        (lambda img: B.zs_n2n_denoise(img, seed="a"), "seed='a'"),
        (lambda img: B.zs_n2n_denoise(img, device="tpu0"), "device='tpu0' is not valid"),
        (lambda img: B.zs_n2n_denoise(img[:1]), "64x1; ZS-N2N splits it into 2x2 blocks"),
        (lambda img: B.zs_n2n_denoise(np.full((4, 4), np.nan)), "NaN or infinite"),
    ],
)
def test_bad_arguments_name_the_value(clean, call, match):
    with pytest.raises(DIPError, match=match):
        call(clean)


def test_the_early_stopping_benchmark_scores_zs_n2n_on_the_crop_a_dip_run_sees(tmp_path, clean, noisy):
    # its job once took images with their batch dimension and crashed after the DIP runs of the benchmark
    bench = import_experiment("bench_early_stopping")
    gt = save_png(tmp_path / "gt.png", (clean * 255).round().astype(np.uint8))
    observed = save_png(tmp_path / "noisy.png", (noisy * 255).round().astype(np.uint8))
    job = {"variant": bench.ZS_N2N, "seed": 0, "dir": str(tmp_path / "job")}
    job["overrides"] = [f"data.image={gt}", f"data.observed={observed}"]
    m = bench.run_job(job, ["data.crop=48"])
    assert m["psnr"] > m["psnr_observed"] + 3, m
    assert (tmp_path / "job" / "restored.png").is_file() and (tmp_path / "job" / "metrics.json").is_file()
