"""Degradation operators: one object is the single source of truth for simulating y and for the loss.

An operator maps the network output x to the observation space (`forward`, i.e. A x), optionally has an
`adjoint`, and adds its noise model in `simulate`, with a seeded generator so an observation is reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DIPError


class Operator(nn.Module):
    linear: bool = True
    has_adjoint: bool = False
    is_identity: bool = False  # A = I: the observation is the image plus noise (DIP-SURE needs it)

    def __init__(self, sigma: float = 0.0, clip: bool = True):
        super().__init__()
        if not (0.0 <= sigma <= 1.0) or sigma != sigma:
            raise DIPError(f"noise sigma={sigma * 255:g} (0-255 units) is out of range; expected 0 <= sigma <= 255.")
        self.sigma = float(sigma)
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # A x
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # A^T y
        raise NotImplementedError(f"{type(self).__name__} has no adjoint")

    def add_noise(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.sigma > 0:
            y = y + self.sigma * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y.clamp(0, 1) if self.clip else y

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A corrupted observation of the clean image x: A x plus noise, clipped to [0, 1] like the reference."""
        return self.add_noise(self.forward(x), generator)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE between A x and y; also returns A x so the caller can score it without a second pass."""
        ax = self.forward(x)
        return torch.nn.functional.mse_loss(ax, y), ax


class Identity(Operator):
    """Denoising: A = I, noise N(0, sigma^2)."""

    has_adjoint = True
    is_identity = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y
