"""Inpainting and restoration: A = a pixel mask (1 = known); the loss only sees the known pixels.

The mask comes from `data.mask`: an image file (white = known, thresholded at 0.5) or a generated one,
`random` / `text` / `blocks`, seeded by `seed`, with `data.mask_ratio` the fraction missing. Restoration
(an image from a fraction of its pixels) is the same machinery with a random mask keeping `task.kept`.
"""

from __future__ import annotations

import logging

import torch

from ..data.datamodule import ImageData
from ..data.masks import GENERATED, check_mask, check_ratio, generate, mask_from_image, random_mask
from ..errors import DIPError
from ..operators.linear import Mask
from .base import DIPTask

log = logging.getLogger(__name__)


class Inpainting(DIPTask):
    name = "inpainting"

    def __init__(self, *args, sigma: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.sigma = float(sigma)

    def make_mask(self, data: ImageData, shape: tuple[int, int]) -> torch.Tensor:
        if "mask" in data.extras:
            return mask_from_image(data.extras["mask"], data.sources["mask"], shape)
        kind = data.options.get("mask")
        if kind is None:
            raise DIPError(
                f"inpainting needs a mask: data.mask=<mask image> (white = known, black = missing) or "
                f"data.mask=one of {', '.join(GENERATED)} (with data.mask_ratio, the fraction missing)."
            )
        return generate(kind, shape, data.options.get("mask_ratio", 0.5), self.noise_seed)

    def build_operator(self, data: ImageData) -> Mask:
        ref = data.clean if data.clean is not None else data.observed
        mask = self.make_mask(data, tuple(ref.shape[-2:]))
        log.info("mask: %.1f%% of the pixels missing", 100 * (1 - float(mask.mean())))
        return Mask(mask, sigma=self.sigma / 255.0)

    def prepare_observation(self, data: ImageData) -> torch.Tensor | None:
        if data.observed is None:
            return None
        return data.observed * self.operator.mask  # a given masked image: what lies under the mask is not data


class Restoration(Inpainting):
    name = "restoration"

    def __init__(self, *args, kept: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(kept, bool) or not isinstance(kept, (int, float)) or not 0 < kept <= 1:
            raise DIPError(
                f"task.kept={kept!r} is not valid; expected the fraction of pixels kept, 0 < kept <= 1 "
                "(0.5 for barbara, 0.02 for kate in the paper)."
            )
        self.kept = float(kept)

    def make_mask(self, data: ImageData, shape: tuple[int, int]) -> torch.Tensor:
        if data.options.get("mask") is not None or "mask" in data.extras:
            log.warning(
                "restoration draws its own random mask (task.kept=%g); data.mask is ignored "
                "(use task=inpainting for a given mask).",
                self.kept,
            )
        return check_mask(random_mask(shape, check_ratio(1 - self.kept), self.noise_seed), "random")
