"""The DIP task base class: a LightningModule whose "training" overfits a generator to one corrupted image.

The task says what one run computes: its observation, z and jitter, the loss through its operator, and the
bookkeeping after each backward pass (PSNRs, output averaging, backtracking's decision), all on the device. The
loop (dip_lightning/loop) runs the iterations, for this run alone or packed with others, and reads the history
once per chunk (`record_chunk`).

A subclass says what the task is: `build_operator` (the degradation A), and optionally what the loss fits and what
is scored, from the data as read (`prepare_observation`, `prepare_ground_truth`: the loaded ImageData is never
changed), what the corrupted input itself scores (`observed_psnr`) and how the result is scored (tasks/scoring.py).
docs/design.md states the whole contract.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Callable, Sequence

import pytorch_lightning as pl
import torch

from .. import history
from ..data.datamodule import ImageData
from ..errors import DIPError
from ..metrics import psnr
from ..nets.base import Generator, check_generator
from ..nets.inputs import make_input
from ..operators.base import Operator
from ..regularizers import build_regularizer
from ..speed import SpeedOptions
from . import cuda_graph
from .bookkeeping import Bookkeeping
from .iteration import jitter_schedule
from .run_state import HISTORY, RunState
from .scoring import Scoring
from .verdict import Verdict

if TYPE_CHECKING:
    from ..callbacks.roles import IterationHook

log = logging.getLogger(__name__)


class DIPTask(Scoring, Bookkeeping, RunState, Verdict, pl.LightningModule):
    name = "dip"
    #: output size / observed size; the super-resolution factor for SR.
    observed_scale = 1
    #: a given observation scoring below this PSNR against the given ground truth is reported as implausible (a
    #: pair of different pictures scores 7-11 dB; sigma=50 noise 14 dB); None: no such check for the task
    implausible_observed_psnr: float | None = None

    def __init__(
        self,
        net: Generator,
        optimizer: Callable[..., torch.optim.Optimizer],
        input_type: str = "noise",
        input_scale: float = 0.1,
        reg_noise_std: float = 0.0,
        reg_noise_schedule: dict | None = None,
        exp_weight: float = 0.0,
        backtracking: bool = False,
        backtrack_drop_db: float = 5.0,
        backtrack_mode: str = "clean",
        backtrack_check_every: int = 1,
        backtrack_skip_every: int = 0,
        final_input: str = "clean",
        optimize_input: bool = False,
        seed: int = 0,
        noise_seed: int | None = None,
        log_every: int = 10,
        regularizer=None,
        speed: SpeedOptions | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.net = check_generator(net)  # its input_depth, output_channels, sizes: dip_lightning/nets/base.py
        self.optimizer_factory = optimizer
        self.input_type, self.input_scale = input_type, float(input_scale)
        self.reg_noise_std = float(reg_noise_std)
        self.reg_noise_schedule = jitter_schedule(reg_noise_schedule, self.reg_noise_std)
        if not 0.0 <= exp_weight < 1.0:
            raise DIPError(
                f"task.exp_weight={exp_weight} is not valid; expected 0 <= exp_weight < 1 (0.99 in the "
                "paper; 0 turns output averaging off)."
            )
        self.exp_weight = float(exp_weight)
        self.backtracking, self.backtrack_drop_db = bool(backtracking), float(backtrack_drop_db)
        if backtrack_mode not in ("clean", "reference"):
            raise DIPError(
                f"task.backtrack_mode={backtrack_mode!r} is not known; expected clean (restore the weights and the "
                "optimizer's state, skip the step) or reference (the notebooks': restore the weights only)."
            )
        for key, value in (
            ("backtrack_check_every", backtrack_check_every),
            ("backtrack_skip_every", backtrack_skip_every),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (1 if key.endswith("check_every") else 0)
            ):
                raise DIPError(
                    f"task.{key}={value!r} is not valid; expected a whole number of iterations (>= 1 for "
                    "check_every, >= 0 for skip_every: 0 skips none)."
                )
        self.backtrack_mode = backtrack_mode
        self.backtrack_check_every, self.backtrack_skip_every = backtrack_check_every, backtrack_skip_every
        self._check_count: torch.Tensor | None = None  # the reference's `i`: iterations not backtracked (on device)
        if final_input not in ("clean", "jittered"):
            raise DIPError(
                f"task.final_input={final_input!r} is not known; expected clean (the net's output from z) or "
                "jittered (from the last iteration's jittered input, as the reference's last cell)."
            )
        self.final_input = final_input
        self.optimize_input = bool(optimize_input)
        if self.optimize_input and self.backtracking:
            raise DIPError(
                "task.optimize_input=true with task.backtracking=true: backtracking restores the net's weights, not "
                "the optimised input z, so a restored run would mix states. Turn one of them off."
            )
        self.seed, self.log_every = int(seed), max(int(log_every), 1)
        # the regularised variant (conf/regularizer: none, tv, self_guided, aseqdip; dip_lightning/regularizers.py)
        self.regularizer = build_regularizer(regularizer)
        if self.regularizer.input_noise_std is not None:  # self_guided's eta: the input noise is part of its term
            self.reg_noise_std = self.regularizer.input_noise_std
            self.reg_noise_schedule = jitter_schedule(reg_noise_schedule, self.reg_noise_std)
        # the simulated observation's own seed: runs that differ in `seed` (an ensemble) restore one observation
        self.noise_seed = self.seed if noise_seed is None else int(noise_seed)
        self.iteration = 0  # a resumed run's: put back by load_run_state
        self.history: dict[str, list[float]] = {history.ITERATION: [], **{k: [] for k in HISTORY}}
        self.data: ImageData | None = None
        self.given_observation = False  # whether the observation was given (prepare_observation), not simulated
        self._unchanged: torch.Tensor | None = None  # backtracking: this iteration keeps the last good state
        object.__setattr__(self, "_forward", net)  # the net, or its compiled form (on_fit_start); not a submodule
        # precision, channels_last, compile, cuda_graph (dip-run builds them from the config: SpeedOptions.from_config)
        self.speed = speed if speed is not None else SpeedOptions()
        self._noise: torch.Tensor | None = None  # this iteration's jitter, drawn before the step
        self._by_hand = None  # by_hand's one-run loop, with the optimizer and hooks it was made for

    # ---------------------------------------------------------------------------------------------- task hooks
    def build_operator(self, data: ImageData) -> Operator:
        raise NotImplementedError

    #: whether data.observed may be a measurement tensor (.pt/.npy) rather than an image (task=physics)
    reads_measurements = False

    def check_measurement(self, data: ImageData) -> None:
        if data.options.get("measurement") and not self.reads_measurements:
            raise DIPError(
                f"data.observed={data.sources.get('observed')!r} is a measurement tensor (.pt/.pth/.npy), which "
                f"only task=physics reads (its forward model says what the tensor is); task {self.name} restores "
                "from an image: give data.observed as an image file (.png, .jpg, .tif, ...)."
            )

    def output_shape(self, data: ImageData) -> tuple[int, int, int]:
        """(channels, height, width) of the network output."""
        self.check_measurement(data)
        ref = data.clean if data.clean is not None else data.observed
        scale = 1 if data.clean is not None else self.observed_scale
        return ref.shape[1], ref.shape[2] * scale, ref.shape[3] * scale

    def make_input(self, data: ImageData, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        # a net may want z smaller than its output (the Deep Decoder's input is H/2^n x W/2^n)
        h, w = self.net.input_size(shape[1], shape[2])
        return make_input(self.input_type, self.net.input_depth, h, w, self.input_scale, generator)

    def data_warnings(self) -> list[str]:
        """What looks wrong with the given data without making the run impossible (logged, and in metrics.json)."""
        given = self.data is not None and self.given_observation and self.clean is not None
        p = self.observed_psnr() if given and self.implausible_observed_psnr is not None else None
        if p is not None and p < self.implausible_observed_psnr:
            return [
                f"data.observed scores {p:.2f} dB against data.image, as low as two different pictures do: check "
                "that they show the same scene, aligned pixel for pixel (no shift, crop or resize between them)"
            ]
        return []

    #: the GT-free stopping rule (a conf/callbacks preset) that runs with only an observation get under
    #: `without_ground_truth: auto`: the rule measured best for the task (bench_early_stopping.py), or None where no
    #: rule beat the fixed iteration count (SR, inpainting) or none was measured
    gt_free_rule: str | None = None

    @classmethod
    def auto_gt_free_rule(cls, net) -> str | None:
        """`without_ground_truth=auto`'s rule for this task with the composed `net` config (dip_lightning/gt_free.py
        reads it into the config's gt_free_rule): `gt_free_rule`; a task whose best rule depends on the net
        overrides this."""
        return cls.gt_free_rule

    def simulated_noise_sigma(self) -> float | None:
        """The noise std ([0, 1] units) of an observation this task simulated; None for a given observation."""
        if self.data is None or self.given_observation:
            return None
        return float(self.operator.sigma)

    # ------------------------------------------------------------------------------------------------- set-up
    def prepare(self, data: ImageData) -> None:
        """Build the operator, the observation (simulated with the seed when not given) and the fixed input z."""
        self.check_measurement(data)
        self.data = data  # as it was read (the run identity hashes its content): the hooks below leave it alone
        gen = torch.Generator().manual_seed(self.seed)
        self.operator = self.build_operator(data)
        clean = self.prepare_ground_truth(data)
        observed = self.prepare_observation(data)
        self.given_observation = observed is not None
        if observed is None:
            observed = self.operator.simulate(clean, torch.Generator().manual_seed(self.noise_seed))
            # z is drawn from the seed's generator after a simulation's draws, as before task.noise_seed existed,
            # so a run's z (and its result) for a given seed stays what it was
            self.operator.simulate(clean, gen)
        shape = self.output_shape(data)
        if self.net.output_channels != shape[0]:
            raise DIPError(
                f"The net outputs {self.net.output_channels} channels but the image {data.name!r} has {shape[0]}; "
                f"set net.output_channels={shape[0]}."
            )
        self.register_buffer("clean", clean.clone() if clean is not None else None)
        self.register_buffer("observed", observed.clone())
        z = self.make_input(data, shape, gen)
        if self.regularizer.image_input:  # z in image space, from the observation alone (gen drew it all the same)
            z = self.image_estimate(shape)
        self.register_buffer("z", z)
        self.register_buffer("out_avg", torch.zeros(1, *shape))
        self.register_buffer("last_out", torch.zeros(1, *shape))
        self.register_buffer("n_backtracks", torch.zeros((), dtype=torch.long))
        # the best PSNR against the observation of a good iterate: backtracking compares each iterate with it
        self.register_buffer("best_good_psnr", torch.tensor(-math.inf))
        self.regularizer.check(self)

    def prepare_ground_truth(self, data: ImageData) -> torch.Tensor | None:
        """The ground truth the task scores against (None: none), from the data as read: data.image's image. A task
        that scores against another form of it (gray, resized) returns that; `data` itself stays as it was read."""
        return data.clean

    def prepare_observation(self, data: ImageData) -> torch.Tensor | None:
        """The observation the loss fits, from the data as read, after `build_operator`; None: simulated from the
        ground truth through the operator. Default: data.observed. A task whose observation is another input
        (flash/no-flash) or only partly data (inpainting: the known pixels) returns that; `data` itself stays as
        it was read."""
        return data.observed

    @torch.no_grad()
    def image_estimate(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The image the observation alone gives (a regulariser's input z): the observation where it has the
        output's shape, resized where it is a smaller or larger image, else A^T y; a subclass with a better one (the
        physics task: its baseline reconstruction) overrides this."""
        y = self.observed
        if y.ndim == 4 and tuple(y.shape[1:]) == tuple(shape):
            return y.clone()
        if y.ndim == 4 and y.shape[1] == shape[0]:
            return torch.nn.functional.interpolate(y, size=shape[1:], mode="bicubic", align_corners=False).clamp(0, 1)
        if self.operator.has_adjoint:
            estimate = self.operator.adjoint(y)
            if tuple(estimate.shape[1:]) == tuple(shape):
                return estimate
        raise DIPError(
            f"regularizer={self.regularizer.name} starts z from the image the observation gives, but task "
            f"{self.name}'s observation ({tuple(y.shape)}) gives no image of the output's shape {tuple(shape)}; "
            "use regularizer=none or regularizer=tv with this task."
        )

    def fit_psnr(self, a_out: torch.Tensor) -> torch.Tensor:
        """PSNR of A out against the observation (the fit: history's psnr_fit, backtracking, the collapse check);
        A out clamped to [0, 1] as an image is (the physics task: not clamped, a measurement is no image)."""
        return psnr(a_out, self.observed)

    def fit_loss(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of an output and A out: the data term, plus the regulariser's term."""
        loss, a_out = self.operator.loss(out, self.observed)
        term = self.regularizer.term(self, out)
        return (loss if term is None else loss + term), a_out

    @property
    def input_changes(self) -> bool:
        """Whether z changes as the run goes (task.optimize_input, or a regulariser's): a checkpoint keeps it."""
        return self.optimize_input or self.regularizer.changes_input

    def trained_tensors(self) -> list[torch.Tensor]:
        """What the optimizer updates: the net's weights, and z with task.optimize_input (the reference's
        OPT_OVER='net,input')."""
        if self.regularizer.trains_input:  # z in a parameter group of its own, with its own learning rate
            return self.regularizer.param_groups(self)
        params = list(self.net.parameters())
        if self.optimize_input:
            self.z.requires_grad_(True)
            params.append(self.z)
        return params

    def configure_optimizers(self) -> torch.optim.Optimizer:
        factory = getattr(self.optimizer_factory, "func", self.optimizer_factory)
        if factory is torch.optim.LBFGS:
            raise DIPError(
                "optimizer torch.optim.LBFGS re-evaluates the loss through a closure several times per step, and "
                "the DIP loop takes one gradient per iteration (averaging, backtracking, jitter and the history count "
                "iterations). The reference's LBFGS path is not supported: use optimizer=adam (its default)."
            )
        if not self.speed.cuda_graph:
            return self.optimizer_factory(params=self.trained_tensors())
        try:  # a captured step keeps its step count on the device
            return self.optimizer_factory(params=self.trained_tensors(), capturable=True)
        except TypeError:
            raise DIPError(
                f"cuda_graph=true needs an optimizer that can be captured in a CUDA graph (capturable=True: "
                f"Adam, AdamW); {getattr(self.optimizer_factory, 'func', self.optimizer_factory)} cannot. "
                "Use optimizer=adam, or cuda_graph=false."
            ) from None

    def on_fit_start(self) -> None:
        # Jitter noise comes from its own seeded generator on the device, so runs and resumes are reproducible.
        self.jitter_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        self.net.train()  # BatchNorm uses batch statistics throughout, as in the reference (never eval()).
        self.speed.apply_backend_flags()
        if self.speed.channels_last:  # in place: the optimizer keeps the same Parameter objects
            self.net.to(memory_format=torch.channels_last)
            self.z = self.z.contiguous(memory_format=torch.channels_last)
        # dynamic=False: one run has one image size; a later run of another size in the same process (a sweep,
        # the benchmarks) gets its own static kernels, not a recompilation for symbolic shapes
        forward = torch.compile(self.net, mode=self.speed.compile, dynamic=False) if self.speed.compile else self.net
        object.__setattr__(self, "_forward", forward)  # not a submodule: the state dict keeps the net's keys only
        if self.speed.cuda_graph:
            cuda_graph.check_device(self.device)

    # -------------------------------------------------------------------------------------------- the iteration
    # The loop (dip_lightning/loop) runs the iteration for one run or a pack of runs; a task supplies its parts:
    # the jittered input, the bookkeeping after backward (after_backward), the chunk record (record_chunk).
    def by_hand(self, optimizer: torch.optim.Optimizer, hooks: Sequence[IterationHook] = ()):
        """This task alone in the loop's iteration with `optimizer` and the iteration `hooks` (a best iterate,
        stopping rules: called after each step as in dip-run), to drive by hand (a notebook, a test) with
        `once()` or `run(hist, i)`."""
        from ..loop.iteration import Iterations

        key = (optimizer, tuple(hooks))
        if self._by_hand is None or self._by_hand[0] != key:
            self._by_hand = key, Iterations.alone(self, optimizer, hooks)
        return self._by_hand[1]

    def dip_iteration(self, optimizer: torch.optim.Optimizer, hooks: Sequence[IterationHook] = ()) -> torch.Tensor:
        """One DIP step driven by hand (`by_hand`); returns its history row (loss, PSNR to the observation[, PSNRs
        to the ground truth])."""
        return self.by_hand(optimizer, hooks).once()

    def draw_jitter(self) -> None:
        """This iteration's input noise, drawn outside any CUDA graph: the jitter keeps its own seeded generator."""
        if self.reg_noise_std > 0:
            if self._noise is None:
                self._noise = torch.empty_like(self.z)
            self._noise.normal_(generator=self.jitter_gen)  # what torch.randn(out=) does, without its resize_
            std = next((v for start, v in self.reg_noise_schedule if self.iteration >= start), self.reg_noise_std)
            if std != self.reg_noise_std:  # scaled here, outside the graph: net_input multiplies by reg_noise_std
                self._noise.mul_(std / self.reg_noise_std)

    def net_input(self) -> torch.Tensor:
        """z, jittered by this iteration's noise (drawn by `dip_iteration`)."""
        return self.z + self.reg_noise_std * self._noise if self.reg_noise_std > 0 else self.z

    @torch.no_grad()
    def final_output(self, final_input: str | None = None) -> torch.Tensor:
        """The result: the averaged output when averaging is on, else the net's output from the clean z, or from
        the last iteration's jittered input (`final_input`, default task.final_input: the reference's last cell)."""
        if self.exp_weight > 0 and self.iteration > 0:
            return self.out_avg.clamp(0, 1)
        jittered = (final_input or self.final_input) == "jittered" and self.reg_noise_std > 0
        if jittered and self._noise is None:  # resumed at the end: the last iteration's noise was not kept
            self.draw_jitter()
        z = self.net_input() if jittered else self.z
        return self.net(z).clamp(0, 1)  # train mode on purpose: BatchNorm with batch statistics

    def final_inputs_differ(self) -> bool:
        """Whether the clean and jittered final inputs give different results (jitter on, no averaging)."""
        return self.reg_noise_std > 0 and not (self.exp_weight > 0 and self.iteration > 0)
