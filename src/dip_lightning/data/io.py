"""Reading and writing images as float tensors in [0, 1], shape (1, C, H, W); every write is atomic."""

from __future__ import annotations

import json
import math
import os
import stat
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
    """Read an image: grayscale stays 1 channel, alpha is dropped, 16-bit data is scaled by 65535, float data must
    be in [0, 1], an EXIF orientation is applied (the image as a viewer shows it). `crop` (height, width) takes a
    centre crop of the upright image before the conversion to float, so memory beyond the decoded file is the
    crop's."""
    path = Path(path)
    check_image_file(path)
    try:
        with Image.open(path) as img:
            check_pixels(path, img.size, max_pixels)  # width x height: the same once turned upright
            method = _ORIENTATION.get(orientation(img))
            img.load()
            if crop is not None:
                img = img.crop(_stored_box(img.size, crop, method))
            if method is not None:
                img = img.transpose(method)
            array = _to_array(img, path)
    except DIPError:
        raise
    except UnidentifiedImageError:
        raise DIPError(f"{str(path)!r} is not an image PIL can read; expected PNG, JPEG, BMP or TIFF.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DIPError(f"{str(path)!r} could not be decoded ({err}); the file may be truncated or corrupt.") from None
    return array_to_tensor(array)


def check_image_file(path: Path) -> None:
    """An image path must be a regular file (or a link to one): a FIFO or a device would block the reader or never
    end, so they are refused before anything opens them."""
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
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "special file")
        raise DIPError(
            f"{str(path)!r} is not a regular file but a {kind}, which would block or never end when read as an "
            "image; expected a PNG/JPEG/BMP/TIFF image file (copy the data into a file first)."
        )


_FILE_KINDS = (
    (stat.S_ISFIFO, "FIFO (named pipe)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)

# EXIF orientation (tag 0x0112) -> the transpose that shows the image upright: PIL.ImageOps.exif_transpose's table,
# applied here to the crop alone (a crop loses the EXIF data of some formats, TIFF's, so exif_transpose can't be)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of an open image (1, upright as stored, when it has none or it can't be read)."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the pixels are still what is stored
        return 1
    return value if value in _ORIENTATION else 1


def _upright_size(size: tuple[int, int], method) -> tuple[int, int]:
    return (size[1], size[0]) if method in _SWAPS_SIDES else size


def _stored_box(size: tuple[int, int], crop: tuple[int, int], method) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) of the stored image whose transpose is the centre crop (height, width) of
    the upright image."""
    w, h = size
    uw, uh = _upright_size(size, method)
    ch, cw = min(crop[0], uh), min(crop[1], uw)
    top, left = (uh - ch) // 2, (uw - cw) // 2

    def stored(x: int, y: int) -> tuple[int, int]:  # an upright pixel's place in the stored image
        T = Image.Transpose
        return {
            None: (x, y),
            T.FLIP_LEFT_RIGHT: (w - 1 - x, y),
            T.ROTATE_180: (w - 1 - x, h - 1 - y),
            T.FLIP_TOP_BOTTOM: (x, h - 1 - y),
            T.TRANSPOSE: (y, x),
            T.ROTATE_270: (y, h - 1 - x),
            T.TRANSVERSE: (w - 1 - y, h - 1 - x),
            T.ROTATE_90: (w - 1 - y, x),
        }[method]

    (x0, y0), (x1, y1) = stored(left, top), stored(left + cw - 1, top + ch - 1)
    return min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file as shown (its EXIF orientation applied), from its header (nothing is
    decoded)."""
    check_image_file(Path(path))
    try:
        with Image.open(path) as img:
            w, h = _upright_size(img.size, _ORIENTATION.get(orientation(img)))
            return h, w
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


def _to_array(img: Image.Image, path: str | os.PathLike = "<image>") -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        arr = np.array(img, dtype=np.float32)  # a copy: writable
        if mode == "F":
            return _check_float(arr, path)
        peak = 65535.0 if arr.max() > 255 else 255.0  # 16-bit PNGs open as mode I
        return arr / peak
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if mode in ("L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0  # RGBA, P, CMYK, YCbCr ... -> RGB


def _check_float(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """A float image's pixels (the crop's) as they are: finite and in [0, 1], else refused. Clipping them would
    turn a 0-255 float TIFF into an all-white ground truth, and a PSNR against it into a fake result."""
    expected = "expected finite floats in [0, 1], or an 8/16-bit integer image"
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DIPError(
            f"{str(path)!r} is a float image with {bad} non-finite pixel{'s' if bad > 1 else ''} (NaN or "
            f"infinity); {expected}."
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi > 1:
        raise DIPError(
            f"{str(path)!r} is a float image with values from min {lo:g} to max {hi:g}; {expected} (a 0-255 "
            "float image would be read as white where it is above 1). Scale it to [0, 1] or save it as 8/16-bit."
        )
    return arr


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
    """`data` as strict JSON: a float that is not finite (NaN, an infinite PSNR) is written as null, as JSON has
    no such numbers (Python's NaN / Infinity tokens are not JSON, and other readers refuse them)."""
    plain = json_safe(data)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(plain, f, indent=2, allow_nan=False, default=_json_default)
            f.write("\n")

    return atomic_write(path, write)


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float, anywhere in its dicts and lists, replaced by None; numpy and one-element
    torch numbers become Python numbers first."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


#: files that data.observed reads as a measurement tensor, as it is (task=physics: k-space, a sinogram, a vector)
MEASUREMENT_SUFFIXES = (".pt", ".pth", ".npy")


def is_measurement_file(value: str | os.PathLike) -> bool:
    return Path(str(value)).suffix.lower() in MEASUREMENT_SUFFIXES


def read_measurement(path: str | os.PathLike) -> torch.Tensor:
    """A measurement tensor from a .pt/.pth file (torch.save of one tensor) or a .npy file (numpy.save of one
    array), as float32 (a complex array: its real and imaginary parts in a last axis of 2); no crop, no size rule."""
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise DIPError(
            f"data.observed {str(p)!r} does not exist; expected a measurement file: a .pt/.pth file holding one "
            "tensor (torch.save) or a .npy file holding one array (numpy.save)."
        )
    try:
        if p.suffix.lower() == ".npy":
            value = torch.from_numpy(np.load(p, allow_pickle=False))
        else:
            value = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise DIPError(
            f"data.observed {str(p)!r} could not be read as a measurement ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else err!r}); expected a .pt/.pth file holding one tensor "
            "(torch.save(y, path)) or a .npy file holding one array (numpy.save(path, y))."
        ) from None
    if not isinstance(value, torch.Tensor):
        raise DIPError(
            f"data.observed {str(p)!r} holds a {type(value).__name__}, not a tensor; expected one tensor saved "
            "with torch.save(y, path) (y as the physics' A returns it)."
        )
    if value.is_complex():
        value = torch.view_as_real(value)
    value = value.detach().to(torch.float32)
    if not torch.isfinite(value).all():
        raise DIPError(f"data.observed {str(p)!r} holds NaN or infinite values; expected finite measurements.")
    return value


def average_images(paths: list[Path]) -> torch.Tensor:
    """The pixel-wise mean of the images at `paths` (all of one size)."""
    images = [read_image(p) for p in paths]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        listing = ", ".join(f"{p} {tuple(img.shape[-2:])}" for p, img in zip(paths, images))
        raise DIPError(
            f"The runs of an ensemble have images of different sizes ({listing}); expected runs that "
            "differ only in their seed."
        )
    return torch.stack(images).mean(0)
