"""What an iteration hook sees of one iteration (`Iteration`), and the input jitter's schedule."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DIPError


@dataclass
class Iteration:
    """What an on-device iteration hook sees (all tensors stay on the device; `step` is a host int)."""

    step: int
    out: torch.Tensor  # the raw output of this iteration (from the jittered input)
    output: torch.Tensor  # the running result: the averaged output when averaging is on, else `out`
    psnr_out: torch.Tensor | None  # PSNR of `out` against the ground truth, None without one
    psnr_output: torch.Tensor | None  # PSNR of `output` against the ground truth, None without one
    _weights: torch.Tensor | None = None  # the net's weights after this step, flat: made once for every hook

    def flat_weights(self, net: nn.Module) -> torch.Tensor:
        """The net's weights after this iteration's step as one flat tensor (one copy, shared by the hooks)."""
        if self._weights is None:
            self._weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        return self._weights

    def best_candidate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(PSNR, image) of the better of the raw and the averaged output: what "the best iterate" ranks."""
        if self.output is self.out:
            return self.psnr_out, self.out
        averaged_better = self.psnr_output > self.psnr_out
        return (
            torch.where(averaged_better, self.psnr_output, self.psnr_out),
            torch.where(averaged_better, self.output, self.out),
        )


def jitter_schedule(schedule, base: float) -> list[tuple[int, float]]:
    """task.reg_noise_schedule {iteration: std}: the jitter's std from that iteration on (reg_noise_std before the
    first); as (start, std) pairs, latest start first."""
    if not schedule:
        return []
    try:
        pairs = sorted(((int(k), float(v)) for k, v in dict(schedule).items()), reverse=True)
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or any(k < 0 or v < 0 for k, v in pairs):
        raise DIPError(
            f"task.reg_noise_schedule={schedule!r} is not valid; expected {{iteration: std}} with iterations >= 0 "
            "and stds >= 0, e.g. {10000: 2.0, 15000: 0.5}."
        )
    if base <= 0:
        raise DIPError(
            "task.reg_noise_schedule is set but task.reg_noise_std=0 turns the jitter off; set reg_noise_std to "
            "the std before the schedule's first iteration."
        )
    return pairs
