"""Regularised DIP variants, one mechanism for every task: the `regularizer` config group (conf/regularizer/).

A regulariser adds a term to the task's data term, and may own the input z:

- none: plain DIP, loss = data term.
- tv (DIP-TV, Liu et al. 2019): loss = data term + weight * TV(f(z)), TV the mean over pixels and channels of
  |horizontal difference| + |vertical difference| (anisotropic) or of their Euclidean norm (isotropic).
- self_guided (self-guided DIP, Liang et al. 2023/2025): z lives in image space (net.input_depth = the image's
  channels), starts from the task's own estimate (the observation, or the physics' baseline reconstruction) and is
  optimised with the weights, in a parameter group of its own (lr_z); loss = data term + weight *
  mean((f(z + eta) - z)^2), a denoising term that makes f a denoiser of z. eta ~ N(0, noise_std^2) is drawn as
  the task's input jitter, whose std it replaces (noise_std=null keeps task.reg_noise_std): one draw per iteration,
  where the paper averages a few draws per iteration; output averaging (task.exp_weight) averages over iterations.
  eta must be at least the observation's noise: with the plain-DIP jitter (1/30) the net learns to pass the noisy z
  through and the result falls to the input's PSNR (experiments/bench_regularizers.py).
- aseqdip (autoencoding sequential DIP, Alkhouri et al. 2024): z in image space as for self_guided but not
  trained; loss = data term + weight * mean((f(z) - z)^2); every `inner_steps` iterations z becomes the net's
  output of that iteration (detached), so the input follows the reconstruction. The result is the last output.

The weights are on mean-squared (per pixel) terms, as the data term is: they do not change with the image size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import DIPError, root_cause

if TYPE_CHECKING:
    from .tasks.base import DIPTask


def total_variation(x: torch.Tensor, isotropic: bool = False) -> torch.Tensor:
    """The mean total variation of a (B, C, H, W) image: per pixel and channel, of the forward differences."""
    dh = x[..., :, 1:] - x[..., :, :-1]
    dv = x[..., 1:, :] - x[..., :-1, :]
    if not isotropic:
        return dh.abs().mean() + dv.abs().mean()
    dh, dv = dh[..., :-1, :], dv[..., :, :-1]  # both at the pixels that have a right and a lower neighbour
    return torch.sqrt(dh * dh + dv * dv + 1e-8).mean()


def _weight(value, key: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise DIPError(f"regularizer.{key}={value!r} is not valid; expected a finite weight >= 0, e.g. {example}.")
    return float(value)


class Regularizer:
    """Plain DIP (regularizer=none). A subclass may add a loss term, own the input z, train it, change it."""

    name = "none"
    #: z is in image space and starts from the task's estimate (image_input)
    image_input = False
    #: z is trained with the weights (its parameter group: param_groups)
    trains_input = False
    #: z changes during the run (trained, or replaced): a checkpoint keeps it
    changes_input = False
    #: the std of the input's jitter this regulariser needs in place of task.reg_noise_std (None: the task's)
    input_noise_std: float | None = None

    def describe(self) -> str:
        return self.name

    def check(self, task: DIPTask) -> None:
        """Refuse a task this regulariser cannot run with (called once the task is prepared)."""

    def term(self, task: DIPTask, out: torch.Tensor) -> torch.Tensor | None:
        """What is added to the data term for this iteration's output `out` (None: nothing)."""
        return None

    def param_groups(self, task: DIPTask) -> list[dict]:
        """The optimizer's parameter groups: the net's weights, and z where the regulariser trains it."""
        return [{"params": list(task.net.parameters())}]

    def after_iteration(self, task: DIPTask, out: torch.Tensor) -> None:
        """After the optimizer step (outside any captured graph), with this iteration's raw output."""


class NoRegularizer(Regularizer):
    pass


class TV(Regularizer):
    name = "tv"

    def __init__(self, weight: float = 0.01, isotropic: bool = False):
        self.weight = _weight(weight, "weight", "regularizer.weight=0.01")
        self.isotropic = bool(isotropic)

    def describe(self) -> str:
        return f"tv(weight={self.weight:g}, {'isotropic' if self.isotropic else 'anisotropic'})"

    def term(self, task: DIPTask, out: torch.Tensor) -> torch.Tensor | None:
        return self.weight * total_variation(out, self.isotropic) if self.weight > 0 else None


class _ImageInput(Regularizer):
    """z in image space, from the task's estimate; the denoising term weight * mean((f(z~) - z)^2)."""

    image_input = True
    changes_input = True

    def __init__(self, weight: float):
        self.weight = _weight(weight, "weight", "regularizer.weight=1.0")

    def check(self, task: DIPTask) -> None:
        c = task.out_avg.shape[1]
        if task.net.input_depth != c:
            raise DIPError(
                f"regularizer={self.name} feeds the net an image (z in image space, starting from the task's own "
                f"estimate), so the net's input must have the image's {c} channel(s), but net.input_depth="
                f"{task.net.input_depth}; set net.input_depth={c}."
            )
        if tuple(task.z.shape[-2:]) != tuple(task.out_avg.shape[-2:]):
            raise DIPError(
                f"regularizer={self.name} needs a net whose input has the output's size ({task.out_avg.shape[-1]}x"
                f"{task.out_avg.shape[-2]}), but this net takes {task.z.shape[-1]}x{task.z.shape[-2]} (a Deep "
                "Decoder's small input?); use a net with a same-size input, e.g. net=skip_small."
            )
        if task.backtracking:
            raise DIPError(
                f"regularizer={self.name} with task.backtracking=true: backtracking restores the net's weights, "
                "not the input z that this regulariser changes, so a restored run would mix states. Set "
                "task.backtracking=false."
            )

    def term(self, task: DIPTask, out: torch.Tensor) -> torch.Tensor | None:
        if self.weight == 0:
            return None
        return self.weight * torch.nn.functional.mse_loss(out, task.z.detach() if not self.trains_input else task.z)


class SelfGuided(_ImageInput):
    name = "self_guided"
    trains_input = True

    def __init__(self, weight: float = 1.0, lr_z: float = 0.001, noise_std: float | None = 0.2):
        super().__init__(weight)
        if isinstance(lr_z, bool) or not isinstance(lr_z, (int, float)) or not 0 < lr_z < float("inf"):
            raise DIPError(
                f"regularizer.lr_z={lr_z!r} is not valid; expected the input's learning rate > 0, e.g. 0.001."
            )
        self.lr_z = float(lr_z)
        bad = isinstance(noise_std, bool) or not isinstance(noise_std, (int, float, type(None)))
        if bad or (noise_std is not None and not 0 < noise_std < float("inf")):
            raise DIPError(
                f"regularizer.noise_std={noise_std!r} is not valid; expected the std of self-guided DIP's input noise "
                "eta, > 0 (its denoising term needs noise to remove), e.g. regularizer.noise_std=0.2, or null for "
                "task.reg_noise_std."
            )
        self.input_noise_std = None if noise_std is None else float(noise_std)

    def describe(self) -> str:
        eta = "task.reg_noise_std" if self.input_noise_std is None else f"{self.input_noise_std:g}"
        return f"self_guided(weight={self.weight:g}, lr_z={self.lr_z:g}, noise_std={eta})"

    def param_groups(self, task: DIPTask) -> list[dict]:
        task.z.requires_grad_(True)
        return [{"params": list(task.net.parameters())}, {"params": [task.z], "lr": self.lr_z}]


class ASeqDIP(_ImageInput):
    name = "aseqdip"

    def __init__(self, weight: float = 1.0, inner_steps: int = 2):
        super().__init__(weight)
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise DIPError(
                f"regularizer.inner_steps={inner_steps!r} is not valid; expected the iterations per input update, "
                "a whole number >= 1 (2 in the paper)."
            )
        self.inner_steps = inner_steps

    def describe(self) -> str:
        return f"aseqdip(weight={self.weight:g}, inner_steps={self.inner_steps})"

    @torch.no_grad()
    def after_iteration(self, task: DIPTask, out: torch.Tensor) -> None:
        if task.iteration % self.inner_steps == 0:  # task.iteration counts this iteration already
            task.z.copy_(out.to(task.z.dtype))


def build_regularizer(value) -> Regularizer:
    """The task's regulariser from its constructor argument: an object, a config node (`_target_`), or None."""
    if value is None:
        return NoRegularizer()
    if isinstance(value, Regularizer):
        return value
    from omegaconf import DictConfig

    if isinstance(value, (dict, DictConfig)) and "_target_" in value:
        import hydra

        try:
            built = hydra.utils.instantiate(value)
        except Exception as err:  # a DIPError inside the instantiation: its own message
            cause = root_cause(err)
            if isinstance(cause, DIPError):
                raise cause from None
            raise DIPError(
                f"regularizer could not be built ({cause}); expected one of conf/regularizer: none, tv, "
                "self_guided, aseqdip."
            ) from None
        if isinstance(built, Regularizer):
            return built
    raise DIPError(
        f"regularizer={value!r} is not a regulariser; expected regularizer=none|tv|self_guided|aseqdip (a "
        "conf/regularizer option), e.g. regularizer=tv regularizer.weight=0.01."
    )
