"""Morozov's discrepancy principle as a stopping rule: stop where the net fits the observation as closely as the
noise allows, |fit - tau sigma^2| at its minimum, with `fit` the training loss MSE(A f(z + jitter), y) smoothed by
an exponential average (weight `smoothing` on the past: the jitter makes single losses noisy). No ground truth.
sigma comes from the config (0-255 units); else the task's own when it simulated the observation (0 for plain SR and
inpainting: the rule then keeps the latest iterate and never fires, so its result is the fixed count's); else an
estimate from the observation at two wavelet scales (dip_lightning/noise.py: the finest scale for independent
noise, both levels' bands when the noise looks spatially correlated, where the finest reads far too low).
metrics.json reports the sigma it used, both scales' estimates and, when a ground truth exists, the noise std
actually in the observation, so the estimate's error is visible.

The net's own fit decides, not the averaged output's: the average lags the net by ~1/(1-exp_weight) iterations,
and on denoise9 the net's loss reached sigma^2 where the averaged output peaked (bench_early_stopping.py), while
the averaged output's residual reached it hundreds of iterations before. The rule returns what the run would have
returned had it ended there (`output=auto`). An estimate on a noise-free observation reads image texture as noise
(a 32 px SR input: 6-11/255 where there is none) and stops far too early: runs without ground truth get this rule
by default only for denoising (conf/task/denoising.yaml: gt_free_rule).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from ..errors import DIPError
from ..noise import NoiseEstimate, estimate_noise
from .early_stopping import PatienceRule
from .roles import Iteration

if TYPE_CHECKING:
    from ..tasks.base import DIPTask


class Discrepancy(PatienceRule):
    reason = "discrepancy"
    _state = PatienceRule._state + ("sigma2", "fit")

    def __init__(
        self,
        sigma: float | None = None,
        tau: float = 1.0,
        smoothing: float = 0.9,
        patience: int = 100,
        stop: bool = True,
        output: str = "auto",
    ):
        super().__init__(patience, stop, output)
        if sigma is not None and (isinstance(sigma, bool) or not 0 <= float(sigma) <= 255):
            raise DIPError(
                f"sigma={sigma!r} is not valid; expected the noise std in 0-255 units, or null to "
                "estimate it from the observation."
            )
        if not float(tau) > 0:
            raise DIPError(f"tau={tau!r} is not valid; expected a positive factor on sigma^2 (1 = the noise level).")
        if not 0 <= float(smoothing) < 1:
            raise DIPError(
                f"smoothing={smoothing!r} is not valid; expected 0 <= smoothing < 1 (the weight of the "
                "past in the loss's running average; 0: no smoothing)."
            )
        self.sigma, self.tau, self.smoothing = (None if sigma is None else float(sigma)), float(tau), float(smoothing)
        self.sigma2: torch.Tensor | None = None  # tau * sigma^2 in [0, 1] units, on the device
        self.estimate: NoiseEstimate | None = None
        self.source = "config" if sigma is not None else "estimate"
        self.fit: torch.Tensor | None = None  # the smoothed training loss
        self.noise_free: bool | None = None  # sigma = 0 (a simulated noise-free observation)

    def noise_sigma(self, task: DIPTask) -> float:
        """The sigma the rule uses, in [0, 1] units."""
        if self.sigma is not None:
            self.source = "config"
            return self.sigma / 255.0
        simulated = task.simulated_noise_sigma()
        if simulated is not None:  # the task made the observation: its noise level is known (0 for plain SR)
            self.source = "simulation"
            return simulated
        self.source = "estimate"
        self.estimate = estimate_noise(task.observed, getattr(task.operator, "mask", None))
        return self.estimate.sigma

    @torch.no_grad()
    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        if self.sigma2 is None:  # once per run, before the first iteration's score: one host read at the start
            self.sigma2 = torch.full((), self.tau * self.noise_sigma(task) ** 2, device=it.out.device)
        if self.noise_free is None:  # (a resumed run reads it off its restored sigma2, once)
            self.noise_free = float(self.sigma2) == 0.0
        if self.noise_free:  # nothing to stop for: fit as well as possible, i.e. keep the latest iterate, never fire
            self._update(task, it, torch.full((), -float(it.step), device=it.out.device))
            return
        loss, _ = task.operator.loss(it.out, task.observed)  # the training loss of this iteration
        if self.fit is None:
            self.fit = loss.detach().clone()
        self.fit.lerp_(loss.detach(), 1.0 - self.smoothing)
        self._update(task, it, (self.fit - self.sigma2).abs())

    def state_dict(self) -> dict:
        # where sigma came from, and the estimate's numbers: a resumed run does not estimate again (sigma2 is
        # restored), and its metrics.json reports them as the uninterrupted run's does
        estimate = None if self.estimate is None else dataclasses.asdict(self.estimate)
        return {**super().state_dict(), "source": self.source, "estimate": estimate}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.source = state.get("source", self.source)  # a checkpoint written before they were kept has neither
        estimate = state.get("estimate")
        self.estimate = None if estimate is None else NoiseEstimate(**estimate)

    def extra_result(self, task: DIPTask) -> dict:
        used = (float(self.sigma2) / self.tau) ** 0.5 * 255 if self.sigma2 is not None else None
        out = {"sigma_used": used, "sigma_source": self.source}
        if self.estimate is not None:  # both scales, and whether the noise looked correlated (noise.py)
            out.update(
                sigma_fine=self.estimate.fine * 255,
                sigma_coarse=self.estimate.coarse * 255,
                noise="correlated" if self.estimate.correlated else "white",
            )
        if task.clean is not None and task.observed.shape == task.operator(task.clean.to(task.observed)).shape:
            residual, _ = task.operator.loss(task.clean.to(task.observed), task.observed)
            out["sigma_in_observation"] = float(residual) ** 0.5 * 255  # what the ground truth says it is
        return out
