"""The classical baselines: each improves on its corrupted input, is timed, and rejects bad arguments clearly."""

import numpy as np
import pytest
import torch

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
    ],
)
def test_bad_arguments_name_the_value(clean, call, match):
    with pytest.raises(DIPError, match=match):
        call(clean)
