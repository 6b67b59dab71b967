"""The DIP task base class: the LightningModule whose "training" overfits a generator to one corrupted image.

A task is what a Trainer fits: `pl.Trainer(max_steps=500).fit(Denoising(net, optimizer, sigma=25),
datamodule=SingleImageDataModule(image="astronaut", crop=128))` restores the image and leaves the result
(`restored()`), the best iterate (`best`) and the history (`history`) on the task. Its training step is the loop's
(loop/engine.Engine: chunks of DIP iterations, one host read per chunk), the same code that trains a pack of K
tasks; the DIP callbacks (callbacks.roles: best iterate, stopping rules, progress) and a `Checkpointing` are taken
from the Trainer's callbacks, the curves go to the Trainer's loggers.

The task says what one run computes: its observation, z and jitter, the loss through its operator, and the
bookkeeping after each backward pass (PSNRs, output averaging, backtracking's decision), all on the device, and the
history the loop reads once per chunk (`record_chunk`). A subclass says what the task is: `build_operator` (the
degradation A), and optionally what the loss fits and what is scored, from the data as read
(`prepare_observation`, `prepare_ground_truth`: the loaded ImageData is never changed), what the corrupted input
itself scores (`observed_psnr`) and how a result is scored (`score`, `gt_psnr`, `psnr_convention`). docs/design.md
states the whole contract.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .. import history
from ..callbacks.best_iterate import BestIterate
from ..callbacks.roles import roles_of, stopping_rules
from ..checkpoint import Checkpointing
from ..config.schema import NonNegativeFloat, PositiveFloat, PositiveInt
from ..data.datamodule import ImageData
from ..errors import DIPError
from ..loop import cuda_graph
from ..loop.engine import Engine, Member
from ..metrics import Metric, psnr
from ..metrics import score as score_in
from ..nets.base import Generator, check_generator
from ..nets.inputs import make_input
from ..operators.base import Operator
from ..regularizers import Regularizer, build_regularizer
from ..speed import SpeedOptions

if TYPE_CHECKING:
    from ..callbacks.roles import IterationHook

log = logging.getLogger(__name__)

# Columns of the per-iteration history (dip_lightning/history.py); PSNRs against the ground truth are NaN without one.
HISTORY = history.COLUMNS


@dataclass
class Bookkept:
    """What after_backward makes of one iteration of one run (tensors on the device)."""

    out: torch.Tensor  # the raw output, detached, float
    output: torch.Tensor  # the running result: the averaged output with averaging on, else `out`
    psnr_gt: torch.Tensor | None  # PSNR of `out` against the ground truth (None without one)
    psnr_avg: torch.Tensor | None  # PSNR of `output` against the ground truth (None without one)
    row: torch.Tensor  # the history row (history.row: its columns by name)
    bad: torch.Tensor | None  # backtracking's decision: restore the pre-step state after the step (None: off)


class DIPTask(Engine):
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
        input_scale: PositiveFloat = 0.1,
        reg_noise_std: NonNegativeFloat = 0.0,
        reg_noise_schedule: dict[int, float] | None = None,
        exp_weight: float = 0.0,
        average_from: int | None = None,
        backtracking: bool = False,
        backtrack_drop_db: PositiveFloat = 5.0,
        backtrack_mode: str = "clean",
        backtrack_check_every: int = 1,
        backtrack_skip_every: int = 0,
        final_input: str = "clean",
        optimize_input: bool = False,
        seed: int = 0,
        noise_seed: int | None = None,
        log_every: PositiveInt = 10,
        regularizer: Regularizer | None = None,
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
        self.average_from: int | None = None
        self.use_average_from(average_from, "task.average_from")
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
        if noise_seed is not None and (
            isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or not 0 <= noise_seed < 2**64
        ):
            raise DIPError(
                f"task.noise_seed={noise_seed!r} is not valid; expected null (the run's seed) or a whole number from 0 "
                f"to {2**64 - 1} (what torch's generators take), e.g. task.noise_seed=0."
            )
        self.noise_seed = self.seed if noise_seed is None else int(noise_seed)
        self.iteration = 0  # a resumed run's: put back by load_run_state
        self.history: dict[str, list[float]] = {history.ITERATION: [], **{k: [] for k in HISTORY}}
        self.data: ImageData | None = None
        self.given_observation = False  # whether the observation was given (prepare_observation), not simulated
        self._unchanged: torch.Tensor | None = None  # backtracking: this iteration keeps the last good state
        object.__setattr__(self, "_forward", net)  # the net, or its compiled form (start_on_device); not a submodule
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
        # how many outputs the average has taken (task.average_from counts them on the device: a CUDA graph's too)
        self.register_buffer("n_averaged", torch.zeros(()))
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

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The torch optimizer over `trained_tensors` (the loop's trainable steps it; Lightning gets none)."""
        factory = getattr(self.optimizer_factory, "func", self.optimizer_factory)
        if factory is torch.optim.LBFGS:
            raise DIPError(
                "optimizer torch.optim.LBFGS re-evaluates the loss through a closure several times per step, and "
                "the DIP loop takes one gradient per iteration (averaging, backtracking, jitter and the history count "
                "iterations). The reference's LBFGS path is not supported: use optimizer=adam (its default)."
            )
        try:
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
        except ValueError as err:  # torch.optim's range checks (betas in [0, 1), eps >= 0, ...)
            if isinstance(err, DIPError):
                raise
            name = getattr(factory, "__qualname__", factory)
            keywords = getattr(self.optimizer_factory, "keywords", {})
            given = ", ".join(f"optimizer.{k}={v!r}" for k, v in keywords.items())
            raise DIPError(
                f"The optimizer {name} refuses its settings ({given}): {err}. Expected values in the ranges it takes "
                "(Adam's betas: two numbers in [0, 1), e.g. '+optimizer.betas=[0.9,0.999]'; lr, eps, weight_decay "
                ">= 0), as torch.optim's documentation of the class says."
            ) from None

    def start_on_device(self) -> None:
        """Once the task is on its device, before the first iteration (the loop calls it for every run it trains)."""
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

    # ------------------------------------------------------------------------------------ fitted by a Trainer
    def setup(self, stage: str) -> None:
        """Fitted with a data module that has not been read yet: read it and prepare the task from it (dip-run
        prepares the task itself before the fit)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.data is None and dm is not None and hasattr(dm, "load"):
            self.prepare(dm.load(self.net.size_multiple, self.observed_scale, self.net.min_size))

    def dip_members(self) -> list[Member]:
        """This task as the one run its Trainer fits: the DIP callbacks among the Trainer's (a best iterate is
        added where none is given), its loggers, a `Checkpointing` callback if one is given; the iteration count
        is the Checkpointing's, else the data module's `iterations`, capped by the Trainer's max_steps."""
        if self.data is None:
            raise DIPError(
                f"{type(self).__name__} has no image to restore: fit it with a data module "
                "(trainer.fit(task, datamodule=SingleImageDataModule(image=...))), or call task.prepare(data) first."
            )
        trainer = self.trainer
        callbacks = [c for c in trainer.callbacks if roles_of(c)]
        if not any(isinstance(c, BestIterate) for c in callbacks):
            callbacks.append(BestIterate().named("best_iterate"))
        checkpointing = next((c for c in trainer.callbacks if isinstance(c, Checkpointing)), None)
        dm = trainer.datamodule
        planned = checkpointing.iterations if checkpointing is not None else getattr(dm, "iterations", None)
        iterations = math.inf if planned is None else int(planned)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            iterations = min(iterations, trainer.max_steps)
        return [Member(self, callbacks, list(trainer.loggers), checkpointing, iterations)]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        raise DIPError(
            "trainer.fit(..., ckpt_path=...) cannot resume a DIP run: a Lightning checkpoint holds the weights but "
            "not the run's state (the optimizer, averaging, backtracking, the jitter generator, the stopping rules' "
            "choices), so the rest of the run would compute differently. A DIP run resumes from its own checkpoint: "
            "give the Trainer Checkpointing(folder, every=N) as a callback, then Checkpointing(folder, every=N, "
            "resume_from=<folder>/checkpoints/last.ckpt) to go on (dip-run: checkpoint_every=N, then resume=auto)."
        )

    @property
    def best(self) -> BestIterate | None:
        """After a fit: the best iterate (against the ground truth): best_image, best_psnr, best_step."""
        return next((c for m in self.members for c in m.callbacks if isinstance(c, BestIterate)), None)

    @torch.no_grad()
    def restored(self) -> torch.Tensor:
        """After a fit: the result, the first stopping rule's choice where one chose, else the last result
        (`final_output`). A run that diverged raises its error."""
        if 0 in self.failed:
            raise self.failed[0]
        for rule in stopping_rules(self.members[0].callbacks) if self.members else []:
            chosen = rule.stop_result(self)
            if chosen is not None:
                return chosen["image"].to(self.device)
        return self.final_output()

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

    # ------------------------------------------------------------------------------------------- scoring
    # How a result is scored against the ground truth and what else is reported and saved beside it; a task
    # with another convention (super-resolution: Y channel, border shaved) overrides these.

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

    # ----------------------------------------------------------------------- after each backward pass

    @torch.no_grad()
    def after_backward(self, out: torch.Tensor, loss: torch.Tensor, a_out: torch.Tensor, first: bool) -> Bookkept:
        """The bookkeeping between backward and the optimizer step, all on the device: PSNR against the
        observation, backtracking's decision (`bad`: restore this iteration's pre-step state after the step; the
        caller saves and restores it), output averaging, PSNRs against the ground truth, the history row."""
        out = out.detach().float()
        psnr_obs = self.fit_psnr(a_out.detach())
        bad = None
        if self.backtracking:  # a collapse: PSNR against the observation fell > drop dB below its best (or NaN)
            # (reference mode: below the last checked good iterate's, as the notebooks' psnr_last)
            bad = ~(psnr_obs >= self.best_good_psnr - self.backtrack_drop_db)
            self._unchanged = bad  # where the good iterate's PSNR (and reference mode's snapshot) stay as they are
            checked = self._checked()
            if checked is not None:
                bad = checked & bad
                self._unchanged = ~checked | bad
                self._check_count += ~bad
            kept = psnr_obs if self.backtrack_mode == "reference" else torch.maximum(self.best_good_psnr, psnr_obs)
            self.best_good_psnr.copy_(torch.where(self._unchanged, self.best_good_psnr, kept))
            self.n_backtracks += bad
        output = out
        if self.exp_weight > 0:
            if first:
                new_avg = out
            elif self.average_from is None:
                new_avg = self.out_avg * self.exp_weight + out * (1 - self.exp_weight)
            else:  # the plain mean of the outputs from iteration average_from on (the exponential one before it)
                since = self.n_averaged + 1 - self.average_from  # this output's place in the mean
                weight = torch.where(since > 0, 1 / since.clamp(min=1), 1 - self.exp_weight)
                new_avg = self.out_avg + weight * (out - self.out_avg)
            # reference mode: the average took the collapsed output before the check, as in the notebook
            skip_avg = bad is not None and self.backtrack_mode == "clean"
            self.out_avg.copy_(torch.where(bad, self.out_avg, new_avg) if skip_avg else new_avg)
            if self.average_from is not None:  # counted only where it is used: no extra op in every run's loop
                self.n_averaged += ~bad if skip_avg else 1
            output = self.out_avg
        psnr_gt = psnr_avg = None
        if self.clean is not None:
            psnr_gt = self.gt_psnr(out)
            psnr_avg = self.gt_psnr(self.out_avg) if self.exp_weight > 0 else psnr_gt
        self.last_out.copy_(out)
        gt = {} if psnr_gt is None else {history.PSNR_GT: psnr_gt, history.PSNR_GT_AVG: psnr_avg}
        row = history.row(**{history.LOSS: loss.detach(), history.PSNR_FIT: psnr_obs}, **gt)
        return Bookkept(out, output, psnr_gt, psnr_avg, row, bad)

    def use_average_from(self, value, key: str) -> None:
        """Average the outputs from iteration `value` on with their plain mean (None: the exponential average
        throughout); `key` names the setting in the error (a regulariser may set its own in place of the task's)."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise DIPError(
                f"{key}={value!r} is not valid; expected null (the exponential average throughout) or the "
                "iteration (>= 0) from which the averaged output is the plain mean of the outputs, e.g. 300."
            )
        if value is not None and self.exp_weight == 0:
            raise DIPError(
                f"{key}={value} averages the outputs from that iteration on, but task.exp_weight=0 turns output "
                f"averaging off; set task.exp_weight (e.g. 0.99, the average before that iteration) or {key}=null."
            )
        self.average_from = value

    def _checked(self) -> torch.Tensor | None:
        """Whether this iteration's PSNR is checked (0-d bool on the device): every backtrack_check_every-th and
        not every backtrack_skip_every-th, counted as the reference's `i` (which a backtracked iteration leaves
        unchanged). None with the defaults: every iteration, and no operation spent on it."""
        if self.backtrack_check_every == 1 and self.backtrack_skip_every == 0:
            return None
        if self._check_count is None:  # derived, not saved: iteration - backtracks, without a host read
            self._check_count = self.iteration - self.n_backtracks.clone()
        i = self._check_count
        checked = i % self.backtrack_check_every == 0
        if self.backtrack_skip_every:
            checked = checked & (i % self.backtrack_skip_every != 0)
        return checked

    # ---------------------------------------------------------------------------- run state and history

    #: the buffers (registered by `prepare`) that change as the run goes: part of `run_state`
    RUN_BUFFERS = ("out_avg", "last_out", "n_backtracks", "best_good_psnr", "n_averaged")

    def run_state(self) -> dict[str, Any]:
        """Everything of the task that the next iteration depends on: the iteration count, the net's weights, the
        averaged and last output and backtracking's state (RUN_BUFFERS), the jitter generator's state and the
        history. A checkpoint (checkpoint/state.py) stores it beside what the task does not own (the optimizer state and
        backtracking's snapshot, which the loop's trainable keeps; the callbacks' states; the process's RNG);
        `load_run_state` puts it back.

        The tensors are the live ones, as in `state_dict()`: save or copy them before the run goes on. A subclass
        with running state of its own (anything a resumed run would otherwise recompute differently) extends both
        methods, calling super(), under keys of its own."""
        return {
            "iteration": self.iteration,
            "net": self.net.state_dict(),
            "buffers": {name: getattr(self, name) for name in self.RUN_BUFFERS},
            "jitter_gen": self.jitter_gen.get_state(),
            "history": self.history,
            **({"z": self.z} if self.input_changes else {}),  # optimised or replaced: part of the state
        }

    def load_run_state(self, state: dict[str, Any]) -> None:
        """Put a `run_state()` back into this task, prepared (`prepare`) and on its device (`start_on_device`); the
        state's tensors may be on any device. A state that does not fit this task's net or output shape is a
        DIPError."""
        try:
            self.net.load_state_dict(state["net"])
        except RuntimeError as err:  # the run identity check catches a changed net first: a last line of defence
            raise DIPError(f"the state was written for another net ({str(err).splitlines()[0]})") from None
        for name in self.RUN_BUFFERS:
            if name == "n_averaged" and name not in state["buffers"]:  # a checkpoint of the code before it
                self.n_averaged.fill_(int(state["iteration"]) - int(state["buffers"]["n_backtracks"]))
                continue
            saved, buffer = state["buffers"][name], getattr(self, name)
            if buffer.shape != saved.shape:
                raise DIPError(
                    f"the state holds a {tuple(saved.shape)} {name} but this task makes {tuple(buffer.shape)} "
                    "(another image or crop)"
                )
            buffer.copy_(saved)
        self.iteration = int(state["iteration"])
        self.jitter_gen.set_state(state["jitter_gen"])
        self.history = history.upgrade({k: list(v) for k, v in state["history"].items()})  # older names: RENAMED
        if self.input_changes:
            if "z" not in state:
                raise DIPError(
                    "the state was written without task.optimize_input (it holds no optimised z) or without this "
                    "regularizer, which changes z"
                )
            with torch.no_grad():
                self.z.copy_(state["z"])
        self._check_count = None  # derived again from the restored iteration and backtracks

    # --------------------------------------------------------------------------------------------- chunk end
    def record_chunk(self, values: torch.Tensor, lr: Callable[[], float]) -> None:
        """Append a chunk's history rows (read to the host), after the divergence check (`lr()` names the
        learning rate in its error)."""
        n = values.shape[0]
        first = self.iteration - n
        loss = history.column(values, history.LOSS)
        if not self.backtracking and not torch.isfinite(loss).all():
            bad_at = first + int((~torch.isfinite(loss)).nonzero()[0])
            raise DIPError(
                f"The loss became non-finite (divergence) at iteration {bad_at} with optimizer lr={lr():g}. Lower "
                "optimizer.lr, or set task.backtracking=true to restore the last good weights and continue."
            )
        self.history[history.ITERATION].extend(range(first, self.iteration))
        for key in HISTORY:
            self.history[key].extend(history.column(values, key).tolist())
        self.last_chunk = {key: history.column(values, key)[-1].item() for key in HISTORY}

    # -------------------------------------------------------------------------------- collapse verdict

    #: runs shorter than this are not judged by `collapse` (a smoke test's first iterations prove nothing)
    JUDGED_AFTER = 100
    #: whether PSNR against the observation measures the fit (not for feature inversion: its target is features)
    judges_fit = True
    #: the least gain (dB, best iterate against the first output) of a run that fitted its observation at all
    FITTED_DB = 3.0

    @torch.no_grad()
    def collapse(self, result: torch.Tensor) -> str | None:
        """Why `result` is not a restoration, judged against the observation (no ground truth needed); None if it
        is one. A collapsed run: the result is not finite; or the last tenth of the run fits the observation
        `backtrack_drop_db` worse than its best iterate did (a divergence that stayed); or no iterate fitted it
        FITTED_DB better than the untrained net's first output (it never worked); or the result fits it no better
        than that first output."""
        result = result.to(self.observed.device)
        loss, a_result = self.operator.loss(result, self.observed)
        if not torch.isfinite(loss):
            return f"the result's loss against the observation is {float(loss)}"
        fit = [v for v in self.history[history.PSNR_FIT] if math.isfinite(v)]
        if not self.judges_fit or len(self.history[history.PSNR_FIT]) < self.JUDGED_AFTER or not fit:
            return None
        tail = sorted(self.history[history.PSNR_FIT][-max(len(fit) // 10, 1) :])
        median, best = tail[len(tail) // 2], max(fit)
        if not median >= best - self.backtrack_drop_db:  # NaN counts as collapsed
            return (
                f"over the last tenth of the run the output fitted the observation at {median:.2f} dB "
                f"(median PSNR against it), {best - median:.1f} dB below the best iterate's {best:.2f} dB"
            )
        start, now = self.history[history.PSNR_FIT][0], float(self.fit_psnr(a_result))
        if best - start < self.FITTED_DB:
            return (
                f"it never fitted the observation: its best iterate reached {best:.2f} dB against it, "
                f"{best - start:.1f} dB above the untrained net's first output ({start:.2f} dB), where DIP gains "
                f"far more in {self.JUDGED_AFTER} iterations (a learning rate far too low fits nothing either)"
            )
        if now <= start:
            return (
                f"the result fits the observation at {now:.2f} dB, no better than the untrained net's first "
                f"output ({start:.2f} dB)"
            )
        return None


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
