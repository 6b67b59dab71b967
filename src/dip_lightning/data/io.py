"""Reading and writing images as float tensors in [0, 1], shape (1, C, H, W); every write is atomic."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DIPError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The largest image read (width x height), data.max_pixels. A 13000x13000 PNG can be a 500 KB file; decoding it takes
# width x height x channels bytes before any crop. PIL's own guard (a DecompressionBombError traceback above 179
# million pixels) is replaced by this limit and its one-paragraph error.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None  # read_image checks data.max_pixels from the header, before decoding


def read_image(
    path: str | os.PathLike, crop: tuple[int, int] | None = None, max_pixels: int | None = MAX_PIXELS
) -> torch.Tensor:
    """Read an image: grayscale stays 1 channel, alpha is dropped, 16-bit data is scaled by 65535. `crop` (height,
    width) takes a centre crop before the conversion to float, so memory beyond the decoded file is the crop's."""
    path = Path(path)
    if not path.exists():
        raise DIPError(
            f"Image file {str(path)!r} does not exist; expected a path to a PNG/JPEG/BMP/TIFF image "
            "(relative paths are read from data.root) or a built-in image name. The presets (experiment=...) read "
            "their images from paths.data_root: point it at a copy of the data/ folder of the reference repository "
            "(github.com/DmitryUlyanov/deep-image-prior) with paths.data_root=<folder> on the command line, or the "
            "environment variable DIP_DATA_ROOT=<folder>, or data.root=<folder> for one run."
        )
    if path.is_dir():
        raise DIPError(
            f"{str(path)!r} is a folder, expected one image file (a multirun takes folders: "
            "use -m with data.image=glob(...) )."
        )
    try:
        with Image.open(path) as img:
            check_pixels(path, img.size, max_pixels)
            if crop is not None:
                w, h = img.size
                ch, cw = min(crop[0], h), min(crop[1], w)
                top, left = (h - ch) // 2, (w - cw) // 2
                img.load()
                img = img.crop((left, top, left + cw, top + ch))
            img.load()
            array = _to_array(img)
    except UnidentifiedImageError:
        raise DIPError(f"{str(path)!r} is not an image PIL can read; expected PNG, JPEG, BMP or TIFF.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DIPError(f"{str(path)!r} could not be decoded ({err}); the file may be truncated or corrupt.") from None
    return array_to_tensor(array)


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, from its header (nothing is decoded)."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except UnidentifiedImageError:
        raise DIPError(f"{str(path)!r} is not an image PIL can read; expected PNG, JPEG, BMP or TIFF.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DIPError(f"{str(path)!r} could not be read ({err}); the file may be truncated or corrupt.") from None


def check_pixels(path: str | os.PathLike, size: tuple[int, int], max_pixels: int | None) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise DIPError(
            f"{str(path)!r} is {w}x{h} pixels ({w * h / 1e6:.0f} million), over data.max_pixels="
            f"{max_pixels} ({max_pixels / 1e6:g} million): decoding it alone would take "
            f"{w * h * 3 / 2**30:.1f} GB for RGB, and DIP on such a size is out of reach. Crop or downscale "
            "the file first, or raise data.max_pixels if the memory is there."
        )


def _to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0  # 16-bit PNGs open as mode I
        return arr / peak if mode == "I" else np.clip(arr, 0, 1)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode in ("L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # RGBA, P, CMYK, YCbCr ... -> RGB


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxW or HxWxC array in [0, 1] (or uint8) -> (1, C, H, W) float tensor."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].clone()


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) float tensor -> HxW or HxWx3 uint8 array (what PIL and wandb want)."""
    img = img.detach().float().cpu()
    if img.ndim == 4:
        img = img[0]
    arr = (img.clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place, with the permissions a
    plain open() would give (mkstemp makes its files private, 0600, whatever the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_image(path: str | os.PathLike, img: torch.Tensor) -> Path:
    arr = to_uint8(img)
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def write_json(path: str | os.PathLike, data: dict) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")

    return atomic_write(path, write)


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
