"""Every task end to end on tiny settings (run() where the run folder matters, a prepared task where the loop's
parts do), each net's ability to fit, and bad input ending in a clear DIPError."""

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_NET, compose_cfg, dip_cli, save_png
from hydra.utils import instantiate
from PIL import Image

from dip_lightning.errors import DIPError

TINY_RANDOM_CNN = ["task.weights=random", "task.layer=conv3"]


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return skimage.data.astronaut()[160:224, 180:244]  # 64x64 face and helmet


def png(tmp_path, name, array):
    return save_png(tmp_path / name, np.ascontiguousarray(array))


def prepared(overrides):
    """The task as dip-run builds it, prepared on its image, without a Trainer (fast checks of the loop's parts)."""
    from dip_lightning.run.prepare import build_run

    _, _, task, data = build_run(compose_cfg([*TINY, *overrides]))
    task.prepare(data)
    task.jitter_gen = torch.Generator().manual_seed(1)
    return task


# -------------------------------------------------------------------------------------------- super-resolution
def test_super_resolution_scores_on_y_and_saves_the_baselines(run_dip):
    m, run_dir = run_dip([*TINY, "task=super_resolution", "task.factor=4", "iterations=10"])
    assert m["psnr_observed"] == pytest.approx(m["psnr_bicubic"])  # the bar to beat is bicubic upsampling
    for key in ("psnr_rgb_final", "psnr_rgb_bicubic", "psnr_nearest", "psnr_rgb_nearest"):
        assert m[key] is not None and 5 < m[key] < 60, key
    assert m["psnr_bicubic"] > m["psnr_nearest"]
    sizes = {n: Image.open(run_dir / f"{n}.png").size for n in ("observed", "restored", "bicubic", "nearest")}
    assert sizes == {"observed": (16, 16), "restored": (64, 64), "bicubic": (64, 64), "nearest": (64, 64)}


def test_super_resolution_psnr_is_y_channel_with_4_pixels_shaved():
    from dip_lightning.metrics import psnr_y_shaved

    task = prepared(["task=super_resolution", "task.factor=2"])
    out = torch.rand_like(task.clean)
    assert task.gt_psnr(out) == psnr_y_shaved(out, task.clean, 4)  # the paper's script: 4 px at every factor
    assert task.operator(task.clean).shape[-2:] == task.observed.shape[-2:] == (32, 32)


def test_super_resolution_of_a_given_lr_image_without_ground_truth(run_dip, tmp_path, photo):
    lr = png(tmp_path, "lr.png", photo[::2, ::2])  # 32x32
    m, run_dir = run_dip(
        [*TINY, "task=super_resolution", "task.factor=2", "data.image=null", f"data.observed={lr}", "iterations=3"]
    )
    assert m["psnr_observed"] is None and m["psnr_best"] is None
    assert Image.open(run_dir / "restored.png").size == Image.open(run_dir / "bicubic.png").size == (64, 64)


# ------------------------------------------------------------------------------------------------- inpainting
def test_inpainting_half_the_pixels_missing_gains_8_db(run_dip):
    # The acceptance run: 64x64 crop, 50% random pixels missing, small skip net, 500 iterations.
    m, run_dir = run_dip(
        [*TINY, "task=inpainting", "data.mask=random", "data.mask_ratio=0.5", "iterations=500", "chunk=100"]
    )
    assert m["psnr_best"] - m["psnr_observed"] >= 8, m
    observed = np.asarray(Image.open(run_dir / "observed.png"))
    assert 0.45 < (observed.max(axis=2) == 0).mean() < 0.55  # observed.png shows the missing pixels (black)


def test_inpainting_mask_file_is_cropped_like_the_image_and_thresholded_at_one_half(tmp_path):
    import skimage.data

    ramp = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))  # grey levels: a non-binary mask
    task = prepared(["task=inpainting", f"data.mask={png(tmp_path, 'ramp_mask.png', ramp)}"])
    expected = np.tile(ramp[0, 224:288] / 255 >= 0.5, (64, 1))  # the centre 64x64 crop, known where >= 0.5
    assert 0.3 < expected.mean() < 0.7
    assert np.array_equal(task.operator.mask[0, 0].numpy() == 1, expected)
    clean = skimage.data.astronaut()[224:288, 224:288].transpose(2, 0, 1)[None] / 255
    assert torch.allclose(task.observed, torch.from_numpy(clean * expected).float())


@pytest.mark.parametrize("kind", ["random", "text", "blocks"])
def test_generated_masks_are_seeded(kind):
    from dip_lightning.data.masks import generate

    a, b = generate(kind, (64, 64), 0.3, seed=1), generate(kind, (64, 64), 0.3, seed=1)
    assert torch.equal(a, b) and a.shape == (1, 1, 64, 64)
    assert not torch.equal(a, generate(kind, (64, 64), 0.3, seed=2))
    assert 0.05 < 1 - a.mean().item() < 0.6
    assert set(a.unique().tolist()) == {0.0, 1.0}


def test_restoration_keeps_the_requested_fraction():
    task = prepared(["task=restoration", "task.kept=0.1"])
    assert 0.08 < task.operator.mask.mean().item() < 0.12
    assert torch.equal(task.observed, task.clean * task.operator.mask)


def test_inpainting_with_meshgrid_input_and_the_loss_on_known_pixels_only():
    task = prepared(["task=inpainting", "data.mask=text", "task.input_type=meshgrid", "net.input_depth=2"])
    assert task.z.shape == (1, 2, 64, 64) and task.z[0, 0, 0, -1] == 1  # x runs 0..1 left to right
    out = torch.rand(1, 3, 64, 64, requires_grad=True)
    loss, _ = task.operator.loss(out, task.observed)
    loss.backward()
    missing = task.operator.mask.expand_as(out) == 0
    assert missing.any() and out.grad[missing].abs().max() == 0 and out.grad[~missing].abs().max() > 0


# ------------------------------------------------------------------------------- flash / no-flash, JPEG, blur
def test_flash_no_flash_uses_the_flash_photo_as_input(run_dip, tmp_path, photo):
    flash = png(tmp_path, "flash.png", photo)
    no_flash = png(tmp_path, "noflash.png", (photo * 0.4).astype(np.uint8))
    m, run_dir = run_dip(
        [
            *TINY,
            "task=flash_no_flash",
            "data.image=null",
            f"data.flash={flash}",
            f"data.no_flash={no_flash}",
            "net.input_depth=3",
            "iterations=3",
        ]
    )
    assert m["psnr_best"] is None and m["iterations"] == 3
    assert np.array_equal(np.asarray(Image.open(run_dir / "observed.png")), np.asarray(Image.open(no_flash)))


def test_jpeg_simulated_from_a_clean_image():
    low, high = prepared(["task=jpeg", "task.quality=5"]), prepared(["task=jpeg", "task.quality=90"])
    assert 15 < low.observed_psnr() < high.observed_psnr() < 50


def test_jpeg_blind_run_of_a_given_jpeg(run_dip, tmp_path, photo):
    jpg = tmp_path / "given.jpg"
    Image.fromarray(photo).save(jpg, quality=15)
    m, run_dir = run_dip([*TINY, "task=jpeg", "data.image=null", f"data.observed={jpg}", "iterations=3"])
    assert m["psnr_observed"] is None and m["psnr_best"] is None and (run_dir / "restored.png").exists()


def test_deblurring_run(run_dip):
    m, _ = run_dip([*TINY, "task=deblurring", "task.kernel=motion", "task.sigma=5", "iterations=3"])
    assert 15 < m["psnr_observed"] < 40 and m["iterations"] == 3


@pytest.mark.parametrize("kernel, shape", [("gaussian", (9, 9)), ("k.npy", (3, 5)), ("k.png", (5, 5))])
def test_deblurring_kernels_and_seeded_noise(tmp_path, kernel, shape):
    np.save(tmp_path / "k.npy", np.ones((3, 5), np.float32))
    png(tmp_path, "k.png", np.full((5, 5), 200, np.uint8))
    kernel = kernel if kernel == "gaussian" else str(tmp_path / kernel)
    a, b = (
        prepared(["task=deblurring", f"task.kernel={kernel}"]),
        prepared(["task=deblurring", f"task.kernel={kernel}"]),
    )
    assert torch.equal(a.observed, b.observed)  # the noise is seeded
    w = a.operator.weight[0, 0]
    assert abs(w.sum().item() - 1) < 1e-5 and tuple(w.shape) == shape


# ----------------------------------------------------------------------------------- CNN feature tasks
def test_feature_inversion_runs_through_the_entry_point_with_random_weights(run_dip, caplog):
    m, run_dir = run_dip([*TINY, "task=feature_inversion", *TINY_RANDOM_CNN, "iterations=3"])
    assert "random weights" in caplog.text
    assert m["psnr_observed"] is None and m["iterations"] == 3 and (run_dir / "restored.png").exists()


@pytest.mark.parametrize(
    "task, extra",
    [
        ("feature_inversion", ["task.target_size=64", "task.generate_size=64"]),
        ("activation_maximization", ["task.image_size=64", "task.generate_size=64", "task.unit=5"]),
    ],
)
def test_cnn_tasks_reduce_their_loss(task, extra):
    t = prepared([f"task={task}", *TINY_RANDOM_CNN, *extra, "optimizer.lr=0.01"])
    opt = t.make_optimizer()
    losses = [t.dip_iteration(opt)[0].item() for _ in range(40)]
    assert np.mean(losses[-5:]) < losses[0] - 0.1 * abs(losses[0]), losses[::5]


# -------------------------------------------------------------------- observation and ground truth from the hooks
def loaded_and_prepared(overrides):
    """(the task, its data as loaded, copies of data.clean / data.observed before prepare)."""
    from dip_lightning.run.prepare import build_run

    _, _, task, data = build_run(compose_cfg([*TINY, *overrides]))
    before = {k: None if v is None else v.clone() for k, v in (("clean", data.clean), ("observed", data.observed))}
    task.prepare(data)
    return task, data, before


def test_a_tasks_observation_and_ground_truth_come_from_its_hooks_and_the_data_stays_as_read(tmp_path, photo):
    """prepare_observation / prepare_ground_truth make what the loss fits and what is scored; the loaded data
    is left as it was read (the run identity hashes its content)."""
    given = png(tmp_path, "given.png", photo)
    task, data, before = loaded_and_prepared(["task=inpainting", "data.mask=blocks", f"data.observed={given}"])
    assert torch.equal(data.observed, before["observed"]) and task.given_observation
    assert torch.equal(task.observed, before["observed"] * task.operator.mask)  # the known pixels only
    assert (task.operator.mask == 0).any()

    dark = png(tmp_path, "dark.png", (photo * 0.4).astype(np.uint8))
    flash = ["task=flash_no_flash", "data.image=null", f"data.flash={given}", f"data.no_flash={dark}"]
    task, data, _ = loaded_and_prepared([*flash, "net.input_depth=3"])
    assert data.observed is None and task.given_observation and task.simulated_noise_sigma() is None
    assert torch.equal(task.observed, data.extras["no_flash"]) and task.out_avg.shape == data.extras["no_flash"].shape

    sizes = ["task.target_size=32", "task.generate_size=64"]
    task, data, before = loaded_and_prepared(["task=feature_inversion", *TINY_RANDOM_CNN, *sizes])
    assert torch.equal(data.clean, before["clean"]) and data.clean.shape[-2:] == (64, 64)
    assert task.clean.shape[-2:] == task.out_avg.shape[-2:] == (32, 32)  # the target, resized for the CNN

    sizes = ["task.image_size=64", "task.generate_size=64"]
    task, data, before = loaded_and_prepared(["task=activation_maximization", *TINY_RANDOM_CNN, *sizes])
    assert torch.equal(data.clean, before["clean"]) and data.observed is None
    assert task.clean is None and task.observed.unique().tolist() == [0.5]  # no image: a gray stand-in


# ---------------------------------------------------------------------------------------------------- nets
@pytest.mark.parametrize(
    "net, extra",
    [
        ("skip_small", TINY_NET),
        ("unet", ["net.num_channels=[8,16,32]"]),
        ("resnet", ["net.num_blocks=2", "net.num_channels=16"]),
        ("decoder", ["net.num_channels=[32,32,32,32]"]),
    ],
)
def test_each_net_fits_an_image(photo, net, extra):
    torch.manual_seed(0)
    model = instantiate(compose_cfg([f"net={net}", *extra]).net, output_channels=3)  # null: dip-run's image's
    target = torch.from_numpy(photo[:32, :32]).permute(2, 0, 1)[None].float() / 255
    h, w = model.input_size(32, 32) if hasattr(model, "input_size") else (32, 32)
    depth = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    z = torch.rand(1, depth, h, w, generator=torch.Generator().manual_seed(0)) * 0.1
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(model(z), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model(z).shape == target.shape
    assert losses[-1] < 0.3 * losses[0], (net, losses[0], losses[-1])


# ----------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def bad_files(tmp_path):
    png(tmp_path, "small_mask.png", np.full((50, 60), 255, np.uint8))
    png(tmp_path, "black_mask.png", np.zeros((512, 512), np.uint8))
    png(tmp_path, "flash.png", np.zeros((64, 64, 3), np.uint8))
    png(tmp_path, "noflash.png", np.zeros((64, 80, 3), np.uint8))
    (tmp_path / "vgg.pth").write_bytes(b"not a checkpoint")
    return tmp_path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["task=inpainting", "data.mask={d}/small_mask.png"],
            r"small_mask\.png.* 60x50 .*astronaut.*512x512.*same size",
        ),
        (["task=inpainting", "data.mask={d}/black_mask.png"], r"black_mask\.png.*no known pixels"),
        (["task=inpainting"], r"needs a mask: data\.mask="),
        (["task=inpainting", "data.mask=random", "data.mask_ratio=1.5"], r"mask_ratio=1\.5.*0 <= mask_ratio < 1"),
        (["task=super_resolution", "task.factor=3"], r"x3 .*64x64.*multiples of task\.factor=3"),
        (["task=super_resolution", "task.factor=1"], r"task\.factor=1 .*>= 2"),
        (
            [
                "task=flash_no_flash",
                "data.image=null",
                "data.flash={d}/flash.png",
                "data.no_flash={d}/noflash.png",
                "net.input_depth=3",
            ],
            r"data\.no_flash .*noflash\.png.* 80x64 .*data\.flash .*flash\.png.* 64x64",
        ),
        (
            ["task=flash_no_flash", "data.image=null", "data.flash={d}/flash.png", "net.input_depth=3"],
            r"missing: data\.no_flash",
        ),
        (["task=jpeg", "task.quality=0"], r"task\.quality=0 .*1 <= quality <= 100"),
        (["task=jpeg", "task.quality=101"], r"task\.quality=101 "),
        (
            ["task=feature_inversion", "task.weights=random", "task.layer=fc9"],
            r"task\.layer='fc9'.*valid layers: .*fc6",
        ),
        (["task=feature_inversion", "task.weights={d}/alexnet.pth"], r"alexnet\.pth.*does not exist"),
        (["task=feature_inversion", "task.cnn=vgg16", "task.weights={d}/vgg.pth"], r"vgg\.pth.*could not be read"),
        (["task=feature_inversion"], r"task\.weights is not set"),
        (
            ["task=activation_maximization", "task.weights=random", "task.unit=5000", "task.generate_size=256"],
            r"task\.unit=5000 .*0 <= unit < 1000",
        ),
        (
            ["task=activation_maximization", "task.weights=random", "task.image_size=64", "task.generate_size=64"],
            r"task\.image_size=64 px does not fit layer 'fc8'.*224 px",
        ),
        (
            [
                "task=activation_maximization",
                "task.weights=random",
                "task.layer=conv4",
                "task.image_size=64",
                "task.generate_size=60",
            ],
            r"task\.generate_size=60 is not valid for an output of 64 px; expected a multiple of .* at least",
        ),
        (["task=deblurring", "task.kernel={d}/nokernel.npy"], r"nokernel\.npy.*does not exist"),
    ],
)
def test_bad_input_is_a_clear_error(run_dip, bad_files, overrides, message):
    with pytest.raises(DIPError, match=message):
        run_dip([*TINY, "iterations=2", *[o.format(d=bad_files) for o in overrides]])


def test_torchvision_layout_weights_load_and_wrong_ones_fail_via_the_command_line(tmp_path):
    from dip_lightning.nets.cnns import load_cnn

    torch.manual_seed(0)
    reference = load_cnn("alexnet", "random")
    torch.save(reference.state_dict(), tmp_path / "alexnet.pth")
    loaded = load_cnn("alexnet", str(tmp_path / "alexnet.pth"))
    assert torch.equal(loaded.classifier[6].weight, reference.classifier[6].weight)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    proc = dip_cli(
        [
            *TINY,
            "task=feature_inversion",
            "task.cnn=vgg16",
            f"task.weights={tmp_path / 'wrong.pth'}",
            "iterations=2",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "does not fit torchvision's vgg16" in proc.stderr and "wrong.pth" in proc.stderr
    assert "Traceback" not in proc.stderr
