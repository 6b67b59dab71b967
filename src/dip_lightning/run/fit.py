"""Training prepared runs: one run fits its task itself, several (a pack, an ensemble's members) one Pack module
(loop/engine.py); each run gets its own loggers, and each is finished as a job of its own (run/results.py)."""

from __future__ import annotations

import logging
import time

from .. import quiet  # noqa: F401  (no Lightning or W&B banners in any process that trains: a sweep's workers too)
from ..callbacks.roles import lightning_callbacks
from ..checkpoint import Interrupted, SignalGuard
from ..config.compose import build
from ..errors import DIPError
from ..loop.engine import Member, Pack
from .loggers import close_loggers, log_final_panel, run_loggers, set_summary, to_plain
from .prepare import PreparedRun
from .report import report
from .results import finish_run

log = logging.getLogger("dip_lightning")


def fit(trainer, module, **data) -> None:
    """trainer.fit; torch's refusal of an op without a deterministic CUDA kernel becomes the one-paragraph error."""
    try:
        trainer.fit(module, **data)
        if trainer.interrupted:  # Lightning ends fit quietly on a Ctrl-C in the loop: the run did not finish
            raise KeyboardInterrupt
    except RuntimeError as err:
        if "deterministic implementation" not in str(err):
            raise
        raise DIPError(
            f"trainer.deterministic=true, but the run uses an operation that has no deterministic CUDA kernel "
            f"in this torch version (torch: {str(err).splitlines()[0]}). Set trainer.deterministic=false, or choose "
            "net options that avoid that operation (net.pad, net.upsample_mode)."
        ) from None


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def trainer_and_module(runs: list[PreparedRun], loggers: list[list], batched: bool | None):
    """The Trainer and the module it fits: one run's task itself, with its callbacks (DIP roles, plain Lightning
    callbacks, its Checkpointing) and loggers given to the Trainer; several runs one Pack, each run's own callbacks
    and loggers in its Member (a pack's Trainer has none: they would see K runs)."""
    first = runs[0]
    root = str(first.run_dir)
    if len(runs) == 1:
        callbacks = [*first.callbacks, first.checkpointing]
        trainer = build(first.cfg.trainer, callbacks=callbacks, logger=loggers[0] or False, default_root_dir=root)
        return trainer, first.task
    members = [
        Member(r.task, r.callbacks, lg, r.checkpointing, int(r.cfg.iterations), label=r.run_dir.name)
        for r, lg in zip(runs, loggers)
    ]
    for r in runs:
        if lightning_callbacks(r.callbacks):  # run/packs.pack_key never packs such a run
            raise DIPError(f"{r.run_dir}: a plain Lightning callback cannot run in a pack (it would see K runs)")
    trainer = build(first.cfg.trainer, callbacks=[], logger=False, default_root_dir=root)
    return trainer, Pack(members, batched)


def train_runs(runs: list[PreparedRun], batched: bool | None = None) -> list[dict | Exception]:
    """Train `runs` (several: one pack_key) in one loop, each with its loggers live, and finish each as its own
    job: its metrics, or the exception that ended it (a DIPError; the job lifecycle, run/job.py, records it).
    Interrupted (a signal) is raised once the finished runs are finished."""
    opened: list[list] = []
    held: SignalGuard | None = None  # after the loop: a signal waits until the outputs are written
    handlers = SignalGuard.handlers()  # from before the Trainer (Lightning's own stay installed after its fit)
    results: list[dict | Exception | None] = [None] * len(runs)
    interrupted: Interrupted | None = None
    try:
        for r in runs:
            opened.append(run_loggers(r))
        trainer, module = trainer_and_module(runs, opened, batched)
        module.guard()  # every run here has its checkpointing: a signal from now on ends it with a checkpoint
        dm = runs[0].datamodule
        total = max(int(r.cfg.iterations) - r.checkpointing.start_iteration for r in runs)
        start = time.perf_counter()
        try:
            # a chunk ends at every run's checkpoint_every multiple: its checkpoint is written at that iteration
            stops = [(r.checkpointing.start_iteration, r.checkpointing.every) for r in runs]
            fit(trainer, module, train_dataloaders=dm.schedule(total, checkpoints=stops))
        except Interrupted as err:
            interrupted = err
        finally:
            module.close()
            held = SignalGuard(then="the outputs are written first, then it is acted on")
            held.install(restore_to=handlers)
            if module.signals.caught is not None and interrupted is None:  # came after the last chunk's check
                held.caught = module.signals.caught
        wall = time.perf_counter() - start
        seconds = module.loop_seconds or wall
        device = device_name(trainer.strategy.root_device)
        ran = [t.iteration - s for t, s in zip(module.dip_tasks, module.start_iterations)]
        for k, r in enumerate(runs):
            if k in module.failed:
                results[k] = module.failed[k]
                continue
            if interrupted is not None and module.core.running[k]:
                continue  # its checkpoint is written; it goes on when resumed
            share = ran[k] / max(sum(ran), 1)  # a pack's loop time, shared by iterations run
            extra_metrics = {"pack": len(runs), "pack_seconds": round(seconds, 3)} if len(runs) > 1 else None
            try:
                metrics = finish_run(r, seconds * share, wall * share, device, extra=extra_metrics)
                config = {**to_plain(r.cfg), "choices": dict(r.names.choices)}
                set_summary(opened[k], metrics, step=r.task.iteration - 1, config=config)  # the last iteration's
                log_final_panel(opened[k], r.run_dir, step=r.task.iteration)
                report(metrics, r.run_dir, r)
                results[k] = metrics
            except DIPError as err:
                results[k] = err
    except BaseException:
        for loggers in opened:
            close_loggers(loggers, failed=True, discard=True)
        if held is not None:
            held.restore()
        raise
    for loggers, result in zip(opened, results):
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
