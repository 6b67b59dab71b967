"""Reading and writing images as float tensors in [0, 1], shape (1, C, H, W); every write is atomic."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import struct
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import DIPError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The largest image read (width x height), data.max_pixels. A 13000x13000 PNG can be a 500 KB file; decoding it takes
# width x height x channels bytes before any crop. PIL's own guard (a DecompressionBombError traceback above 179
# million pixels) is replaced by this limit and its one-paragraph error.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None  # read_image checks data.max_pixels from the header, before decoding


def read_image(
    path: str | os.PathLike, crop: tuple[int, int] | None = None, max_pixels: int | None = MAX_PIXELS
) -> torch.Tensor:
    """Read an image as a (1, C, H, W) float tensor in [0, 1]: every file goes through `decode`, whose docstring
    is the contract (each PIL mode's scaling by its true range, the refusals, the first frame of a multi-frame
    file). The size is checked against `max_pixels` from the header, before anything is decoded; `crop` (height,
    width) takes a centre crop of the upright image before the conversion to float, so memory beyond the decoded
    file is the crop's."""
    path = Path(path)
    check_image_file(path)
    try:
        with Image.open(path) as img:
            check_pixels(path, img.size, max_pixels)  # width x height: the same once turned upright
            array = decode(img, path, crop)
    except DIPError:
        raise
    except UnidentifiedImageError:
        raise DIPError(
            f"{str(path)!r} is not an image PIL can read; expected PNG, JPEG, BMP or TIFF (a file of those cut "
            "short before its header, or its TIFF directory, is unreadable too: copy or export it again)."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as err:
        raise _damaged(path, err) from None
    return array_to_tensor(array)


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def read_alpha(
    path: str | os.PathLike, crop: tuple[int, int] | None = None, max_pixels: int | None = MAX_PIXELS
) -> torch.Tensor | None:
    """The alpha channel of an image file as a (1, 1, H, W) float tensor in [0, 1] (0 = transparent), with the
    same upright centre `crop` as `read_image`; None for a file without one (no alpha channel and no transparent
    colour). For files whose alpha means something (an inpainting mask: transparent = missing); `read_image`
    drops alpha by its contract. Alpha has 8-bit precision (a 16-bit file's top 8 bits)."""
    path = Path(path)
    check_image_file(path)
    try:
        with Image.open(path) as img:
            if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
                return None
            check_pixels(path, img.size, max_pixels)
            with _strict_loading():
                method = _ORIENTATION.get(orientation(img))
                img.load()
                im = img.crop(_stored_box(img.size, crop, method)) if crop is not None else img
                im = im.transpose(method) if method is not None else im
                if im.mode not in ("RGBA", "LA"):
                    im = im.convert("RGBA")  # palette and colour-key transparency, premultiplied alpha
                alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
    except DIPError:
        raise
    except UnidentifiedImageError:
        raise DIPError(f"{str(path)!r} is not an image PIL can read; expected PNG, JPEG, BMP or TIFF.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as err:
        raise _damaged(path, err) from None
    return array_to_tensor(alpha)


def _damaged(path: str | os.PathLike, err: BaseException | str) -> DIPError:
    """The one paragraph for a file that PIL opened but whose pixels could not all be read."""
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DIPError(
        f"{str(path)!r} is truncated or damaged and could not be decoded ({detail}); nothing was read from it. "
        "Expected a complete image file: copy or export it again (an interrupted download or copy leaves such "
        "a file)."
    )


def decode(img: Image.Image, path: str | os.PathLike, crop: tuple[int, int] | None = None) -> np.ndarray:
    """The pixels of an open image (its first frame) as a float32 array in [0, 1], HxW (grayscale) or HxWx3: the
    one decoder of every file this project reads. The contract:

    - Scaling by the true range of the mode, never by the values found: "1" -> {0, 1}; 8-bit modes (L, P, RGB
      ...) / 255; I;16, I;16B, I;16L, I;16N / 65535 (or 2^bits - 1 where a TIFF declares fewer bits, 12-bit
      data); I (32-bit integers: 16-bit PGM, signed or 32-bit TIFF) / 65535 (2^bits - 1 for a TIFF declaring
      fewer bits), with values outside that range refused; F (float) as it is, finite and in [0, 1], else
      refused. 16-bit colour (PNG, TIFF and binary PPM), which PIL cuts to its top 8 bits, is read with all 16
      bits and scaled by 65535 (or by a PPM's maxval; see `_wide_samples`); 16-bit CMYK and premultiplied-alpha
      TIFFs keep PIL's top 8 bits (the right scale, 8-bit precision).
    - Channels: grayscale stays 1 channel (1, L, LA, I, F and 16-bit gray+alpha PNGs); alpha is dropped (LA -> L,
      RGBA -> RGB, P/PA with transparency -> RGB); CMYK, YCbCr, LAB and HSV are converted to RGB by PIL.
    - Refusals (a DIPError naming the file): a file whose pixels can't all be decoded (PIL's load errors, with
      ImageFile.LOAD_TRUNCATED_IMAGES forced off while loading), and for a PNG a bad checksum of a critical
      chunk, a missing IEND or image data shorter than its IHDR says (`check_png_data`).
    - A multi-frame file (animated GIF/PNG/WebP, multi-page TIFF, MPO) is read as its first frame, with a
      warning in the log naming the file and its number of frames.
    - The EXIF orientation is applied (the image as a viewer shows it) and `crop` (height, width) is the centre
      of the upright image, taken before the conversion to float.
    """
    frames = getattr(img, "n_frames", 1)  # counting leaves the image at its first frame
    if frames > 1:
        log.warning(
            "%r holds %d frames (an animated image or a multi-page file): only its first frame is read. To use "
            "another one, save that frame as an image of its own (with PIL: img.seek(i); img.save('frame.png')).",
            str(path),
            frames,
        )
    if img.format == "PNG":
        check_png_data(path)
    wide = _wide_samples(img)  # from the tile, before anything loads (a PNG's getexif loads the image)
    bits = _declared_bits(img)
    with _strict_loading():
        method = _ORIENTATION.get(orientation(img))
        box = _stored_box(img.size, crop, method) if crop is not None else None

        def upright(im: Image.Image) -> Image.Image:
            if box is not None:
                im = im.crop(box)
            return im.transpose(method) if method is not None else im

        if wide is None:
            img.load()
            return _to_array(upright(img), path, bits)
        kind, rawmode = wide
        if kind == "PPM":
            return _read_ppm16(img, path, box)
        with Image.open(path) as twin:  # the same file decoded again, into the bytes PIL's own rawmode drops
            twin.tile = [tile._replace(args=_with_rawmode(tile.args, rawmode)) for tile in twin.tile]
            twin.load()
            other = np.asarray(upright(twin)).astype(np.uint16)
        if kind == "LA":  # 16-bit gray+alpha read as RGBA bytes: gray high, gray low, alpha high, alpha low
            return (other[..., 0] << 8 | other[..., 1]).astype(np.float32) / 65535.0
        img.load()
        high = np.asarray(upright(img)).astype(np.uint16)[..., :3]
    return (high << 8 | other[..., :3]).astype(np.float32) / 65535.0


@contextmanager
def _strict_loading() -> Iterator[None]:
    """PIL with ImageFile.LOAD_TRUNCATED_IMAGES off, whatever another module set: a short file is an error, not
    an image whose missing rows are black."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


_NATIVE = "L" if sys.byteorder == "little" else "B"


def _wide_samples(img: Image.Image) -> tuple[str, str | None] | None:
    """How to read the 16-bit colour samples that PIL decodes to their top 8 bits (it has no 16-bit colour mode):
    None when PIL's own image holds every bit. ("RGB", rawmode): decode the file again with `rawmode`, the same
    sample layout in the opposite byte order, whose unpacker then keeps each sample's low byte; PIL's filters
    (PNG) and decompression (TIFF) see the same bytes per pixel, so they run as for the first decode. ("LA",
    "RGBA"): a 16-bit gray+alpha PNG (PIL: RGBA from "LA;16B"), decoded again as 8-bit RGBA, whose four bytes are
    the two samples' high and low bytes. ("PPM", None): a binary PPM with maxval above 255, read with numpy."""
    tiles = getattr(img, "tile", None)  # an image made in memory has none
    if not tiles:
        return None
    codecs = {tile.codec_name for tile in tiles}
    rawmodes = {_rawmode(tile.args) for tile in tiles}
    if len(codecs) != 1 or len(rawmodes) != 1:
        return None
    codec, rawmode = codecs.pop(), rawmodes.pop()
    if img.format == "PPM" and codec == "ppm" and img.mode == "RGB" and tiles[0].args[1] > 255:
        return "PPM", None
    if rawmode is None:
        return None
    if rawmode == "LA;16B" and img.mode == "RGBA":
        return "LA", "RGBA"
    base, _, depth = rawmode.partition(";")
    if img.mode in ("RGB", "RGBA") and base in ("RGB", "RGBA", "RGBX") and depth in ("16B", "16L", "16N"):
        order = _NATIVE if depth == "16N" else depth[-1]
        return "RGB", f"{base};16{'L' if order == 'B' else 'B'}"
    return None  # e.g. CMYK;16 or premultiplied RGBa;16 TIFFs: PIL's 8 bits (the right scale, 8-bit precision)


def _rawmode(args: Any) -> str | None:
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(args: Any, rawmode: str) -> Any:
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])


def _read_ppm16(img: Image.Image, path: str | os.PathLike, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """A binary PPM (P6) with maxval above 255: its big-endian 16-bit samples, scaled by maxval (PIL would cut
    them to 8 bits). A PPM has no EXIF orientation: `box` is the crop as stored."""
    (w, h), tile = img.size, img.tile[0]
    maxval = int(tile.args[1])
    need, have = w * h * 6, os.path.getsize(path) - tile.offset
    if have < need:
        raise _damaged(path, f"{need} bytes of pixels expected after the header, {max(have, 0)} found")
    samples = np.memmap(path, dtype=">u2", mode="r", offset=tile.offset, shape=(h, w, 3))
    if box is not None:
        samples = samples[box[1] : box[3], box[0] : box[2]]
    return np.minimum(samples, maxval).astype(np.float32) / maxval  # PIL's decoder clips above maxval too


def _declared_bits(img: Image.Image) -> int | None:
    """Bits per sample as a TIFF declares them (BitsPerSample, tag 258); None for other formats."""
    tags = getattr(img, "tag_v2", None)
    if tags is None or 258 not in tags:
        return None
    value = tags[258]
    value = value[0] if isinstance(value, tuple) else value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_BLOCK = 1 << 20


def _png_data_size(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes of filtered image data (a filter byte per row) that a PNG of this IHDR decompresses to."""
    bits = depth * _PNG_CHANNELS.get(colour, 1)

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0

    if interlace != 1:
        return rows(width, height)
    return sum(
        rows((width - x + dx - 1) // dx if width > x else 0, (height - y + dy - 1) // dy if height > y else 0)
        for x, y, dx, dy in _ADAM7
    )


def check_png_data(path: str | os.PathLike) -> None:
    """A PNG is complete or refused: every chunk through IEND is there, the critical chunks (IHDR, PLTE, IDAT,
    IEND) match their CRC, and the image data decompresses to at least the rows its IHDR declares. PIL checks none
    of this when it decodes: an IHDR claiming 96 rows over 48 rows of data reads as an image whose missing rows
    are black. Read in blocks of 1 MiB: memory stays small whatever the file."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return
        expected = produced = None
        size = ""
        inflate = zlib.decompressobj()
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise _damaged(path, "the file ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", head)
            name = kind.decode("latin-1")
            crc, left = zlib.crc32(kind), length
            first = b""
            while left:
                block = f.read(min(left, _BLOCK))
                if not block:
                    raise _damaged(path, f"the file ends inside its {name} chunk")
                left -= len(block)
                crc = zlib.crc32(block, crc)
                if kind == b"IHDR" and not first:
                    first = block
                if kind == b"IDAT" and expected is not None and produced is not None and produced < expected:
                    out = inflate.decompress(block, _BLOCK)
                    produced += len(out)
                    while inflate.unconsumed_tail and produced < expected:
                        out = inflate.decompress(inflate.unconsumed_tail, _BLOCK)
                        produced += len(out)
            stored = f.read(4)
            if len(stored) < 4:
                raise _damaged(path, f"the file ends inside its {name} chunk")
            critical = kind in (b"IHDR", b"PLTE", b"IDAT", b"IEND")
            if critical and int.from_bytes(stored, "big") != crc & 0xFFFFFFFF:
                raise _damaged(path, f"its {name} chunk does not match its CRC checksum")
            if kind == b"IHDR" and len(first) >= 13:
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", first[:13])
                expected, produced = _png_data_size(width, height, depth, colour, interlace), 0
                size = f"{width}x{height}"
            elif kind == b"IEND":
                break
    if expected is not None and produced is not None and produced < expected:
        raise _damaged(
            path,
            f"its image data holds {produced} of the {expected} bytes that its {size} header declares",
        )


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


def _to_array(img: Image.Image, path: str | os.PathLike = "<image>", bits: int | None = None) -> np.ndarray:
    """The mode table of `decode`: a loaded PIL image as float32 in [0, 1], scaled by its mode's range (`bits`:
    the bits per sample a TIFF declares, for its integer modes)."""
    mode = img.mode
    if mode == "F":
        return _check_float(np.array(img, dtype=np.float32), path)
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return _check_integers(np.asarray(img), path, bits)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0  # {0, 1}
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.float32) / 255.0
    if mode == "RGB":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode in ("RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    raise DIPError(
        f"{str(path)!r} decodes to the PIL mode {mode!r}, which dip-run does not read; expected a gray, colour, "
        "16-bit or float image (PNG, JPEG, BMP or TIFF)."
    )


def _check_integers(raw: np.ndarray, path: str | os.PathLike, bits: int | None) -> np.ndarray:
    """16-bit or 32-bit integer pixels scaled by their true range: 65535 (16-bit PNG, PGM and TIFF; 32-bit TIFFs
    holding 16-bit data), or 2^bits - 1 where a TIFF declares fewer bits (12-bit data). Values outside that range
    are refused: dividing them by what they happen to reach would give a ground truth of another brightness."""
    top = (1 << bits) - 1 if bits is not None and 1 <= bits < 16 else 65535
    depth = f"{bits}-bit data, as the file declares" if top != 65535 else "16-bit data"
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > top:
        raise DIPError(
            f"{str(path)!r} is an integer image with values from min {lo} to max {hi}; expected whole numbers from "
            f"0 to {top} ({depth}, scaled by {top}). Save it as 8 or 16-bit unsigned integers, or as floats in "
            "[0, 1] (a float TIFF)."
        )
    return raw.astype(np.float32) / float(top)


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
