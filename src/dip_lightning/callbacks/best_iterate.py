"""The best-PSNR iterate (with ground truth): step, PSNR and image, tracked on the device every iteration."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .roles import Iteration, IterationHook

if TYPE_CHECKING:
    from ..tasks.base import DIPTask


class BestIterate(IterationHook):
    """Keeps the output with the highest PSNR against the ground truth; always added by dip-run.

    Candidates are every raw output and, when averaging is on, every averaged output (whichever scores higher).
    """

    def __init__(self):
        self.best_psnr: torch.Tensor | None = None
        self.best_step: torch.Tensor | None = None
        self.best_image: torch.Tensor | None = None

    @torch.no_grad()
    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        if it.psnr_out is None:
            return
        if self.best_psnr is None:
            # torch.full, not torch.tensor: a fill kernel, where a copy from a Python number would sync the host
            self.best_psnr = torch.full((), -math.inf, device=it.output.device)
            self.best_step = torch.full((), -1, dtype=torch.long, device=it.output.device)
            self.best_image = torch.zeros_like(it.output)
        psnr, image = it.best_candidate()
        improved = psnr > self.best_psnr  # NaN never improves
        # in place, one kernel each: this runs every iteration, outside a captured graph too
        torch.where(improved, psnr, self.best_psnr, out=self.best_psnr)
        self.best_step.masked_fill_(improved, it.step)
        torch.where(improved, image, self.best_image, out=self.best_image)

    def result(self) -> dict:
        if self.best_psnr is None or int(self.best_step) < 0:
            return {"psnr_best": None, "best_step": None}
        return {"psnr_best": float(self.best_psnr), "best_step": int(self.best_step)}

    def state_dict(self) -> dict:
        return {"best_psnr": self.best_psnr, "best_step": self.best_step, "best_image": self.best_image}

    def load_state_dict(self, state: dict) -> None:
        self.best_psnr, self.best_step, self.best_image = state["best_psnr"], state["best_step"], state["best_image"]
