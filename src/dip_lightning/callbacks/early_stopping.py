"""Early stopping: pick the iterate to return and stop the run, with or without ground truth.

Every stopper scores each iteration on the device (no host sync in the hot loop), keeps the iterate with the lowest
score and the step at which its stop rule fired (`patience` iterations without a new minimum). After the rule fires
the choice is frozen, so a run that stops (`stop=true`) and one that only monitors (`stop=false`, runs to the end)
report the same iterate. The loop asks each rule `should_stop()` once per chunk (one host read) and ends that run
alone: a run overshoots the trigger by at most one chunk.

- PSNRPatience: score = -PSNR against the ground truth (needs one); the chosen iterate is the best one.
- ESWMV (Wang et al., TMLR): score = windowed moving variance of the last `window` raw outputs (mean over the window
  of each output's MSE to the window mean); the paper returns the raw output at the step of the minimum.
- ESEMV: the exponential variant, an exponentially weighted variance with weight `alpha` on the new output.
- SelfValidation (Li et al., BMVC 2021; self_validation.py): hold a random fraction of the observed pixels out of
  the loss; score = MSE of the output against the observation on those pixels.
- Discrepancy (Morozov's discrepancy principle; discrepancy.py): score = |MSE to the observation - tau sigma^2|, with
  sigma from the config or estimated from the observation.

What a GT-free rule returns (`output`) at its stop step: the raw output there (`raw`, from the jittered input: the
papers' choice), the averaged output (`averaged`), or the net's output from the clean input with the weights of that
step (`final`). `auto` (the default) returns what the run's result would have been had it ended there: the averaged
output when averaging is on and the step lies past its warm-up (3/(1-exp_weight) iterations: the outputs before
then weigh less than 5%), else the net's output. Every candidate is kept and scored, so one run reports
psnr_stop_raw, psnr_stop_averaged and psnr_stop_final.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..errors import DIPError
from .roles import Iteration, StoppingRule

if TYPE_CHECKING:
    from ..tasks.base import DIPTask

OUTPUTS = ("auto", "averaged", "final", "raw")


def averaging_warmup(exp_weight: float) -> int:
    """Iterations after which the outputs before them weigh less than 5% of the running average (0.95 ~ e^-3)."""
    return math.ceil(3.0 / (1.0 - exp_weight))


def flat_weights(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def load_flat(net: torch.nn.Module, flat: torch.Tensor) -> None:
    """Copy `flat` into the net's parameters in place (they may be views of a pack's buffer: keep them so)."""
    offset = 0
    for p in net.parameters():
        p.data.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


class PatienceRule(StoppingRule):
    """The base of the package's stopping rules: a score per iteration (lower is better), the best-scored iterate
    kept on the device (its raw and averaged outputs, and the weights after its step for the final one), and a stop
    after `patience` iterations without a better score (`stop=false`: only report). A new rule subclasses it and
    says how it scores an iteration (its on_dip_iteration calls `_update` with the score)."""

    reason = "patience"

    def __init__(self, patience: int, stop: bool = True, output: str = "auto"):
        if int(patience) < 1:
            raise DIPError(f"patience={patience!r} is not valid; expected a positive number of iterations.")
        if output not in OUTPUTS:
            raise DIPError(
                f"output={output!r} is not valid; expected one of {', '.join(OUTPUTS)} (what the rule "
                "returns at its stop step: the raw output, the averaged one, the net's output from the "
                "clean input, or auto)."
            )
        self.patience, self.stop, self.output = int(patience), bool(stop), output
        self.best_score: torch.Tensor | None = None
        self.best_step: torch.Tensor | None = None
        self.fired_at: torch.Tensor | None = None  # the iteration at which the stop rule held first; -1: not yet
        self.image: torch.Tensor | None = None  # the raw output at the best step
        self.image_avg: torch.Tensor | None = None  # the averaged output at the best step (= image without averaging)
        self.weights: torch.Tensor | None = None  # the net's weights after the best step, flat

    def _init(self, ref: torch.Tensor, weights: torch.Tensor) -> None:
        # torch.full, not torch.tensor: a fill kernel, where a copy from a Python number would sync a GPU's host
        self.best_score = torch.full((), math.inf, device=ref.device)
        self.best_step = torch.full((), -1, dtype=torch.long, device=ref.device)
        self.fired_at = torch.full((), -1, dtype=torch.long, device=ref.device)
        self.image = torch.zeros_like(ref)
        self.image_avg = torch.zeros_like(ref)
        self.weights = torch.zeros_like(weights)

    @torch.no_grad()
    def _update(self, task: DIPTask, it: Iteration, score: torch.Tensor) -> None:
        """Record this iteration's outputs and the weights after its step if `score` is a new minimum (and the rule
        has not fired); then check the rule."""
        raw, averaged = self.candidates(it)
        weights = it.flat_weights(task.net)
        if self.best_score is None:
            self._init(raw, weights)
        open_ = self.fired_at < 0
        improved = (score < self.best_score) & open_  # NaN never improves
        self.best_score.copy_(torch.where(improved, score, self.best_score))
        self.best_step.copy_(torch.where(improved, it.step, self.best_step))
        self.image.copy_(torch.where(improved, raw, self.image))
        self.image_avg.copy_(torch.where(improved, averaged, self.image_avg))
        self.weights.copy_(torch.where(improved, weights, self.weights))
        fires = open_ & (self.best_step >= 0) & (it.step - self.best_step >= self.patience)
        self.fired_at.copy_(torch.where(fires, it.step, self.fired_at))

    def candidates(self, it: Iteration) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, averaged) images this rule may return for the iteration it scores."""
        return it.out, it.output

    def returned(self, task: DIPTask, step: int) -> str:
        """Which candidate the rule returns for a stop at `step`: what the run's result (DIPTask.final_output)
        would have been had it ended there (`auto`: the averaged output past the averaging warm-up, else the net's
        output from the clean input), or the one `output` names."""
        if self.output == "auto":
            averaged = task.exp_weight > 0 and step >= averaging_warmup(task.exp_weight)
            return "averaged" if averaged else "final"
        if self.output == "averaged" and task.exp_weight <= 0:
            return "final"  # no averaging: the result is the net's output
        return self.output

    @torch.no_grad()
    def final_image(self, task: DIPTask) -> torch.Tensor:
        """The net's output from the clean input with the weights after the stop step (the net keeps its own)."""
        current = flat_weights(task.net).clone()
        load_flat(task.net, self.weights.to(current.device))
        try:
            return task.net(task.z).clamp(0, 1)  # train mode: BatchNorm with batch statistics, as final_output
        finally:
            load_flat(task.net, current)

    def fired(self) -> bool:
        return self.fired_at is not None and int(self.fired_at) >= 0  # one host read per chunk

    def stop_result(self, task: DIPTask) -> dict | None:
        """stop_step, stop_reason, stop_iteration, the chosen image and every candidate; None when nothing was
        scored."""
        if self.best_step is None or int(self.best_step) < 0:
            return None
        fired, step = int(self.fired_at), int(self.best_step)
        candidates = {"raw": self.image.clamp(0, 1), "final": self.final_image(task)}
        if task.exp_weight > 0:
            candidates["averaged"] = self.image_avg.clamp(0, 1)
        kind = self.returned(task, step)
        return {
            "stop_step": step,
            "stop_reason": self.reason if fired >= 0 else "max_iterations",
            "stop_iteration": fired if fired >= 0 else None,
            "stop_rule": type(self).__name__,
            "stop_output": kind,
            "image": candidates[kind],
            "candidates": candidates,
            **self.extra_result(task),
        }

    def extra_result(self, task: DIPTask) -> dict:
        """Further numbers a rule reports (e.g. the noise level it used)."""
        return {}

    # Checkpointing: every tensor of the running state.
    _state = ("best_score", "best_step", "fired_at", "image", "image_avg", "weights")

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self._state}

    def load_state_dict(self, state: dict) -> None:
        for k in self._state:
            setattr(self, k, state[k])


class PSNRPatience(PatienceRule):
    """Stop when PSNR against the ground truth has not improved for `patience` iterations."""

    reason = "psnr_patience"
    uses_ground_truth = True

    def __init__(self, patience: int = 500, stop: bool = True):
        super().__init__(patience, stop, output="raw")

    def on_dip_iteration(self, task: DIPTask, it: Iteration) -> None:
        if it.psnr_out is None:
            raise DIPError(
                "callbacks=psnr_patience needs a ground truth (data.image); without one use "
                "callbacks=es_wmv or callbacks=es_emv."
            )
        psnr, _ = it.best_candidate()  # the same candidates as BestIterate
        self._update(task, it, -psnr)

    def candidates(self, it: Iteration) -> tuple[torch.Tensor, torch.Tensor]:
        _, image = it.best_candidate()
        return image, image

    def returned(self, task: DIPTask, step: int) -> str:
        return "raw"  # the best iterate itself


class ESWMV(PatienceRule):
    """ES-WMV: windowed moving variance of the outputs, window W, patience P (W=100, P=1000 in the paper)."""

    reason = "es_wmv"
    _state = PatienceRule._state + ("window_buffer",)

    def __init__(self, window: int = 100, patience: int = 1000, stop: bool = True, output: str = "auto"):
        super().__init__(patience, stop, output)
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
        self._update(task, it, score)


class ESEMV(PatienceRule):
    """ES-EMV: exponential moving variance (weight `alpha` on the newest output); scored after `warmup` steps."""

    reason = "es_emv"
    _state = PatienceRule._state + ("ema", "emv")

    def __init__(
        self, alpha: float = 0.1, patience: int = 1000, warmup: int = 100, stop: bool = True, output: str = "auto"
    ):
        super().__init__(patience, stop, output)
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
            self._update(task, it, self.emv.mean())
