"""JPEG artifact removal: A = identity. Blind: a given JPEG (`data.observed`, no ground truth), or simulated:
a clean `data.image` compressed with PIL at `task.quality` (1-100), scored against the clean image."""

from __future__ import annotations

from ..data.datamodule import ImageData
from ..operators.nonlinear import JPEG, check_quality
from .base import DIPTask


class JPEGRestoration(DIPTask):
    name = "jpeg"
    implausible_observed_psnr = 10.0  # dB: below it, observation and ground truth look like two pictures

    def __init__(self, *args, quality: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.quality = check_quality(quality)

    def build_operator(self, data: ImageData) -> JPEG:
        return JPEG(self.quality)
