"""Deblurring (beyond the paper): A = convolution with a Gaussian or motion-blur kernel or a kernel from a file;
noise N(0, sigma^2) (0-255 units) is added with the run's seed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..data.datamodule import ImageData
from ..data.io import read_image
from ..errors import DIPError
from ..operators.linear import Blur, gaussian_kernel, motion_kernel
from .base import DIPTask


def load_kernel(path: str) -> torch.Tensor:
    """A kernel from a .npy array or a grayscale image (normalised to sum 1 by the operator)."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise DIPError(
            f"task.kernel file {str(p)!r} does not exist; expected 'gaussian', 'motion', or a kernel "
            "file: a .npy 2-D array or a grayscale image, odd-sized."
        )
    if p.suffix == ".npy":
        return torch.from_numpy(np.asarray(np.load(p), dtype=np.float32))
    return read_image(p).mean(dim=1)[0]


class Deblurring(DIPTask):
    name = "deblurring"
    implausible_observed_psnr = 10.0  # dB: below it, observation and ground truth look like two pictures

    def __init__(
        self,
        *args,
        kernel: str = "gaussian",
        kernel_size: int = 9,
        blur_sigma: float = 2.0,
        motion_length: int = 9,
        motion_angle: float = 0.0,
        sigma: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not 0 <= sigma <= 255:
            raise DIPError(f"task.sigma={sigma!r} is not valid; expected a noise level 0 <= sigma <= 255.")
        if kernel == "gaussian":
            if int(kernel_size) % 2 == 0 or kernel_size < 1 or blur_sigma <= 0:
                raise DIPError(
                    f"task.kernel_size={kernel_size} / task.blur_sigma={blur_sigma} are not valid; "
                    "expected an odd kernel size and a positive blur sigma."
                )
            self.kernel = gaussian_kernel(int(kernel_size), float(blur_sigma))
        elif kernel == "motion":
            if int(motion_length) < 1:
                raise DIPError(f"task.motion_length={motion_length} is not valid; expected a length >= 1 pixel.")
            self.kernel = motion_kernel(int(motion_length), float(motion_angle))
        else:
            self.kernel = load_kernel(str(kernel))
        self.sigma = float(sigma)

    def build_operator(self, data: ImageData) -> Blur:
        ref = data.clean if data.clean is not None else data.observed
        return Blur(self.kernel, channels=ref.shape[1], sigma=self.sigma / 255.0)
