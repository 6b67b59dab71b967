import numpy as np
import pytest
import torch
from PIL import Image

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.data.io import read_image, write_image
from dip_lightning.data.schedule import ChunkSchedule
from dip_lightning.errors import DIPError


def test_grayscale_stays_one_channel(tmp_path):
    Image.fromarray(np.full((10, 12), 128, np.uint8)).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (1, 1, 10, 12) and torch.allclose(img, torch.full_like(img, 128 / 255))


def test_rgba_drops_alpha(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0], arr[..., 3] = 255, 10
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (1, 3, 8, 8) and img[0, 0].min() == 1 and img[0, 1:].max() == 0


def test_16bit_is_scaled_by_65535(tmp_path):
    arr = np.full((6, 6), 65535 // 2, np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    img = read_image(tmp_path / "d.png")
    assert img.shape == (1, 1, 6, 6) and abs(img.mean().item() - 0.5) < 1e-3


def test_jpeg_bmp_tiff_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    for suffix in ("bmp", "tif", "png"):
        Image.fromarray(arr).save(tmp_path / f"x.{suffix}")
        assert torch.equal(read_image(tmp_path / f"x.{suffix}"), torch.from_numpy(arr).permute(2, 0, 1)[None] / 255.0)
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    assert read_image(tmp_path / "x.jpg").shape == (1, 3, 16, 16)


def test_write_image_is_uint8_png_and_leaves_no_temp_file(tmp_path):
    write_image(tmp_path / "out.png", torch.rand(1, 3, 8, 8))
    assert Image.open(tmp_path / "out.png").mode == "RGB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("not an image at all"), "is not an image"),
    ],
)
def test_bad_files_are_named(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(DIPError, match=message) as err:
        read_image(path)
    assert "bad.png" in str(err.value)


def test_truncated_image(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DIPError, match="truncated"):
        read_image(tmp_path / "t.png")


def test_builtin_names_and_unknown_name():
    dm = SingleImageDataModule(image="astronaut", crop=64)
    data = dm.load(size_multiple=32)
    assert data.clean.shape == (1, 3, 64, 64) and data.observed is None
    with pytest.raises(DIPError, match="astronot.*built-in"):
        SingleImageDataModule(image="astronot").load(32)


def test_size_rule_crops_to_a_multiple_and_rejects_too_small(tmp_path):
    Image.fromarray(np.zeros((70, 100, 3), np.uint8)).save(tmp_path / "odd.png")
    data = SingleImageDataModule(image=str(tmp_path / "odd.png"), crop=None).load(size_multiple=32)
    assert data.clean.shape[-2:] == (64, 96)
    Image.fromarray(np.zeros((20, 100, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DIPError, match="small.png.*minimum size.*32"):
        SingleImageDataModule(image=str(tmp_path / "small.png"), crop=None).load(size_multiple=32)


def test_relative_paths_are_read_from_root(tmp_path):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "in_root.png")
    data = SingleImageDataModule(image="in_root.png", root=str(tmp_path), crop=None).load(16)
    assert data.clean.shape == (1, 1, 32, 32)


def test_chunk_schedule_sums_to_the_total():
    assert list(ChunkSchedule(10, 4)) == [4, 4, 2]
    auto = list(ChunkSchedule(1000, "auto", target_seconds=0.0))
    assert sum(auto) == 1000 and all(n >= 1 for n in auto)
    with pytest.raises(DIPError, match="chunk"):
        ChunkSchedule(10, 0)
