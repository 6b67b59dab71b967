"""Linear degradations beyond the identity: pixel mask (inpainting), downsampling (SR), blur (deblurring).

Each has an exact adjoint. Mask's is written out; for the padded convolutions the adjoint is the
vector-Jacobian product of the (linear) forward map, which is exact and stays correct for any padding mode.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DIPError
from .base import Operator
from .resampling import LanczosDownsampler


def vjp_adjoint(op: Operator, y: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """A^T y for a linear `op`: the gradient of <A x, y> with respect to x (independent of x)."""
    with torch.enable_grad():
        x = torch.zeros(in_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        (grad,) = torch.autograd.grad((op(x) * y).sum(), x)
    return grad


class Mask(Operator):
    """Inpainting: A x = m * x, with m = 1 on known pixels (one channel, broadcast over colours)."""

    has_adjoint = True

    def __init__(self, mask: torch.Tensor, sigma: float = 0.0, clip: bool = True):
        super().__init__(sigma, clip)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask  # a diagonal operator is self-adjoint

    def add_noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return super().add_noise(y, generator) * self.mask  # missing pixels stay 0 after noise and clipping


class Downsample(Operator):
    """Super-resolution: A = the reference's kernel downsampler (Lanczos2 by default), by an integer factor.

    `simulate` makes the LR image the way the paper's SR protocol did (`lr_method='pil'`: PIL's antialiased
    Lanczos resize of the HR image, quantised to 8 bits) or as A x itself (`lr_method='kernel'`).
    """

    has_adjoint = True

    def __init__(
        self,
        channels: int,
        factor: int,
        kernel: str = "lanczos2",
        lr_method: str = "pil",
        sigma: float = 0.0,
        clip: bool = True,
    ):
        super().__init__(sigma, clip)
        if lr_method not in ("pil", "kernel"):
            raise DIPError(
                f"task.lr_method={lr_method!r} is not known; expected 'pil' (the paper's PIL Lanczos "
                "resize) or 'kernel' (the loss's own downsampler)."
            )
        self.factor, self.lr_method = int(factor), lr_method
        self.down = LanczosDownsampler(channels, self.factor, kernel=kernel, preserve_size=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        return vjp_adjoint(self, y, (b, c, h * self.factor, w * self.factor))

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.lr_method == "kernel":
            return super().simulate(x, generator)
        size = (x.shape[-1] // self.factor, x.shape[-2] // self.factor)
        return self.add_noise(pil_resize(x, size, Image.LANCZOS), generator)


def pil_resize(x: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Resize a (1, C, H, W) image in [0, 1] to size=(width, height) through 8-bit PIL, as the reference does."""
    from ..data.io import array_to_tensor, to_uint8

    return array_to_tensor(np.asarray(Image.fromarray(to_uint8(x)).resize(size, resample))).to(x.device)


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def motion_kernel(length: int, angle: float) -> torch.Tensor:
    """A straight motion blur of `length` pixels at `angle` degrees, drawn with sub-pixel samples."""
    size = length if length % 2 == 1 else length + 1
    k = torch.zeros(size, size, dtype=torch.float64)
    c = (size - 1) / 2
    theta = math.radians(angle)
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * length):
        x, y = c + t * math.cos(theta), c - t * math.sin(theta)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # bilinear splat
            wx = 1 - abs(x - (x0 + dx))
            wy = 1 - abs(y - (y0 + dy))
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size and wx > 0 and wy > 0:
                k[y0 + dy, x0 + dx] += wx * wy
    return (k / k.sum()).float()


class Blur(Operator):
    """Deblurring: A x = k * x (per channel, replicate padding keeps the size), plus seeded Gaussian noise."""

    has_adjoint = True

    def __init__(self, kernel: torch.Tensor, channels: int = 3, sigma: float = 0.0, clip: bool = True):
        super().__init__(sigma, clip)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise DIPError(
                f"blur kernel of shape {tuple(kernel.shape)} is not valid; expected a 2-D kernel with "
                "odd height and width (its centre is the pixel it blurs into)."
            )
        if not torch.isfinite(kernel).all() or kernel.sum() <= 0:
            raise DIPError("blur kernel is not valid; expected finite weights with a positive sum.")
        k = (kernel / kernel.sum()).float()
        self.channels = channels
        self.register_buffer("weight", k.flip(0, 1).expand(channels, 1, *k.shape).clone())  # conv, not correlation
        self.pad = (k.shape[1] // 2, k.shape[1] // 2, k.shape[0] // 2, k.shape[0] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="replicate")
        return F.conv2d(x, self.weight.to(x.dtype), groups=self.channels)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return vjp_adjoint(self, y, tuple(y.shape))
