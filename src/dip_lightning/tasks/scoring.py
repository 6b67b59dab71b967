"""How a task scores a result against the ground truth, and what else it reports and saves beside it (a part of
DIPTask: tasks/base.py). A task with another convention (super-resolution: Y channel, border shaved) overrides
these."""

from __future__ import annotations

from typing import Any

import torch

from ..metrics import Metric, psnr
from ..metrics import score as score_in


class Scoring:
    """DIPTask's scores and extra outputs; it reads the task's `clean` and `observed` buffers."""

    def observed_estimate(self) -> torch.Tensor | None:
        """What the corrupted input itself offers as a result (psnr_observed and ssim_observed score it: what the
        result must beat): the observation when it has the output's size; None otherwise."""
        if self.clean is None or self.observed.shape != self.clean.shape:
            return None
        return self.observed

    def observed_psnr(self) -> float | None:
        """PSNR of the corrupted input itself against the ground truth."""
        estimate = self.observed_estimate()
        return None if estimate is None else self.score(estimate)

    def metric_score(self, metric: Metric, output: torch.Tensor) -> float | None:
        """A metric's score (dip_lightning.metrics.Metric: SSIM, or the user's) of a result against the ground
        truth, in the task's convention (`psnr_convention`: SR's Y channel, shaved)."""
        if self.clean is None:
            return None
        return float(score_in(output.to(self.clean.device), self.clean, self.psnr_convention, metric))

    def score(self, output: torch.Tensor) -> float | None:
        """The task's reported PSNR of a result against the ground truth (SR overrides: Y channel, shaved)."""
        return None if self.clean is None else float(self.gt_psnr(output))

    @property
    def psnr_convention(self) -> str:
        """How `score` measures, for tools that score images of this run later (dip-gather's ensembles):
        "rgb" (all channels) or "y_shaved:<border>" (Y channel, border shaved: dip_lightning.metrics)."""
        return "rgb"

    def gt_psnr(self, output: torch.Tensor) -> torch.Tensor:
        """On-device PSNR against the ground truth in the task's convention: used every iteration (curves, best
        iterate) and by `score`, so psnr_best, psnr_final and psnr_observed are the same measure."""
        return psnr(output, self.clean)

    def extra_metrics(self, output: torch.Tensor) -> dict[str, Any]:
        """Further numbers for metrics.json (e.g. SR's RGB PSNR and baselines), name -> value."""
        return {}

    def observed_image(self) -> torch.Tensor:
        """What observed.png shows."""
        return self.observed

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        """Further images to save beside the result (e.g. SR baselines), name -> image."""
        return {}
