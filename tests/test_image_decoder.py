"""One image decoder, one contract (data.io.decode): every PIL mode scaled by its true range, damaged files refused
naming the file, a multi-frame file read as its first frame with a warning.

The probe that filed it: a 16-bit RGB PNG was cut to its top 8 bits (values 0-255 of 65535 read as black, and the
run scored against it), a PNG whose IHDR claims 96 rows over 48 rows of data was read with its missing rows
black, and an animated GIF was read as its first frame without a word. Every file here is generated in the test:
a table of files whose [0, 1] pixels are known, a table of damaged files, and the multi-frame cases.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.data.io import decode, read_image
from dip_lightning.errors import DIPError

SRC = Path(__file__).resolve().parents[1] / "src"
RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------- a PNG writer
def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def filtered(rows: np.ndarray, bpp: int, filters: tuple[int, ...]) -> bytes:
    """PNG scanlines (uint8, one row each) filtered with the given filter types in turn (0 None, 1 Sub, 2 Up,
    3 Average, 4 Paeth): each type predicts from the unfiltered bytes, so every row is encoded at once."""
    out = []
    prev = np.zeros(rows.shape[1], int)
    for i, row in enumerate(rows.astype(int)):
        kind = filters[i % len(filters)]
        left = np.concatenate([np.zeros(bpp, int), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, int), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes())
        prev = row
    return b"".join(out)


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)


def write_png(
    path: Path,
    samples: np.ndarray,
    *,
    filters: tuple[int, ...] = (0,),
    interlace: bool = False,
    rows: int | None = None,
    orientation: int | None = None,
) -> Path:
    """A PNG of `samples` (HxW or HxWxC, uint8 or uint16: 8 or 16 bits) written byte by byte, as PIL cannot write
    16-bit colour. `rows`: the image data holds only that many rows while the IHDR declares them all (a lying
    header). `orientation`: an eXIf chunk with that EXIF orientation."""
    arr = samples if samples.ndim == 3 else samples[:, :, None]
    h, w, c = arr.shape
    depth = 16 if arr.dtype == np.uint16 else 8
    bpp = c * depth // 8

    def scanlines(a: np.ndarray) -> np.ndarray:
        return np.frombuffer(a.astype(">u2" if depth == 16 else np.uint8).tobytes(), np.uint8).reshape(len(a), -1)

    if interlace:
        data = b"".join(
            filtered(scanlines(arr[y::dy, x::dx]), bpp, filters) for x, y, dx, dy in ADAM7 if w > x and h > y
        )
    else:
        data = filtered(scanlines(arr[: h if rows is None else rows]), bpp, filters)
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, COLOUR_TYPE[c], 0, 0, int(interlace)))]
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        chunks.append(png_chunk(b"eXIf", exif.tobytes()[6:]))  # without the "Exif\0\0" of JPEG's APP1
    chunks += [png_chunk(b"IDAT", zlib.compress(data)), png_chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))
    return path


def write_pnm(path: Path, samples: np.ndarray, maxval: int) -> Path:
    """A binary PGM (P5, HxW) or PPM (P6, HxWx3), 16-bit big-endian samples when maxval > 255."""
    magic = b"P6" if samples.ndim == 3 else b"P5"
    h, w = samples.shape[:2]
    body = samples.astype(">u2" if maxval > 255 else np.uint8).tobytes()
    path.write_bytes(magic + f"\n{w} {h}\n{maxval}\n".encode() + body)
    return path


# ------------------------------------------------------------------------------------------- the known files
def wide16(h: int = 6, w: int = 7, c: int = 3) -> np.ndarray:
    """Random 16-bit samples with 65535 at (0, 0), 257 at (1, 1) and 1 at (2, 2): the probe's values."""
    arr = RNG.integers(0, 65536, (h, w, c), dtype=np.uint16)
    arr[0, 0], arr[1, 1], arr[2, 2] = 65535, 257, 1
    return arr


def u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def pil_file(path: Path, img: Image.Image, **save) -> Path:
    img.save(path, **save)
    return path


def as_pil_converts(arr: np.ndarray, mode: str) -> np.ndarray:
    """What PIL's own conversion to RGB gives (the contract for CMYK, YCbCr and LAB)."""
    return np.asarray(Image.fromarray(arr, mode).convert("RGB"), np.float32) / 255


def case_bilevel(p):
    arr = np.indices((9, 10)).sum(0) % 2 == 0
    return pil_file(p / "bilevel.png", Image.fromarray(arr)), arr.astype(np.float32)


def case_gray(p):
    arr = u8((9, 10))
    return pil_file(p / "gray.png", Image.fromarray(arr)), arr / 255


def case_gray_alpha(p):
    arr = u8((9, 10, 2))
    return pil_file(p / "la.png", Image.fromarray(arr, "LA")), arr[..., 0] / 255


PALETTE = u8((256, 3))


def palette_image(idx: np.ndarray, mode: str = "P") -> Image.Image:
    img = Image.fromarray(idx, "P")
    img.putpalette(PALETTE.ravel().tolist())
    return img if mode == "P" else img.convert("PA")


def case_palette(p):
    idx = u8((9, 10))
    return pil_file(p / "p.png", palette_image(idx)), PALETTE[idx] / 255


def case_palette_transparency(p):
    idx = u8((9, 10))
    return pil_file(p / "pt.png", palette_image(idx), transparency=int(idx[0, 0])), PALETTE[idx] / 255


def case_palette_alpha(p):
    idx = u8((9, 10))
    return pil_file(p / "pa.tif", palette_image(idx, "PA")), PALETTE[idx] / 255


def case_rgb(p):
    arr = u8((9, 10, 3))
    return pil_file(p / "rgb.png", Image.fromarray(arr)), arr / 255


def case_rgba(p):
    arr = u8((9, 10, 4))
    return pil_file(p / "rgba.png", Image.fromarray(arr, "RGBA")), arr[..., :3] / 255


def case_cmyk(p):
    arr = u8((9, 10, 4))
    return pil_file(p / "cmyk.tif", Image.fromarray(arr, "CMYK")), as_pil_converts(arr, "CMYK")


def case_ycbcr(p):
    arr = u8((9, 10, 3))
    return pil_file(p / "ycbcr.tif", Image.fromarray(arr, "YCbCr")), as_pil_converts(arr, "YCbCr")


def case_lab(p):
    arr = u8((9, 10, 3))
    return pil_file(p / "lab.tif", Image.fromarray(arr, "LAB")), as_pil_converts(arr, "LAB")


def case_int32(p):
    arr = RNG.integers(0, 65536, (9, 10), dtype=np.int32)
    arr[0, 0], arr[1, 1] = 65535, 1
    return pil_file(p / "i32.tif", Image.fromarray(arr, "I")), arr / 65535


def case_gray16_png(p):
    arr = wide16(c=1)[..., 0]
    return pil_file(p / "g16.png", Image.fromarray(arr)), arr / 65535  # opens as I;16


def case_gray16_big_endian_tiff(p):
    arr = wide16(c=1)[..., 0]
    img = Image.frombytes("I;16B", arr.shape[::-1], arr.astype(">u2").tobytes())
    return pil_file(p / "g16b.tif", img), arr / 65535  # opens as I;16B


def case_pgm16(p):
    arr = wide16(c=1)[..., 0]
    return write_pnm(p / "g16.pgm", arr, 65535), arr / 65535  # opens as I


def case_float(p):
    arr = RNG.random((9, 10), dtype=np.float32)
    return pil_file(p / "f.tif", Image.fromarray(arr, "F")), arr


def case_rgb16_png_every_filter(p):
    arr = wide16(11, 9)
    return write_png(p / "rgb16.png", arr, filters=(0, 1, 2, 3, 4)), arr / 65535


def case_rgb16_png_interlaced(p):
    arr = wide16(11, 9)
    return write_png(p / "rgb16i.png", arr, filters=(4, 3, 1), interlace=True), arr / 65535


def case_rgba16_png(p):
    arr = wide16(c=4)
    return write_png(p / "rgba16.png", arr, filters=(1, 4)), arr[..., :3] / 65535


def case_gray_alpha16_png(p):
    arr = wide16(c=2)
    return write_png(p / "la16.png", arr, filters=(3, 4)), arr[..., 0] / 65535


def case_rgb16_ppm(p):
    arr = wide16()
    return write_pnm(p / "rgb16.ppm", arr, 65535), arr / 65535


def case_rgb10_ppm(p):
    arr = wide16() % 1024
    arr[0, 0] = 1023
    return write_pnm(p / "rgb10.ppm", arr, 1023), arr / 1023  # the declared maxval is the range


def case_bmp(p):
    arr = u8((9, 10, 3))
    return pil_file(p / "x.bmp", Image.fromarray(arr)), arr / 255


def case_webp_lossless(p):
    if not features.check("webp"):
        pytest.skip("PIL built without WebP")
    arr = u8((9, 10, 3))
    return pil_file(p / "x.webp", Image.fromarray(arr), lossless=True), arr / 255


KNOWN = [
    (case_bilevel, "1", 1),
    (case_gray, "L", 1),
    (case_gray_alpha, "LA", 1),
    (case_palette, "P", 3),
    (case_palette_transparency, "P", 3),
    (case_palette_alpha, "PA", 3),
    (case_rgb, "RGB", 3),
    (case_rgba, "RGBA", 3),
    (case_cmyk, "CMYK", 3),
    (case_ycbcr, "YCbCr", 3),
    (case_lab, "LAB", 3),
    (case_int32, "I", 1),
    (case_gray16_png, "I;16", 1),
    (case_gray16_big_endian_tiff, "I;16B", 1),
    (case_pgm16, "I", 1),
    (case_float, "F", 1),
    (case_rgb16_png_every_filter, "RGB", 3),  # PIL: RGB from rawmode RGB;16B, its top 8 bits
    (case_rgb16_png_interlaced, "RGB", 3),
    (case_rgba16_png, "RGBA", 3),
    (case_gray_alpha16_png, "RGBA", 1),  # PIL: RGBA from LA;16B; read as 1 channel
    (case_rgb16_ppm, "RGB", 3),
    (case_rgb10_ppm, "RGB", 3),
    (case_bmp, "RGB", 3),
    (case_webp_lossless, "RGB", 3),
]


@pytest.mark.parametrize("make, pil_mode, channels", KNOWN, ids=[m.__name__[5:] for m, _, _ in KNOWN])
def test_every_mode_reads_as_its_known_values(tmp_path, make, pil_mode, channels):
    path, expected = make(tmp_path)
    with Image.open(path) as img:
        assert img.mode == pil_mode  # the case is the mode it names, on this PIL
    img = read_image(path)
    expected = np.asarray(expected, np.float32)
    h, w = expected.shape[:2]
    assert img.shape == (1, channels, h, w) and img.dtype == torch.float32
    got = img[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected.reshape(h, w, channels), rtol=0, atol=1e-6)


def test_a_16bit_rgb_png_keeps_all_16_bits(tmp_path):
    """The probe's file: 65535 reads as 1.0, 257 as 257/65535 and 1 as 1/65535, where PIL alone gives 1/255, 0."""
    arr = wide16()
    path = write_png(tmp_path / "rgb16.png", arr)
    with Image.open(path) as img:
        assert np.asarray(img)[2, 2].tolist() == [0, 0, 0]  # what PIL makes of it: the top 8 bits
    img = read_image(path)[0]
    assert img[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert img[:, 1, 1].tolist() == pytest.approx([257 / 65535] * 3, abs=1e-9)
    assert img[:, 2, 2].tolist() == pytest.approx([1 / 65535] * 3, abs=1e-9)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("alpha", [False, True])
def test_a_16bit_rgb_tiff_keeps_all_16_bits(tmp_path, compression, byteorder, alpha):
    tifffile = pytest.importorskip("tifffile")
    arr = wide16(c=4 if alpha else 3)
    extra = {"extrasamples": ["unassalpha"]} if alpha else {}
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, arr, photometric="rgb", compression=compression, byteorder=byteorder, **extra)
    got = read_image(path)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.round(got * 65535).astype(np.uint16), arr[..., :3])


def test_the_orientation_and_crop_of_a_16bit_png(tmp_path):
    """EXIF orientation 6 (turn clockwise to view), then the centre crop of the upright image, all 16 bits."""
    arr = wide16(7, 10)
    path = write_png(tmp_path / "o16.png", arr, filters=(2, 4), orientation=6)
    upright = np.rot90(arr, -1)  # 10 high, 7 wide
    img = read_image(path, crop=(4, 3))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(img, upright[3:7, 2:5] / 65535, rtol=0, atol=1e-7)
    assert read_image(path).shape == (1, 3, 10, 7)


@pytest.mark.parametrize(
    "mode, raw",
    [("I;16L", "<u2"), ("I;16N", "=u2")],
)
def test_in_memory_16bit_modes(mode, raw):
    """Modes no file opens as here (PIL hands them back from frombytes or its own conversions)."""
    arr = wide16(c=1)[..., 0]
    img = Image.frombytes(mode, arr.shape[::-1], arr.astype(raw).tobytes())
    np.testing.assert_allclose(decode(img, mode), arr / 65535, rtol=0, atol=1e-7)


def test_hsv_and_premultiplied_la_made_in_memory():
    hsv = Image.fromarray(np.array([[[0, 255, 255], [0, 0, 128]]], np.uint8), "HSV")
    np.testing.assert_allclose(decode(hsv, "hsv"), [[[1, 0, 0], [128 / 255] * 3]], atol=1e-6)
    la = Image.fromarray(np.array([[[100, 255], [7, 0]]], np.uint8), "LA").convert("La")
    assert decode(la, "la").shape == (1, 2)


@pytest.mark.parametrize("values, shown", [((0, 70000), "max 70000"), ((-5, 10), "min -5")])
def test_32bit_integers_outside_16bit_are_refused(tmp_path, values, shown):
    arr = np.array([values, values], np.int32)
    path = pil_file(tmp_path / "i32.tif", Image.fromarray(arr, "I"))
    with pytest.raises(DIPError, match=r"i32\.tif") as err:
        read_image(path)
    message = str(err.value)
    assert shown in message and "from 0 to 65535" in message and "\n" not in message


def test_a_16bit_rgb_png_reaches_the_run_with_its_16_bits(tmp_path):
    arr = wide16(64, 64)
    path = write_png(tmp_path / "gt16.png", arr, filters=(4,))
    data = SingleImageDataModule(image=str(path), crop=None).load(size_multiple=32)
    np.testing.assert_allclose(data.clean[0].permute(1, 2, 0).numpy(), arr / 65535, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------ damaged files
def rgb_png_bytes(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(u8((size, size, 3))).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(u8((64, 64, 3))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def flip_inside_idat(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 20
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


def damaged_lying_ihdr(p):
    return write_png(p / "lying.png", np.full((96, 96), 100, np.uint8), rows=48)


def damaged_lying_ihdr_16bit_rgb(p):
    return write_png(p / "lying16.png", wide16(8, 8), rows=5)


def damaged_truncated_png(p):
    data = rgb_png_bytes()
    (p / "cut.png").write_bytes(data[: len(data) // 2])
    return p / "cut.png"


def damaged_truncated_16bit_png(p):
    data = write_png(p / "full16.png", wide16(32, 32)).read_bytes()
    (p / "cut16.png").write_bytes(data[: len(data) * 2 // 3])
    return p / "cut16.png"


def damaged_png_without_iend(p):
    (p / "noend.png").write_bytes(rgb_png_bytes()[:-12])
    return p / "noend.png"


def damaged_png_bad_idat_crc(p):
    (p / "crc.png").write_bytes(flip_inside_idat(rgb_png_bytes()))
    return p / "crc.png"


def damaged_jpeg_cut_in_half(p):
    data = jpeg_bytes()
    (p / "half.jpg").write_bytes(data[: len(data) // 2])
    return p / "half.jpg"


def damaged_truncated_ppm16(p):
    data = write_pnm(p / "full.ppm", wide16(), 65535).read_bytes()
    (p / "cut.ppm").write_bytes(data[:-10])
    return p / "cut.ppm"


def damaged_truncated_tiff(p):
    img = Image.fromarray(u8((64, 64, 3)))
    img.save(p / "full.tif")
    data = (p / "full.tif").read_bytes()
    (p / "cut.tif").write_bytes(data[: len(data) // 2])
    return p / "cut.tif"


DAMAGED = [
    damaged_lying_ihdr,
    damaged_lying_ihdr_16bit_rgb,
    damaged_truncated_png,
    damaged_truncated_16bit_png,
    damaged_png_without_iend,
    damaged_png_bad_idat_crc,
    damaged_jpeg_cut_in_half,
    damaged_truncated_ppm16,
    damaged_truncated_tiff,
]


@pytest.mark.parametrize("make", DAMAGED, ids=[m.__name__[8:] for m in DAMAGED])
def test_a_damaged_file_is_refused_naming_it(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(DIPError) as err:
        read_image(path)
    message = str(err.value)
    assert repr(str(path)) in message and "truncated or damaged" in message and "\n" not in message


def test_the_lying_header_says_how_much_data_there_is(tmp_path):
    with pytest.raises(DIPError, match=r"lying\.png.*holds 4656 of the 9312 bytes that its 96x96 header declares"):
        read_image(damaged_lying_ihdr(tmp_path))


def test_truncated_files_are_refused_even_if_another_module_allows_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DIPError, match=r"half\.jpg.*truncated or damaged"):
        read_image(damaged_jpeg_cut_in_half(tmp_path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # put back as it was


def test_nothing_in_the_project_allows_truncated_images():
    setters = [p for p in SRC.rglob("*.py") if "LOAD_TRUNCATED_IMAGES = True" in p.read_text()]
    assert not setters


# ------------------------------------------------------------------------------------------- multi-frame
def frames_of(values) -> list[Image.Image]:
    return [Image.fromarray(np.full((8, 9, 3), v, np.uint8)) for v in values]


@pytest.mark.parametrize("suffix, count", [("gif", 2), ("png", 2), ("tif", 3)])
def test_a_multi_frame_file_is_its_first_frame_with_a_warning(tmp_path, caplog, suffix, count):
    first, *rest = frames_of([40, 200, 120][:count])
    path = tmp_path / f"anim.{suffix}"
    first.save(path, save_all=True, append_images=rest)
    with Image.open(path) as img:
        assert img.n_frames == count
    with caplog.at_level(logging.WARNING, logger="dip_lightning"):
        img = read_image(path)
    assert img.shape == (1, 3, 8, 9) and abs(img.mean().item() - 40 / 255) < 2 / 255
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert repr(str(path)) in warning and f"{count} frames" in warning and "first frame" in warning


def test_a_single_frame_gif_gives_no_warning(tmp_path, caplog):
    path = tmp_path / "one.gif"
    frames_of([40])[0].save(path)
    with caplog.at_level(logging.WARNING, logger="dip_lightning"):
        read_image(path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
