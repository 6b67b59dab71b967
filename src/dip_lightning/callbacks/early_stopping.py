"""Early stopping: pick the iterate to return and stop the run, with or without ground truth.

Every stopper scores each iteration on the device (no host sync in the hot loop), keeps the iterate with the lowest
score and the step at which its stop rule fired (`patience` iterations without a new minimum). After the rule fires
the choice is frozen, so a run that stops (`stop=true`) and one that only monitors (`stop=false`, runs to the end)
report the same iterate. The host reads one number per chunk, in `on_train_batch_end`, and sets
`trainer.should_stop`: a run overshoots the trigger by at most one chunk.

- PSNRPatience: score = -PSNR against the ground truth (needs one); the chosen iterate is the best one.
- ESWMV (Wang et al., TMLR): score = windowed moving variance of the last `window` raw outputs (mean over the window
  of each output's MSE to the window mean); the chosen iterate is the raw output at the step of the minimum, as in
  the paper (the averaged output lags by ~1/(1-exp_weight) steps: at an early minimum it is still mostly blank).
- ESEMV: the exponential variant, an exponentially weighted variance with weight `alpha` on the new output.
"""
from __future__ import annotations

import math

import torch
from pytorch_lightning import Callback

from ..errors import DIPError
from ..tasks.base import DIPTask, Iteration


class _Stopper(Callback):
    reason = "patience"

    def __init__(self, patience: int, stop: bool = True):
        if int(patience) < 1:
            raise DIPError(f"patience={patience!r} is not valid; expected a positive number of iterations.")
        self.patience, self.stop = int(patience), bool(stop)
        self.best_score: torch.Tensor | None = None
        self.best_step: torch.Tensor | None = None
        self.fired_at: torch.Tensor | None = None  # the iteration at which the stop rule held first; -1: not yet
        self.image: torch.Tensor | None = None

    def _init(self, ref: torch.Tensor) -> None:
        # torch.full, not torch.tensor: a fill kernel, where a copy from a Python number would sync a GPU's host
        self.best_score = torch.full((), math.inf, device=ref.device)
        self.best_step = torch.full((), -1, dtype=torch.long, device=ref.device)
        self.fired_at = torch.full((), -1, dtype=torch.long, device=ref.device)
        self.image = torch.zeros_like(ref)

    @torch.no_grad()
    def _update(self, step: int, score: torch.Tensor, image: torch.Tensor) -> None:
        """Record `image` if `score` is a new minimum (and the rule has not fired); then check the rule."""
        if self.best_score is None:
            self._init(image)
        open_ = self.fired_at < 0
        improved = (score < self.best_score) & open_  # NaN never improves
        self.best_score.copy_(torch.where(improved, score, self.best_score))
        self.best_step.copy_(torch.where(improved, step, self.best_step))
        self.image.copy_(torch.where(improved, image, self.image))
        fires = open_ & (self.best_step >= 0) & (step - self.best_step >= self.patience)
        self.fired_at.copy_(torch.where(fires, step, self.fired_at))

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if self.stop and self.fired_at is not None and int(self.fired_at) >= 0:  # one host read per chunk
            trainer.should_stop = True

    def stop_result(self, task: DIPTask) -> dict | None:
        """stop_step, stop_reason, stop_iteration and the chosen image; None when nothing was scored."""
        if self.best_step is None or int(self.best_step) < 0:
            return None
        fired = int(self.fired_at)
        return {"stop_step": int(self.best_step), "stop_reason": self.reason if fired >= 0 else "max_iterations",
                "stop_iteration": fired if fired >= 0 else None, "stop_rule": type(self).__name__,
                "image": self.image.clamp(0, 1)}

    # Checkpointing: every tensor of the running state.
    _state = ("best_score", "best_step", "fired_at", "image")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._state}

    def load_state_dict(self, state: dict) -> None:
        for k in self._state:
            setattr(self, k, state[k])


class PSNRPatience(_Stopper):
    """Stop when PSNR against the ground truth has not improved for `patience` iterations."""

    reason = "psnr_patience"

    def __init__(self, patience: int = 500, stop: bool = True):
        super().__init__(patience, stop)

    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        if it.psnr_out is None:
            raise DIPError("callbacks=psnr_patience needs a ground truth (data.image); without one use "
                           "callbacks=es_wmv or callbacks=es_emv.")
        psnr, image = it.best_candidate()  # the same candidates as BestIterate
        self._update(it.step, -psnr, image)


class ESWMV(_Stopper):
    """ES-WMV: windowed moving variance of the outputs, window W, patience P (W=100, P=1000 in the paper)."""

    reason = "es_wmv"
    _state = _Stopper._state + ("window_buffer",)

    def __init__(self, window: int = 100, patience: int = 1000, stop: bool = True):
        super().__init__(patience, stop)
        if int(window) < 2:
            raise DIPError(f"window={window!r} is not valid; expected at least 2 outputs.")
        self.window = int(window)
        self.window_buffer: torch.Tensor | None = None

    @torch.no_grad()
    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        if self.window_buffer is None:
            self.window_buffer = torch.zeros((self.window, *it.out.shape[1:]), device=it.out.device)
        self.window_buffer[it.step % self.window].copy_(it.out[0])
        if it.step < self.window - 1:  # the window is not full yet (a host int: no sync)
            return
        buf = self.window_buffer
        score = (buf - buf.mean(0, keepdim=True)).pow(2).mean()
        self._update(it.step, score, it.out)


class ESEMV(_Stopper):
    """ES-EMV: exponential moving variance (weight `alpha` on the newest output); scored after `warmup` steps."""

    reason = "es_emv"
    _state = _Stopper._state + ("ema", "emv")

    def __init__(self, alpha: float = 0.1, patience: int = 1000, warmup: int = 100, stop: bool = True):
        super().__init__(patience, stop)
        if not 0.0 < float(alpha) < 1.0:
            raise DIPError(f"alpha={alpha!r} is not valid; expected 0 < alpha < 1 (0.1 in the paper).")
        self.alpha, self.warmup = float(alpha), max(int(warmup), 0)
        self.ema: torch.Tensor | None = None
        self.emv: torch.Tensor | None = None

    @torch.no_grad()
    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        if self.ema is None:  # the first output starts the mean; the variance starts at 0
            self.ema, self.emv = it.out.clone(), torch.zeros_like(it.out)
            return
        a = self.alpha
        delta = it.out - self.ema
        self.ema.add_(delta, alpha=a)
        self.emv.copy_((1 - a) * (self.emv + a * delta * delta))
        if it.step >= self.warmup:  # the variance is biased low while it fills up from 0
            self._update(it.step, self.emv.mean(), it.out)
