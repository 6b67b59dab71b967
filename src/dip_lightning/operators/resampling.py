"""The reference's downsampling kernels (Lanczos2/3, Gauss, box) applied as a strided depthwise convolution.

Same kernels as the reference's `get_kernel` (Lanczos2: support 2, width 4*factor+1, phase 0.5 -> a 4*factor
square kernel), normalised to sum 1; `preserve_size` pads by replication so the output is input / factor.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DIPError

KERNELS = ("lanczos2", "lanczos3", "gauss12", "gauss1sq2", "box")


def get_kernel(factor: int, kernel_type: str, phase: float = 0.5) -> np.ndarray:
    support = sigma = None
    if kernel_type == "lanczos2":
        base, support, width = "lanczos", 2, 4 * factor + 1
    elif kernel_type == "lanczos3":
        base, support, width = "lanczos", 3, 6 * factor + 1
    elif kernel_type == "gauss12":
        base, sigma, width, phase = "gauss", 0.5, 7, 0.0
    elif kernel_type == "gauss1sq2":
        base, sigma, width, phase = "gauss", 1 / math.sqrt(2), 9, 0.0
    elif kernel_type == "box":
        base, width, phase = "box", factor, 0.5
    else:
        raise DIPError(f"kernel={kernel_type!r} is not known; expected one of {', '.join(KERNELS)}.")
    size = width - 1 if (phase == 0.5 and base != "box") else width
    kernel = np.zeros((size, size))
    center = (width + 1) / 2.0
    if base == "box":
        kernel[:] = 1.0
    elif base == "gauss":
        for i in range(1, size + 1):
            for j in range(1, size + 1):
                di, dj = (i - center) / 2.0, (j - center) / 2.0
                kernel[i - 1, j - 1] = math.exp(-(di * di + dj * dj) / (2 * sigma * sigma)) / (2 * math.pi * sigma**2)
    else:
        for i in range(1, size + 1):
            for j in range(1, size + 1):
                shift = 0.5 if phase == 0.5 else 0.0
                di, dj = abs(i + shift - center) / factor, abs(j + shift - center) / factor
                val = 1.0
                for d in (di, dj):
                    if d != 0:
                        val *= support * math.sin(math.pi * d) * math.sin(math.pi * d / support) / (math.pi**2 * d * d)
                kernel[i - 1, j - 1] = val
    return kernel / kernel.sum()


class LanczosDownsampler(nn.Module):
    """Downsample by `factor` with one of the reference kernels: a fixed per-channel filter, or with `trainable`
    the reference's in-net Downsampler, an nn.Conv2d(channels, channels) whose weights start as the kernel on the
    diagonal (zeros elsewhere, bias 0) and are trained with the net."""

    def __init__(
        self,
        channels: int,
        factor: int,
        kernel: str = "lanczos2",
        preserve_size: bool = True,
        phase: float = 0.5,
        trainable: bool = False,
    ):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise DIPError(f"downsampling factor={factor!r} is not valid; expected a positive integer.")
        k = torch.from_numpy(get_kernel(int(factor), kernel, phase)).float()
        self.channels, self.factor = channels, int(factor)
        self.conv: nn.Conv2d | None = None
        if trainable:
            self.conv = nn.Conv2d(channels, channels, tuple(k.shape), stride=int(factor))
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
                for c in range(channels):
                    self.conv.weight[c, c] = k
        else:
            self.register_buffer("weight", k.expand(channels, 1, *k.shape).clone())
        size = k.shape[0]
        # 'same' padding for a stride of `factor`: size - factor in all (size - 1 for odd kernels); an odd total
        # (an even kernel with an odd factor, e.g. Lanczos2 x3: 12 - 3) puts the extra pixel after the image
        total = (size - 1 if size % 2 == 1 else size - self.factor) if preserve_size else 0
        self.pad = (total // 2, total - total // 2) * 2  # left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        if self.conv is not None:
            return self.conv(x)
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.factor, groups=self.channels)
