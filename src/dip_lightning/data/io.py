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


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image: grayscale stays 1 channel, alpha is dropped, 16-bit data is scaled by 65535."""
    path = Path(path)
    if not path.exists():
        raise DIPError(f"Image file {str(path)!r} does not exist; expected a path to a PNG/JPEG/BMP/TIFF image "
                       "(relative paths are read from data.root) or a built-in image name.")
    if path.is_dir():
        raise DIPError(f"{str(path)!r} is a folder, expected one image file (a multirun takes folders: "
                       "use -m with data.image=glob(...) ).")
    try:
        with Image.open(path) as img:
            img.load()
            array = _to_array(img)
    except UnidentifiedImageError:
        raise DIPError(f"{str(path)!r} is not an image PIL can read; expected PNG, JPEG, BMP or TIFF.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DIPError(f"{str(path)!r} could not be decoded ({err}); the file may be truncated or corrupt.") from None
    return array_to_tensor(array)


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
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
