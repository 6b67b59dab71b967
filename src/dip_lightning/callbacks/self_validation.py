"""Self-validation (Li et al., BMVC 2021): hold a random fraction of the observed pixels out of the loss; the
output's error on them tracks its error to the clean image (for noise independent from pixel to pixel), so the
minimum of that validation error is a stopping point found without ground truth.

This rule changes the run (the net never sees the held-out pixels), so it is compared with the others on its own
run. `attach` wraps the task's operator before the first iteration; the held-out pixels are drawn from the seed,
so a resumed run holds out the same ones. On correlated noise (JPEG, demosaicking) a held-out pixel's noise is
predictable from its neighbours and the validation error keeps falling: measured in bench_early_stopping.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import DIPError
from ..operators.base import Operator
from .early_stopping import PatienceRule
from .roles import Iteration

if TYPE_CHECKING:
    from ..tasks.base import DIPTask


class HeldOut(Operator):
    """`base` with the loss restricted to the pixels where `train` is 1 (the rest are validation pixels)."""

    def __init__(self, base: Operator, train: torch.Tensor):
        super().__init__(sigma=base.sigma, clip=base.clip)
        self.base = base
        self.linear, self.has_adjoint = base.linear, base.has_adjoint
        self.register_buffer("train_mask", train)
        self.register_buffer("val_mask", 1.0 - train)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.base.adjoint(y)

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.simulate(x, generator)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ax = self.base(x)
        return ((ax - y).pow(2) * self.train_mask).mean(), ax

    def validation_error(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean squared error of A x against y on the held-out pixels."""
        err = (self.base(x) - y).pow(2) * self.val_mask
        return err.sum() / (self.val_mask.sum() * y.shape[1] / self.val_mask.shape[1])

    def __getattr__(self, name: str):  # a mask, a kernel: what the task's own code reads from its operator
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None:
                raise
            return getattr(base, name)


class SelfValidation(PatienceRule):
    reason = "self_validation"

    def __init__(self, holdout: float = 0.1, patience: int = 300, stop: bool = True, output: str = "auto"):
        super().__init__(patience, stop, output)
        if isinstance(holdout, bool) or not 0 < float(holdout) < 0.5:
            raise DIPError(
                f"holdout={holdout!r} is not valid; expected the fraction of observed pixels held out of "
                "the loss, 0 < holdout < 0.5 (0.1 by default)."
            )
        self.holdout = float(holdout)

    def attach(self, task: DIPTask) -> None:
        """Hold out pixels of the observation: called once the task is prepared, before any iteration."""
        if isinstance(task.operator, HeldOut):
            raise DIPError("two self_validation rules on one run would hold out pixels twice; keep one.")
        y = task.observed
        gen = torch.Generator().manual_seed(task.seed + 2)  # the jitter uses seed + 1
        held = torch.rand((1, 1, *y.shape[-2:]), generator=gen) < self.holdout  # whole pixels, all channels
        known = getattr(task.operator, "mask", None)  # inpainting: hold out only pixels that were observed
        if known is not None:
            held = held & (known[:, :1].cpu() > 0.5)
        if not held.any():
            raise DIPError(
                f"self_validation held out no pixel (holdout={self.holdout}, an observation of "
                f"{y.shape[-2]}x{y.shape[-1]}); raise holdout or use a larger image."
            )
        task.operator = HeldOut(task.operator, (~held).float().to(y.device))

    @torch.no_grad()
    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        image = it.out if self.output == "raw" else it.output
        self._update(task, it, task.operator.validation_error(image, task.observed))

    def returned(self, task: DIPTask, step: int) -> str:
        if self.output == "raw":
            return "raw"
        return "averaged" if task.exp_weight > 0 else "final"  # the image it scored, or the net's at that step
