"""The DIP loop as the one LightningModule the Trainer fits, for a single run, a pack and a seed ensemble alike.

One Lightning step runs a chunk of DIP iterations (the batch is the chunk size) of K >= 1 runs
(loop/iteration.py). At the end of each chunk, the one host read: every run's history rows are checked for
divergence and logged to that run's own loggers, each run's stopping rules are asked whether it should stop
(each run stops alone), its run hooks (progress, snapshots) run, and its checkpoint is written when due or when a
signal came. The loop ends when every run has stopped. `train_runs` then finishes each run as its own job: its
outputs, collapse check and metrics.json (run_results.finish_run).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ..callbacks.roles import iteration_hooks, lightning_callbacks, run_hooks, stopping_rules
from ..checkpoint import Interrupted, SignalGuard, checkpoint_state, restore_checkpoint
from ..errors import DIPError
from ..history import COLUMNS
from ..loggers import log_history
from .iteration import Iterations
from .trainable import SingleNet

log = logging.getLogger("dip_lightning")


class DIPLoop(pl.LightningModule):
    def __init__(self, runs: list, batched: bool | None = None):
        super().__init__()
        self.automatic_optimization = False
        self.runs = runs
        self.tasks = nn.ModuleList([r.task for r in runs])  # Lightning moves every run's buffers and net
        self.failed: dict[int, Exception] = {}
        self.batched = batched  # vmap for a pack; None: on a GPU for two runs or more (set when the device is known)
        self.core: Iterations | None = None
        self.signals = SignalGuard()
        self.loop_seconds = 0.0
        self._hooked: list[int] = []  # the runs whose run hooks have started
        self._threads: int | None = None  # torch's thread count, while a CPU pack runs on its own threads

    def configure_optimizers(self):
        return None  # the trainable owns the optimizer (built in on_train_start)

    def on_fit_start(self) -> None:
        # a single run's optimizer first, as Lightning builds one before on_fit_start: its refusals come first
        self._optimizer = self.tasks[0].configure_optimizers() if len(self.runs) == 1 else None
        for task in self.tasks:
            task.on_fit_start()
        if self.batched is None:  # a pack of one through vmap is slower than unpacked (RESULTS.md, "Packed runs")
            self.batched = self.device.type == "cuda" and len(self.runs) > 1

    def on_train_start(self) -> None:
        # here, not in on_fit_start: the Trainer sets every gradient to None in between (its _run_stage), and the
        # stacked nets keep views of the pack's gradient buffer in each p.grad
        trainable = self._trainable()
        for k, r in enumerate(self.runs):
            state = r.checkpointing.resume_state
            if state is not None:
                restore_checkpoint(r.task, state, r.checkpointing.resume_from, trainable, k, r.callbacks)
                log.info("resumed %s from %s at iteration %d", r.run_dir, r.checkpointing.resume_from, r.task.iteration)
                r.checkpointing.resume_state = None  # free the memory
            r.checkpointing.start(r.task.iteration)
        limits = [int(r.cfg.iterations) for r in self.runs]
        hooks = [iteration_hooks(r.callbacks) for r in self.runs]
        self.core = Iterations(list(self.tasks), trainable, self.runs[0].speed, limits, hooks)
        self.start_iterations = [t.iteration for t in self.tasks]
        for k, r in enumerate(self.runs):
            for hook in run_hooks(r.callbacks):
                hook.on_run_start(r)
            self._hooked.append(k)
        self.signals.install()
        self._loop_start = time.perf_counter()

    def _trainable(self):
        if len(self.runs) == 1:
            return SingleNet(self.tasks[0], self._optimizer)
        from ..packing.stacked import StackedNets

        opt, speed = self.runs[0].cfg.optimizer, self.runs[0].speed
        workers = 1
        if not self.batched and self.device.type == "cpu":  # the runs on the CPU's threads, one intra-op thread each
            workers = min(len(self.runs), torch.get_num_threads())
            if workers > 1:
                self._threads = torch.get_num_threads()
                torch.set_num_threads(1)
        return StackedNets(
            [t.net for t in self.tasks],
            [float(r.cfg.optimizer.lr) for r in self.runs],
            betas=tuple(opt.get("betas", (0.9, 0.999))),
            eps=float(opt.get("eps", 1e-8)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
            batched=self.batched,
            forwards=[t._forward for t in self.tasks],  # each run's compiled net when compile is on
            compile_mode=(speed.compile or None) if self.batched else None,
            capturable=speed.cuda_graph,
            workers=workers,
        )

    def on_train_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.loop_seconds = time.perf_counter() - self._loop_start  # the DIP loop alone, without Trainer set-up

    def close(self) -> None:
        """After the loop, however it ended: the run hooks' ends, the signal handlers put back."""
        self.signals.restore()
        if self.core is not None:
            self.core.trainable.close()
        if self._threads is not None:  # a CPU pack ran its runs on threads of one intra-op thread each
            torch.set_num_threads(self._threads)
            self._threads = None
        for k in self._hooked:
            for hook in run_hooks(self.runs[k].callbacks):
                hook.on_run_end(self.runs[k])
        self._hooked = []

    # ---------------------------------------------------------------------------------------------- the loop
    def training_step(self, batch: Any, batch_idx: int) -> None:
        n, core = int(batch), self.core
        hist = torch.full((len(self.tasks), n, len(COLUMNS)), math.nan, device=self.device)
        ran = [0] * len(self.tasks)
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
        for k, r in enumerate(self.runs):
            if ran[k]:
                try:
                    r.task.record_chunk(values[k, : ran[k]], lambda k=k: core.trainable.lr_of(k))
                except DIPError as err:  # this run diverged: it fails alone, the others go on
                    self.failed[k] = err
                    core.stop(k)
                    continue
                if not signalled:
                    log_history(r.loggers, r.task.history, r.task.log_every, last=ran[k])
            if core.running[k] and any(rule.should_stop() for rule in stopping_rules(r.callbacks)):
                core.stop(k)
            if ran[k] and not signalled:
                for hook in run_hooks(r.callbacks):
                    hook.on_chunk_end(r)
        self._checkpoints()
        if not any(core.running):
            self.trainer.should_stop = True

    def _checkpoints(self) -> None:
        caught, core = self.signals.caught, self.core
        for k, r in enumerate(self.runs):
            if k in self.failed:
                continue
            if (caught is not None and core.running[k]) or r.checkpointing.due(r.task.iteration):
                r.checkpointing.save(checkpoint_state(r.task, core.trainable, k, r.callbacks))
        if caught is not None and any(core.running):
            k = next(k for k, on in enumerate(core.running) if on)
            r = self.runs[k]
            raise Interrupted(caught, r.task.iteration, r.checkpointing.path, r.run_dir)


def train_runs(runs: list, batched: bool | None = None) -> list[dict | Exception]:
    """Train `runs` (train.PreparedRun; several: one pack_key) in one loop, each with its loggers live, and finish
    each as its own job: its metrics, or the exception that ended it (a DIPError; the caller raises it or writes
    it to the job's error.json). Interrupted (a signal) is raised once the finished runs are finished."""
    from ..loggers import close_loggers, log_final_panel, run_loggers, set_summary
    from ..run_report import report
    from ..run_results import finish_run
    from ..train import build, device_name, fit

    for r in runs:
        r.pack_size = len(runs)
    opened: list[tuple[Any, list]] = []
    held: SignalGuard | None = None  # after the loop: a signal waits until the outputs are written
    handlers = SignalGuard.handlers()  # from before the Trainer (Lightning's own stay installed after its fit)
    results: list[dict | Exception | None] = [None] * len(runs)
    interrupted: Interrupted | None = None
    try:
        for r in runs:
            r.loggers = run_loggers(r)
            opened.append((r, r.loggers))
        loop = DIPLoop(runs, batched)
        extra = lightning_callbacks(runs[0].callbacks) if len(runs) == 1 else []
        trainer = build(runs[0].cfg.trainer, callbacks=extra, logger=False, default_root_dir=str(runs[0].run_dir))
        dm = runs[0].datamodule
        total = max(int(r.cfg.iterations) - r.checkpointing.start_iteration for r in runs)
        start = time.perf_counter()
        try:
            # a chunk ends at every run's checkpoint_every multiple: its checkpoint is written at that iteration
            stops = [(r.checkpointing.start_iteration, r.checkpointing.every) for r in runs]
            schedule = dm.schedule(total, checkpoints=stops)
            fit(trainer, loop, train_dataloaders=schedule)
        except Interrupted as err:
            interrupted = err
        finally:
            loop.close()
            held = SignalGuard(then="the outputs are written first, then it is acted on")
            held.install(restore_to=handlers)
            if loop.signals.caught is not None and interrupted is None:  # came after the last chunk's check
                held.caught = loop.signals.caught
        wall = time.perf_counter() - start
        seconds = loop.loop_seconds or wall
        device = device_name(trainer.strategy.root_device)
        ran = [t.iteration - s for t, s in zip(loop.tasks, loop.start_iterations)]
        for k, r in enumerate(runs):
            if k in loop.failed:
                results[k] = loop.failed[k]
                continue
            if interrupted is not None and loop.core.running[k]:
                continue  # its checkpoint is written; it goes on when resumed
            share = ran[k] / max(sum(ran), 1)  # a pack's loop time, shared by iterations run
            extra_metrics = {"pack": len(runs), "pack_seconds": round(seconds, 3)} if len(runs) > 1 else None
            try:
                metrics = finish_run(r, seconds * share, wall * share, device, extra=extra_metrics)
                set_summary(r.loggers, metrics, step=r.task.iteration - 1)  # the last iteration's step
                log_final_panel(r.loggers, r.run_dir, step=r.task.iteration)
                report(metrics, r.run_dir, r)
                results[k] = metrics
            except DIPError as err:
                results[k] = err
    except BaseException:
        for r, loggers in opened:
            close_loggers(loggers, failed=True, discard=True)
        if held is not None:
            held.restore()
        raise
    for (r, loggers), result in zip(opened, results):
        if result is None:  # interrupted: its logs so far stay beside its checkpoint
            close_loggers(loggers, failed=True)
        else:
            close_loggers(loggers, failed=isinstance(result, Exception), discard=isinstance(result, Exception))
    if interrupted is not None:
        held.restore()  # Interrupted says it
        raise interrupted
    held.restore()
    held.deliver()
    return results
