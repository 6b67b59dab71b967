"""Denoising: A = identity; the observation is the clean image plus Gaussian noise (sigma in 0-255 units)."""

from __future__ import annotations

from ..data.datamodule import ImageData
from ..errors import DIPError
from ..operators.base import Identity
from .base import DIPTask


class Denoising(DIPTask):
    name = "denoising"
    implausible_observed_psnr = 10.0  # dB: below it, observation and ground truth look like two pictures

    def __init__(self, *args, sigma: float = 25.0, clip: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(sigma, (int, float)) or sigma != sigma or sigma < 0 or sigma > 255:
            raise DIPError(
                f"task.sigma={sigma!r} is not valid; expected a noise level in 0-255 units, "
                "0 <= sigma <= 255 (the paper uses 25 and 50)."
            )
        self.sigma, self.clip = float(sigma), clip

    def build_operator(self, data: ImageData) -> Identity:
        if data.clean is None and data.observed is None:
            raise DIPError("Denoising needs data.image (clean, noise simulated) or data.observed (a noisy image).")
        return Identity(sigma=self.sigma / 255.0, clip=self.clip)
