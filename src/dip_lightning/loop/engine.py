"""The DIP loop as a LightningModule: `Engine`, the one base that a task (one run: tasks/base.DIPTask) and a pack
(K runs: `Pack`) share.

One Lightning step runs a chunk of DIP iterations (the batch is the chunk size) of K >= 1 runs
(loop/iteration.py). At the end of each chunk, the one host read: every run's history rows are checked for
divergence and logged to that run's own loggers, each run's stopping rules are asked whether it should stop
(each run stops alone), its run hooks (progress, snapshots) run, and its checkpoint is written when due or when a
signal came. The loop ends when every run has stopped.

What a run brings to the loop besides its task is a `Member`: its DIP callbacks, loggers, checkpointing and
iteration count. A task fitted by a Trainer makes its own from the Trainer's callbacks and loggers; a pack is given
one per run. Finishing a run (its outputs, metrics.json) is not the loop's job: dip_lightning.run does it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ..callbacks.roles import iteration_hooks, run_hooks, stopping_rules
from ..checkpoint import Checkpointing, Interrupted, SignalGuard, checkpoint_state, logger_ids, restore_checkpoint
from ..errors import DIPError
from ..history import COLUMNS, log_history
from .iteration import Iterations
from .trainable import SingleNet

log = logging.getLogger("dip_lightning")


@dataclass
class Member:
    """One run as the loop trains it: its task and what goes with it. A RunHook gets it (`run.task`,
    `run.loggers`, ...)."""

    task: Any  # a tasks.base.DIPTask, prepared
    callbacks: list = field(default_factory=list)  # its DIP callbacks (callbacks.roles): hooks, rules, run hooks
    loggers: list = field(default_factory=list)  # where its curves go (Lightning loggers)
    checkpointing: Checkpointing | None = None  # its checkpoint file (None: no checkpoints, no resume)
    iterations: float = math.inf  # its iteration count
    label: str | None = None  # how progress lines name it: None alone; a pack's runs by their folder's name

    @property
    def run_dir(self) -> Path | None:
        return self.checkpointing.run_dir if self.checkpointing is not None else None


class Engine(pl.LightningModule):
    """The loop over the runs `dip_members()` returns (built when the fit starts). After the fit, `members` holds
    them, with the state their callbacks kept (best iterate, stopping rules)."""

    def __init__(self, batched: bool | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.batched = batched  # vmap for a pack; None: on a GPU for two runs or more (set when the device is known)
        self.members: list[Member] = []
        self.failed: dict[int, Exception] = {}
        self.core: Iterations | None = None
        self.signals = SignalGuard()
        self.loop_seconds = 0.0
        self.start_iterations: list[int] = []
        self._optimizer = None
        self._hooked: list[int] = []  # the runs whose run hooks have started
        self._threads: int | None = None  # torch's thread count, while a CPU pack runs on its own threads
        self._guarded = False  # whether the signal handlers are installed (runs with checkpoints only)

    def dip_members(self) -> list[Member]:
        """The runs this module trains, each with its callbacks, loggers and checkpointing."""
        raise NotImplementedError

    @property
    def dip_tasks(self) -> list:
        return [m.task for m in self.members]

    def configure_optimizers(self):
        return None  # the trainable owns the optimizer (built in on_train_start)

    def on_fit_start(self) -> None:
        self.members = self.dip_members()
        self.failed, self._hooked = {}, []
        tasks = self.dip_tasks
        # a single run's optimizer first, as Lightning builds one before on_fit_start: its refusals come first
        self._optimizer = tasks[0].make_optimizer() if len(tasks) == 1 else None
        for task in tasks:
            task.start_on_device()
        if self.batched is None:  # a pack of one through vmap is slower than unpacked (RESULTS.md, "Packed runs")
            self.batched = self.device.type == "cuda" and len(tasks) > 1

    def on_train_start(self) -> None:
        # here, not in on_fit_start: the Trainer sets every gradient to None in between (its _run_stage), and the
        # stacked nets keep views of the pack's gradient buffer in each p.grad
        trainable = self._trainable()
        for k, m in enumerate(self.members):
            state = m.checkpointing.take_resume_state() if m.checkpointing is not None else None
            if state is not None:
                restore_checkpoint(m.task, state, m.checkpointing.resume_from, trainable, k, m.callbacks)
                log.info("resumed %s from %s at iteration %d", m.run_dir, m.checkpointing.resume_from, m.task.iteration)
            if m.checkpointing is not None:
                m.checkpointing.start(m.task.iteration)
        limits = [m.iterations for m in self.members]
        hooks = [iteration_hooks(m.callbacks) for m in self.members]
        self.core = Iterations(self.dip_tasks, trainable, self.dip_tasks[0].speed, limits, hooks)
        self.start_iterations = [t.iteration for t in self.dip_tasks]
        for k, m in enumerate(self.members):
            for hook in run_hooks(m.callbacks):
                hook.on_run_start(m)
            self._hooked.append(k)
        if any(m.checkpointing is not None for m in self.members):  # a signal ends the run with a checkpoint
            self.guard()
        self._loop_start = time.perf_counter()

    def guard(self) -> None:
        """Catch SIGTERM and Ctrl-C from now on and act on them at the next iteration (once installed, it stays
        until `close`). dip-run calls it before the Trainer starts, so that a signal during Lightning's set-up is
        the run's too (Lightning would turn a Ctrl-C there into exit 1)."""
        if not self._guarded:
            self.signals.install()
            self._guarded = True

    def _trainable(self):
        tasks = self.dip_tasks
        if len(tasks) == 1:
            return SingleNet(tasks[0], self._optimizer)
        from .stacked import StackedNets

        settings = [adam_settings(t) for t in tasks]
        speed = tasks[0].speed
        workers = 1
        if not self.batched and self.device.type == "cpu":  # the runs on the CPU's threads, one intra-op thread each
            workers = min(len(tasks), torch.get_num_threads())
            if workers > 1:
                self._threads = torch.get_num_threads()
                torch.set_num_threads(1)
        return StackedNets(
            [t.net for t in tasks],
            [s["lr"] for s in settings],
            betas=settings[0]["betas"],
            eps=settings[0]["eps"],
            weight_decay=settings[0]["weight_decay"],
            batched=self.batched,
            forwards=[t._forward for t in tasks],  # each run's compiled net when compile is on
            compile_mode=(speed.compile or None) if self.batched else None,
            capturable=speed.cuda_graph,
            workers=workers,
        )

    def on_train_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.loop_seconds = time.perf_counter() - self._loop_start  # the DIP loop alone, without Trainer set-up

    def teardown(self, stage: str) -> None:
        self.close()

    def close(self) -> None:
        """After the loop, however it ended: the run hooks' ends, the signal handlers put back (once)."""
        if self._guarded:
            self.signals.restore()
            self._guarded = False
        if self.core is not None:
            self.core.trainable.close()
        if self._threads is not None:  # a CPU pack ran its runs on threads of one intra-op thread each
            torch.set_num_threads(self._threads)
            self._threads = None
        for k in self._hooked:
            for hook in run_hooks(self.members[k].callbacks):
                hook.on_run_end(self.members[k])
        self._hooked = []

    # ---------------------------------------------------------------------------------------------- the loop
    def training_step(self, batch: Any, batch_idx: int) -> None:
        n, core = int(batch), self.core
        hist = torch.full((len(self.members), n, len(COLUMNS)), math.nan, device=self.device)
        ran = [0] * len(self.members)
        signals = self.signals
        for i in range(n):
            # a caught SIGTERM / Ctrl-C ends the chunk here (a host attribute, no device sync): _end_chunk writes
            # the checkpoint at this iteration and raises Interrupted, however long the chunk was
            if not any(core.running) or signals.caught is not None:
                break
            for k in core.run(hist, i):
                ran[k] += 1
        self._end_chunk(hist, ran)

    def _end_chunk(self, hist: torch.Tensor, ran: list[int]) -> None:
        """The one host sync per chunk."""
        values, core = hist.cpu(), self.core
        # after a signal the checkpoint comes first and the chunk is not logged: SLURM signals every process of a
        # preempted job, so the loggers' helper processes (W&B's service) may be gone already
        signalled = self.signals.caught is not None
        for k, m in enumerate(self.members):
            if ran[k]:
                try:
                    m.task.record_chunk(values[k, : ran[k]], lambda k=k: core.trainable.lr_of(k))
                except DIPError as err:  # this run diverged: it fails alone, the others go on
                    self.failed[k] = err
                    core.stop(k)
                    continue
                if not signalled:
                    log_history(m.loggers, m.task.history, m.task.log_every, last=ran[k])
            if core.running[k] and any(rule.should_stop() for rule in stopping_rules(m.callbacks)):
                core.stop(k)
            if ran[k] and not signalled:
                for hook in run_hooks(m.callbacks):
                    hook.on_chunk_end(m)
        self._checkpoints()
        if not any(core.running):
            self.trainer.should_stop = True

    def _checkpoints(self) -> None:
        caught, core = self.signals.caught, self.core
        for k, m in enumerate(self.members):
            if k in self.failed or m.checkpointing is None:
                continue
            if (caught is not None and core.running[k]) or m.checkpointing.due(m.task.iteration):
                state = checkpoint_state(m.task, core.trainable, k, m.callbacks)
                m.checkpointing.save(state, logger_ids(m.loggers))
        if caught is not None and any(core.running):
            k = next(k for k, on in enumerate(core.running) if on)
            m = self.members[k]
            path = m.checkpointing.path if m.checkpointing is not None else None
            raise Interrupted(caught, m.task.iteration, path, m.run_dir)


class Pack(Engine):
    """K runs trained together (a launcher=packed job group, an ensemble's members): each run keeps its own task,
    callbacks, loggers and checkpoint; the nets are stacked (loop/stacked.py) and stepped together."""

    def __init__(self, members: list[Member], batched: bool | None = None):
        super().__init__(batched)
        self.given = list(members)
        self.tasks = nn.ModuleList([m.task for m in members])  # Lightning moves every run's buffers and net

    def dip_members(self) -> list[Member]:
        return self.given


def adam_settings(task) -> dict[str, Any]:
    """A task's Adam settings (lr, betas, eps, weight_decay) from its optimizer factory (a partial of
    torch.optim.Adam, as the config builds it): what the stacked nets' own Adam needs."""
    kw = dict(getattr(task.optimizer_factory, "keywords", {}) or {})
    return {
        "lr": float(kw.get("lr", 1e-3)),
        "betas": tuple(float(b) for b in kw.get("betas", (0.9, 0.999))),
        "eps": float(kw.get("eps", 1e-8)),
        "weight_decay": float(kw.get("weight_decay", 0.0)),
    }
