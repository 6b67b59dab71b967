"""Inpainting masks: 1 = known pixel, 0 = missing (the reference's convention: white is kept).

From a file: grayscale (colour masks are averaged over channels), thresholded at 0.5, so anti-aliased or JPEG
masks work; values other than 0 and 1 are reported. A file with transparent pixels (alpha below 255 somewhere) is
read from its alpha channel instead: transparent = missing, opaque = known (`alpha_mask`). Generated (seeded):
`random` pixels, rendered `text` (PIL's built-in font, no font files), random `blocks`. `ratio` is always the
fraction of pixels MISSING.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import DIPError

log = logging.getLogger(__name__)
GENERATED = ("random", "text", "blocks")


def is_generated(value) -> bool:
    return isinstance(value, str) and value in GENERATED


def mask_from_image(img: torch.Tensor, source: str, shape: tuple[int, int]) -> torch.Tensor:
    """A (1, 1, H, W) binary mask from a loaded mask image; checks its size and that some pixels are known."""
    if tuple(img.shape[-2:]) != tuple(shape):
        raise DIPError(
            f"data.mask {source!r} is {img.shape[-1]}x{img.shape[-2]} pixels but the image is "
            f"{shape[1]}x{shape[0]}; expected a mask of the image's size (white = known, black = missing)."
        )
    gray = img.mean(dim=1, keepdim=True)
    mask = (gray >= 0.5).float()
    grey_pixels = int(((gray > 0) & (gray < 1)).sum())
    if grey_pixels:
        log.warning(
            "data.mask %s is not binary: %d pixels are neither black nor white; thresholded at 0.5 (>= 0.5 known).",
            source,
            grey_pixels,
        )
    return check_mask(mask, source)


def alpha_mask(colour: torch.Tensor, alpha: torch.Tensor | None, source: str) -> torch.Tensor | None:
    """The mask a file codes in its alpha channel, as a (1, 1, H, W) tensor of alpha values (`mask_from_image`
    thresholds it like a gray mask): transparent = missing, opaque = known. None where the file's alpha is absent
    or all opaque, so that its colour is the mask. Refused where the colour marks missing pixels too (black where
    the alpha is opaque, as a black drawing on a transparent layer): which of the two is the mask is unclear."""
    if alpha is None or float(alpha.min()) >= 1:
        return None
    opaque = alpha[:, 0] >= 0.5
    black = colour.mean(dim=1) < 0.5
    both = int((opaque & black).sum())
    if both:
        transparent = int((~opaque).sum())
        raise DIPError(
            f"data.mask {source!r} has an alpha channel ({transparent} transparent pixels) and is also black on "
            f"{both} opaque pixels, so it is unclear which marks the missing pixels. Expected one of: an opaque "
            "mask, white where the image is known and black where it is missing; or a mask coded in alpha, opaque "
            "where known and transparent (alpha 0) where missing, with white (or any colour above mid-grey) "
            "where opaque. Save the mask in one of these forms."
        )
    log.info("data.mask %s: read from its alpha channel (transparent = missing, opaque = known)", source)
    return alpha


def check_mask(mask: torch.Tensor, source: str) -> torch.Tensor:
    known = float(mask.mean())
    if known == 0:
        raise DIPError(
            f"data.mask {source!r} has no known pixels (all black, or all transparent for a mask coded in alpha, "
            "after thresholding at 0.5); expected white (>= 0.5) where the image is known and black where it is "
            "missing, or opaque where known and transparent where missing."
        )
    if known == 1:
        log.warning("data.mask %s has no missing pixels: there is nothing to inpaint.", source)
    return mask


def check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise DIPError(
            f"data.mask_ratio={ratio!r} is not valid; expected the fraction of pixels missing, "
            "0 <= mask_ratio < 1 (0.5 = half the pixels missing)."
        )
    return float(ratio)


def random_mask(shape: tuple[int, int], ratio: float, seed: int) -> torch.Tensor:
    """Each pixel missing with probability `ratio` (a Bernoulli mask, as the reference's restoration)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(1, 1, *shape, generator=gen) >= check_ratio(ratio)).float()


def text_mask(
    shape: tuple[int, int], seed: int, text: str = "Deep Image Prior", size: int | None = None
) -> torch.Tensor:
    """Lines of text drawn over the image (missing where the text is), like the reference's kate mask."""
    h, w = shape
    size = size or max(10, h // 12)
    try:
        font = ImageFont.load_default(size=size)  # a scalable font inside Pillow (needs FreeType)
    except (TypeError, OSError):  # older Pillow / no FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    img = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed)
    step = int(size * 1.6)
    for row, top in enumerate(range(step // 3, h, step)):
        left = -int(rng.integers(0, max(size * 4, 1)))
        draw.text((left, top), (text + "  ") * (w // max(size, 1) + 2), fill=0, font=font)
    return check_mask(torch.from_numpy(np.asarray(img) >= 128).float()[None, None], "text")


def blocks_mask(shape: tuple[int, int], ratio: float, seed: int, block: int | None = None) -> torch.Tensor:
    """Random square holes until about `ratio` of the pixels are missing."""
    h, w = shape
    ratio = check_ratio(ratio)
    block = block or max(2, min(h, w) // 8)
    rng = np.random.default_rng(seed)
    mask = np.ones((h, w), np.float32)
    while 1 - mask.mean() < ratio:
        top, left = rng.integers(0, max(h - block, 0) + 1), rng.integers(0, max(w - block, 0) + 1)
        mask[top : top + block, left : left + block] = 0
    return check_mask(torch.from_numpy(mask)[None, None], "blocks")


def generate(kind: str, shape: tuple[int, int], ratio: float, seed: int) -> torch.Tensor:
    if kind == "random":
        return check_mask(random_mask(shape, ratio, seed), "random")
    if kind == "text":
        return text_mask(shape, seed)
    if kind == "blocks":
        return blocks_mask(shape, ratio, seed)
    raise DIPError(f"data.mask={kind!r} is not known; expected a mask image file or one of {', '.join(GENERATED)}.")
