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
- sure (DIP-SURE, Jo, Chun and Choi 2021; denoising of white Gaussian noise only): the net's input is the noisy
  observation y itself (plus the task's jitter), and the loss is Stein's unbiased estimate of the MSE to the clean
  image: mean((f(x) - y)^2) + 2 sigma^2 div f(x) / n (the constant -sigma^2 left out), the divergence estimated by
  one Monte-Carlo probe b ~ N(0, I) per iteration: b . (f(x + eps b) - f(x)) / eps, eps = epsilon * sigma. The term
  penalises an output that copies its input's noise, so the fit does not overfit: no stopping rule is needed, and
  the result is the averaged last iterate. Its raw outputs swing by several dB from one iteration to the next, so
  from iteration `average_from` on (300; in place of task.average_from) the average is the plain mean of the
  outputs rather than the exponential one, which follows the swings (experiments/bench_sure_averaging.py).
  sigma: given (0-255 units), the simulated noise's, or estimated from the observation (dip_lightning/noise.py);
  spatially correlated noise is refused, as SURE's form assumes white noise.
  The input jitter's std is `jitter` x sigma (in place of task.reg_noise_std): with jitter about sigma the fit
  held where a third of sigma let it fall apart after about 1200 iterations (experiments/bench_gt_free_recipe.py).

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
    #: its term runs the run's own net again (a pack, which trains stacked weights, cannot run it)
    calls_net = False
    #: why its result needs no stopping rule without ground truth (None: plain DIP's does)
    needs_no_rule: str | None = None

    def describe(self) -> str:
        return self.name

    @classmethod
    def declines(cls, observed: torch.Tensor) -> str | None:
        """Why this variant would not suit an observation (a 1xCxHxW image), None when it would: a run without
        ground truth then gets plain DIP in its place (run/gt_free.choose_regularizer)."""
        return None

    def check(self, task: DIPTask) -> None:
        """Refuse a task this regulariser cannot run with (called once the task is prepared)."""

    def term(self, task: DIPTask, out: torch.Tensor) -> torch.Tensor | None:
        """What is added to the data term for this iteration's output `out` (None: nothing)."""
        return None

    def param_groups(self, task: DIPTask) -> list[dict]:
        """The optimizer's parameter groups: the net's weights, and z where the regulariser trains it."""
        return [{"params": list(task.net.parameters())}]

    def before_iteration(self, task: DIPTask) -> None:
        """Before the step, outside any captured graph (where a term's random draws are made)."""

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
        if task.backtracking and self.changes_input:
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
    needs_no_rule = "its denoising term keeps the net from copying the noisy input"

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


class SURE(_ImageInput):
    name = "sure"
    changes_input = False  # z is the observation throughout
    calls_net = True
    needs_no_rule = "its loss, Stein's estimate of the error to the clean image, does not reward fitting the noise"

    def __init__(
        self,
        sigma: float | None = None,
        epsilon: float = 0.5,
        jitter: float | None = 1.0,
        average_from: int | None = None,
    ):
        super().__init__(1.0)
        self.average_from = average_from  # checked by the task (check), whose averaging it changes
        bad = isinstance(jitter, bool) or not isinstance(jitter, (int, float, type(None)))
        if bad or (jitter is not None and not 0 <= jitter < float("inf")):
            raise DIPError(
                f"regularizer.jitter={jitter!r} is not valid; expected the input jitter's std as a fraction of "
                "sigma, >= 0 (e.g. regularizer.jitter=1.0), or null for task.reg_noise_std."
            )
        self.jitter = None if jitter is None else float(jitter)
        bad = isinstance(sigma, bool) or not isinstance(sigma, (int, float, type(None)))
        if bad or (sigma is not None and not 0 < sigma <= 255):
            raise DIPError(
                f"regularizer.sigma={sigma!r} is not valid; expected the noise std in 0-255 units (0 < sigma <= 255, "
                "e.g. regularizer.sigma=25), or null to estimate it from the observation."
            )
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < float("inf"):
            raise DIPError(
                f"regularizer.epsilon={epsilon!r} is not valid; expected the divergence probe's step as a fraction "
                "of sigma, > 0, e.g. regularizer.epsilon=0.5."
            )
        self.given_sigma = None if sigma is None else float(sigma) / 255.0
        self.epsilon = float(epsilon)
        self.sigma: float | None = None  # [0, 1] units, once the task is prepared (check)
        self._probe: torch.Tensor | None = None

    def describe(self) -> str:
        sigma = "estimated" if self.given_sigma is None else f"{self.given_sigma * 255:g}"
        jitter = "task.reg_noise_std" if self.jitter is None else f"{self.jitter:g} sigma"
        mean = "" if self.average_from is None else f", average_from={self.average_from}"
        return f"sure(sigma={sigma}, epsilon={self.epsilon:g}, jitter={jitter}{mean})"

    def check(self, task: DIPTask) -> None:
        super().check(task)
        if not task.operator.is_identity:
            raise DIPError(
                f"regularizer=sure is Stein's unbiased risk estimate for denoising (A = identity), but task "
                f"{task.name} observes through {type(task.operator).__name__}; use it with task=denoising, or "
                "regularizer=none|tv with this task."
            )
        if self.average_from is not None:  # in place of task.average_from
            task.use_average_from(self.average_from, "regularizer.average_from")
        self.sigma = self.given_sigma or task.simulated_noise_sigma() or self._estimate(task)
        if self.jitter is not None:  # known only now: the jitter scales with the noise it is to mask
            task.reg_noise_std = self.jitter * self.sigma

    @classmethod
    def declines(cls, observed: torch.Tensor) -> str | None:
        from .noise import estimate_noise

        return cls._declines(estimate_noise(observed))

    @staticmethod
    def _declines(found) -> str | None:
        if found.correlated:
            return (
                "the observation's noise looks spatially correlated (its next-coarser wavelet band holds "
                f"{found.coarse / found.fine:.1f}x the finest band's noise level; white noise gives about 1), and "
                "SURE's divergence term assumes white noise"
            )
        return None

    def _estimate(self, task: DIPTask) -> float:
        from .noise import estimate_noise

        found = estimate_noise(task.observed)  # once: whether SURE suits the noise, and its level
        reason = self._declines(found)
        if reason:
            raise DIPError(
                f"regularizer=sure assumes white Gaussian noise, but {reason}. Use regularizer=none (the "
                "discrepancy rule stops it), or give regularizer.sigma=<std, 0-255> if the noise is white after all."
            )
        if not found.sigma > 0:
            raise DIPError(
                "regularizer=sure found no noise in the observation (estimated sigma 0); give regularizer.sigma="
                "<std, 0-255> or use regularizer=none."
            )
        return found.sigma

    def before_iteration(self, task: DIPTask) -> None:
        if self._probe is None:
            self._probe = torch.empty_like(task.z)
        self._probe.normal_(generator=task.jitter_gen)  # the task's seeded generator: a resume draws the same

    def term(self, task: DIPTask, out: torch.Tensor) -> torch.Tensor | None:
        eps = self.epsilon * self.sigma
        with task.speed.autocast(task.observed.device):  # the same forward pass as the output's (bf16, compiled)
            moved = task._forward(task.net_input() + eps * self._probe).float()
        divergence = (self._probe * (moved - out)).mean() / eps  # per pixel, as the data term's mean
        return 2 * self.sigma**2 * divergence


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
                "self_guided, aseqdip, sure."
            ) from None
        if isinstance(built, Regularizer):
            return built
    raise DIPError(
        f"regularizer={value!r} is not a regulariser; expected regularizer=none|tv|self_guided|aseqdip|sure (a "
        "conf/regularizer option), e.g. regularizer=tv regularizer.weight=0.01."
    )
