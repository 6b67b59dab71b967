"""A deepinv Physics (a forward model with its noise model) as this project's operator (task=physics).

The loss is the data term MSE(A x, y) with A the physics' noise-free forward map (`physics.A`); an observation
is simulated as deepinv does, y = sensor(noise(A x)), with the physics' own noise model drawing from the run's
seeded generator. Images are real: where the physics takes complex images as two channels (deepinv's MRI), the
image is its real channel with a zero imaginary channel, and an image made from a measurement (the baseline
reconstruction, A^T y) is the magnitude of the two.
"""

from __future__ import annotations

import math

import torch

from ..errors import DIPError
from .base import Operator


class PhysicsOperator(Operator):
    has_adjoint = True

    def __init__(self, physics: torch.nn.Module, complex_image: bool = False):
        super().__init__(sigma=0.0, clip=False)  # measurements are not images: no clipping to [0, 1]
        self.physics = physics
        self.complex_image = bool(complex_image)
        self.linear = hasattr(physics, "A_adjoint")
        self.has_adjoint = self.linear

    # --------------------------------------------------------------------------------- image <-> physics space
    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """The physics' input for a real image x: x itself, or (x, 0) as (real, imaginary) channels."""
        return torch.cat([x, torch.zeros_like(x)], dim=1) if self.complex_image else x

    def lower(self, v: torch.Tensor) -> torch.Tensor:
        """A real image from the physics' image space: v itself, or the magnitude of (real, imaginary)."""
        if not self.complex_image:
            return v
        c = v.shape[1] // 2
        return torch.sqrt(v[:, :c] ** 2 + v[:, c:] ** 2)

    @staticmethod
    def _real(y):
        if not isinstance(y, torch.Tensor):
            raise DIPError(
                f"the physics returns a {type(y).__name__}, not one tensor (a stacked physics?); task=physics takes "
                "a physics whose A returns one tensor."
            )
        return torch.view_as_real(y) if y.is_complex() else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # A x, noise-free
        return self._real(self.physics.A(self.lift(x)))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            raise NotImplementedError(f"{type(self.physics).__name__} is not linear: it has no A_adjoint")
        return self.lower(self.physics.A_adjoint(y))

    # --------------------------------------------------------------------------------------------- the noise
    def _noisy(self, ax: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """sensor(noise(ax)) with the noise model drawing from `generator`."""
        model = getattr(self.physics, "noise_model", None)
        if model is not None and hasattr(model, "rng") and generator is not None:
            saved = model.rng
            model.rng = generator  # deepinv's noise models draw with generator=self.rng
            try:
                return self.physics.sensor(self.physics.noise(ax))
            finally:
                model.rng = saved
        with torch.random.fork_rng(devices=[]):  # a noise model without its own generator: the global one, seeded
            if generator is not None:
                torch.manual_seed(generator.initial_seed())
            return self.physics.sensor(self.physics.noise(ax))

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """y = sensor(noise(A x)), the physics' own noise model, drawn from `generator`."""
        return self._real(self._noisy(self.physics.A(self.lift(x)), generator))

    @torch.no_grad()
    def noise_sigma(self, measurement: torch.Tensor) -> float | None:
        """The noise std per entry of the measurement, [0, 1] image units, as the data term sees it (the
        discrepancy principle's sigma): the Gaussian noise model's sigma, times the root of the fraction of the
        entries that it reaches (deepinv's MRI adds noise to the sampled k-space entries only). None for a noise
        model without a Gaussian sigma (Poisson, ...); 0 without noise."""
        model = getattr(self.physics, "noise_model", None)
        name = type(model).__name__
        if model is None or name == "ZeroNoise":
            return 0.0
        sigma = getattr(model, "sigma", None)
        if name != "GaussianNoise" or sigma is None:
            return None
        sigma = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        if sigma.numel() != 1:
            return None
        zero = torch.zeros_like(measurement)
        gen = torch.Generator(device=zero.device).manual_seed(0)
        reached = torch.stack([(self._noisy(zero, gen) != 0).float().mean() for _ in range(2)]).mean()
        return float(sigma) * math.sqrt(float(reached))

    # ----------------------------------------------------------------------------------------------- baseline
    @torch.no_grad()
    def baseline(self, y: torch.Tensor, kind: str) -> torch.Tensor:
        """deepinv's own reconstruction from y alone: A_dagger (its pseudo-inverse) or A_adjoint, as a real image."""
        if kind == "adjoint":
            return self.adjoint(y)
        return self.lower(self.physics.A_dagger(y))
