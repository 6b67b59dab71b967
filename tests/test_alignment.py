"""Paired images take the same region: every pair here has a KNOWN alignment (an exact box-average downscale, a copy,
a known relation between two photos, a mask whose missing pixels are black in the image), and the loaded pair must
keep it, whatever data.crop, the size rule's crop to the net's multiple and data.pad do. Also: an inpainting mask
coded in its alpha channel (transparent = missing)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg
from PIL import Image

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.data.masks import mask_from_image
from dip_lightning.errors import DIPError
from dip_lightning.metrics import psnr
from dip_lightning.operators.linear import pil_resize

EIGHT_BIT = 1 / 255 + 1e-6  # an 8-bit file rounds the exact box average by at most half a level


def noise(shape, seed=0) -> np.ndarray:
    """Random 8-bit pixels: any shift between two crops of it shows as a large error."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def box_down(hr: np.ndarray, f: int) -> np.ndarray:
    """The exact box-average downscale by f: LR pixel (i, j) = mean of HR rows f*i..f*i+f-1, columns f*j..f*j+f-1
    (a border of fewer than f rows or columns is left out), rounded to 8 bits."""
    h, w = hr.shape[0] // f, hr.shape[1] // f
    blocks = hr[: h * f, : w * f].astype(np.float64).reshape(h, f, w, f, *hr.shape[2:])
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def save(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.astype(np.float32) / 255).permute(2, 0, 1)[None]


def max_error(observed: torch.Tensor, clean: torch.Tensor, f: int) -> float:
    return float((torch.nn.functional.avg_pool2d(clean, f) - observed).abs().max())


# ------------------------------------------------------------------------------------- super-resolution pairs
@pytest.mark.parametrize(
    "hr_size, f, crop, multiple, shape, corner",
    [
        ((100, 100), 4, None, 32, (96, 96), (0, 0)),  # the probe's case: centre offset 2, rounded down to 0
        ((100, 100), 4, 64, 32, (64, 64), (16, 16)),  # centre offset 18, rounded down to 16 (LR pixel 4)
        ((100, 100), 4, [48, 80], 16, (48, 80), (24, 8)),  # non-square
        ((101, 99), 2, None, 8, (96, 96), (2, 0)),  # odd sizes: the LR (50x49) leaves the HR's last row out
        ((100, 100), 3, None, 32, (96, 96), (0, 0)),  # 3 does not divide 32: a multiple of both, 96
        ((130, 70), 4, [100, 50], 8, (96, 48), (16, 8)),
    ],
)
def test_a_super_resolution_pair_takes_the_same_region_of_both(tmp_path, hr_size, f, crop, multiple, shape, corner):
    hr = noise((*hr_size, 3))
    image, observed = save(tmp_path / "hr.png", hr), save(tmp_path / "lr.png", box_down(hr, f))
    data = SingleImageDataModule(image=image, observed=observed, crop=crop).load(multiple, observed_scale=f)
    assert tuple(data.clean.shape[-2:]) == shape and tuple(data.observed.shape[-2:]) == (shape[0] // f, shape[1] // f)
    top, left = corner
    assert torch.equal(data.clean, as_tensor(hr[top : top + shape[0], left : left + shape[1]]))
    assert max_error(data.observed, data.clean, f) <= EIGHT_BIT
    # the pattern is distinctive: the same pair one HR pixel apart is far off
    shifted = as_tensor(hr[top + 1 : top + 1 + shape[0], left : left + shape[1]])
    assert max_error(data.observed, shifted, f) > 10 * EIGHT_BIT


def test_a_super_resolution_pair_from_a_built_in_image_is_aligned_too(tmp_path):
    import skimage.data

    lr = save(tmp_path / "lr.png", box_down(skimage.data.astronaut(), 4))  # 128x128
    data = SingleImageDataModule(image="astronaut", observed=lr, crop=100).load(32, observed_scale=4)
    assert data.clean.shape[-2:] == (96, 96) and max_error(data.observed, data.clean, 4) <= EIGHT_BIT


def sr_task(tmp_path, hr: np.ndarray, f: int, crop: str):
    from dip_lightning.run.prepare import build_run

    image, observed = save(tmp_path / "hr.png", hr), save(tmp_path / "lr.png", box_down(hr, f))
    overrides = [*TINY, "task=super_resolution", f"task.factor={f}", "task.shave=0", f"data.crop={crop}"]
    _, _, task, data = build_run(compose_cfg([*overrides, f"data.image={image}", f"data.observed={observed}"]))
    task.prepare(data)
    return task


@pytest.mark.parametrize("crop", ["null", "64"])
def test_the_bicubic_upsampling_of_a_super_resolution_tasks_observation_fits_its_ground_truth_unshifted(tmp_path, crop):
    import skimage.data

    task = sr_task(tmp_path, skimage.data.astronaut()[150:250, 170:270], 4, crop)  # 100x100: the probe's pair
    assert task.given_observation and task.clean.shape[-2:] == ((96, 96) if crop == "null" else (64, 64))
    h, w = task.clean.shape[-2:]
    up = pil_resize(task.observed, (w, h), Image.BICUBIC)
    m = 4  # compare the interiors, each shift within the image

    def score(dy: int, dx: int) -> float:
        return float(psnr(up[..., m : h - m, m : w - m], task.clean[..., m + dy : h - m + dy, m + dx : w - m + dx]))

    at_zero = score(0, 0)
    for s in (-2, -1, 1, 2):
        assert at_zero > score(s, 0) and at_zero > score(0, s), (s, at_zero, score(s, 0), score(0, s))
    assert task.baselines["bicubic"].shape == task.clean.shape


def test_a_super_resolution_pair_with_reflection_padding_is_refused(tmp_path):
    hr = noise((64, 64, 3))
    image, observed = save(tmp_path / "hr.png", hr), save(tmp_path / "lr.png", box_down(hr, 2))
    dm = SingleImageDataModule(image=image, observed=observed, crop=None, pad=2)
    with pytest.raises(DIPError, match=r"data.pad=2 .*hr\.png.* 2x smaller data.observed .*lr\.png"):
        dm.load(8, observed_scale=2)


# ---------------------------------------------------------------------------------- pairs of one size (f = 1)
@pytest.mark.parametrize(
    "size, crop, multiple",
    [
        ((101, 75), None, 32),
        ((100, 100), 63, 32),  # data.crop then the size rule: two centre crops whose offsets round differently
        ((99, 101), [63, 47], 16),
        ((77, 51), [300, 33], 1),  # a crop larger than the image: the whole height
    ],
)
def test_an_observation_of_the_images_size_takes_the_same_region(tmp_path, size, crop, multiple):
    img = noise((*size, 3))
    image, copy = save(tmp_path / "image.png", img), save(tmp_path / "copy.png", img)
    data = SingleImageDataModule(image=image, observed=copy, crop=crop).load(multiple)
    assert data.clean.shape[-1] % multiple == 0 and data.clean.shape[-2] % multiple == 0
    assert torch.equal(data.observed, data.clean)


@pytest.mark.parametrize("crop", [None, 64, [63, 47]])
def test_reflection_padding_pads_both_images_of_a_pair_alike(tmp_path, crop):
    img = noise((101, 99, 3))
    image, copy = save(tmp_path / "image.png", img), save(tmp_path / "copy.png", img)
    data = SingleImageDataModule(image=image, observed=copy, crop=crop, pad=1).load(32)
    h, w = (101, 99) if crop is None else ((64, 64) if crop == 64 else (63, 47))
    assert data.clean.shape[-2:] == (h + 2, w + 2)
    assert torch.equal(data.observed, data.clean)
    top, left = (101 - h) // 2, (99 - w) // 2
    assert torch.equal(data.clean[..., 1:-1, 1:-1], as_tensor(img[top : top + h, left : left + w]))


def test_a_flash_no_flash_pair_takes_the_same_region(tmp_path):
    flash = noise((101, 75, 3))
    dark = flash // 2  # a known relation, pixel for pixel
    paths = {"flash": save(tmp_path / "flash.png", flash), "no_flash": save(tmp_path / "dark.png", dark)}
    for image in (None, paths["no_flash"]):  # without and with a ground truth (the no-flash photo itself)
        data = SingleImageDataModule(image=image, crop=[63, 47], **paths).load(8)
        lit, unlit = data.extras["flash"], data.extras["no_flash"]
        assert lit.shape[-2:] == (56, 40)
        assert torch.equal(torch.round(unlit * 255), torch.floor(torch.round(lit * 255) / 2))
        if image is not None:
            assert torch.equal(data.clean, unlit)


def holes(size, seed=1) -> np.ndarray:
    """A known set of missing pixels (True), about a fifth of them."""
    return np.random.default_rng(seed).random(size) < 0.2


@pytest.mark.parametrize("given", ["image", "observed"])
@pytest.mark.parametrize("crop, multiple", [(None, 32), ([63, 47], 8), (64, 1)])
def test_an_inpainting_mask_file_lines_up_with_the_image(tmp_path, given, crop, multiple):
    missing = holes((101, 75))
    img = np.maximum(noise((101, 75, 3)), 1)
    img[missing] = 0  # black exactly where the mask says missing
    mask = save(tmp_path / "mask.png", np.where(missing, 0, 255).astype(np.uint8))
    dm = SingleImageDataModule(**{given: save(tmp_path / "img.png", img)}, mask=mask, crop=crop)
    data = dm.load(multiple)
    ref = data.clean if given == "image" else data.observed
    loaded = mask_from_image(data.extras["mask"], mask, tuple(ref.shape[-2:]))
    assert torch.equal(loaded[0, 0] == 0, ref[0].amax(dim=0) == 0)
    assert 0.1 < 1 - loaded.mean().item() < 0.3


# ------------------------------------------------------------------------------------------ a mask coded in alpha
def alpha_mask_file(path: Path, missing: np.ndarray, mode: str) -> str:
    """A mask file whose colour is all white and whose alpha is 0 where pixels are missing."""
    alpha = np.where(missing, 0, 255).astype(np.uint8)
    white = np.full(missing.shape, 255, np.uint8)
    if mode == "RGBA":
        img = Image.fromarray(np.dstack([white, white, white, alpha]), "RGBA")
    elif mode == "LA":
        img = Image.fromarray(np.dstack([white, alpha]), "LA")
    else:  # a palette image with a transparent entry, as GIF and palette PNG store transparency
        img = Image.fromarray(np.where(missing, 0, 1).astype(np.uint8), "P")
        img.putpalette([255, 255, 255] * 2)
        img.info["transparency"] = 0  # palette entry 0: transparent (saved as the PNG's tRNS chunk)
    img.save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_mask_coded_in_alpha_is_read_from_its_alpha(tmp_path, mode):
    missing = holes((101, 75))
    img = np.maximum(noise((101, 75, 3)), 1)
    img[missing] = 0
    mask = alpha_mask_file(tmp_path / "alpha_mask.png", missing, mode)
    data = SingleImageDataModule(image=save(tmp_path / "img.png", img), mask=mask, crop=[63, 47]).load(8)
    loaded = mask_from_image(data.extras["mask"], mask, tuple(data.clean.shape[-2:]))
    assert torch.equal(loaded[0, 0] == 0, data.clean[0].amax(dim=0) == 0) and (loaded == 0).any()


def test_a_mask_coded_in_alpha_follows_the_exif_orientation_and_the_crop(tmp_path):
    from PIL import ImageOps

    missing = holes((60, 90))  # stored 90 wide, 60 high; shown turned (orientation 6), 60 wide and 90 high
    path = tmp_path / "turned_mask.png"
    img = Image.fromarray(np.dstack([np.full((60, 90, 3), 255, np.uint8), np.where(missing, 0, 255)]).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(path)))[..., 3] == 0  # missing, as a viewer shows it
    assert shown.shape == (90, 60)
    picture = np.maximum(noise((90, 60, 3)), 1)
    picture[shown] = 0
    data = SingleImageDataModule(image=save(tmp_path / "p.png", picture), mask=str(path), crop=[71, 37]).load(8)
    loaded = mask_from_image(data.extras["mask"], str(path), tuple(data.clean.shape[-2:]))
    assert loaded.shape[-2:] == (64, 32) and torch.equal(loaded[0, 0] == 0, data.clean[0].amax(dim=0) == 0)


def test_an_inpainting_task_with_a_mask_coded_in_alpha_restores_the_transparent_pixels(tmp_path):
    """The probe's case: RGB all white, alpha 0 where missing, used to count every pixel as known."""
    from dip_lightning.run.prepare import build_run

    missing = np.zeros((512, 512), bool)  # the astronaut's size
    missing[240:272, 200:330] = True  # a bar across the centre crop
    mask = alpha_mask_file(tmp_path / "alpha_mask.png", missing, "RGBA")
    _, _, task, data = build_run(compose_cfg([*TINY, "task=inpainting", f"data.mask={mask}"]))
    task.prepare(data)
    expected = ~missing[224:288, 224:288]  # the 64x64 centre crop
    assert np.array_equal(task.operator.mask[0, 0].numpy() == 1, expected) and not expected.all()
    assert torch.isfinite(torch.as_tensor(task.observed_psnr()))  # the observation is not the ground truth


def test_an_opaque_alpha_channel_leaves_the_colour_as_the_mask(tmp_path):
    missing = holes((64, 64))
    gray = np.where(missing, 0, 255).astype(np.uint8)
    mask = save(tmp_path / "opaque.png", np.dstack([gray, gray, gray, np.full((64, 64), 255, np.uint8)]))
    data = SingleImageDataModule(observed=mask, mask=mask, crop=None).load(1)
    assert torch.equal(mask_from_image(data.extras["mask"], mask, (64, 64))[0, 0] == 0, torch.from_numpy(missing))


def test_a_super_resolution_pair_too_small_for_a_box_on_both_grids_is_refused(tmp_path):
    """x3 with a net multiple of 32: the box must be a multiple of 96, which a 64-pixel crop does not hold."""

    hr = noise((100, 100, 3))
    image, observed = save(tmp_path / "hr.png", hr), save(tmp_path / "lr.png", box_down(hr, 3))
    with pytest.raises(DIPError, match=r"hr\.png' is 64x64 pixels .*a multiple of 96"):
        SingleImageDataModule(image=image, observed=observed, crop=64).load(32, observed_scale=3)
