"""The run's state in a checkpoint: what the loop writes (task, optimizer, RNG, on-device callbacks), what a resume
must match (the run's identity, the callbacks), putting it back, and `Checkpointing`, one run's checkpoint file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..errors import DIPError
from .file import CHECKPOINT, FORMAT, first_line, load_checkpoint, save_checkpoint
from .identity import FORCE, SOURCE, VERSION, differences

log = logging.getLogger("dip_lightning")


def check_resume(state: dict[str, Any], path: Path, identity: dict[str, str], iterations: int) -> None:
    """Refuse to resume a checkpoint of another run, one written by other code (unless the identity's FORCE flag,
    resume_force=true, says to accept it), or one that is already past `iterations`."""
    code = (VERSION, SOURCE)
    recorded = {k: v for k, v in state["identity"].items() if k != FORCE}
    current = {k: v for k, v in identity.items() if k != FORCE}
    diff = differences(
        {k: v for k, v in recorded.items() if k not in code}, {k: v for k, v in current.items() if k not in code}
    )
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise DIPError(
            f"resume={str(path)!r}: the checkpoint was written by a different run, and continuing it would report "
            f"that run's state as this one's result. What differs: {shown}. Resume with the overrides of the "
            f"interrupted run (its folder's .hydra/overrides.yaml lists them), or start a new run without resume=. "
            "Only iterations (upwards), chunk, logger, tags, callbacks other than stopping rules (early_stopping, or a "
            "rule under any other key), checkpoint_every, cpu_threads, trainer, channels_last, compile and image "
            "paths (not their pixels) may change on resume."
        )
    if current and any(current.get(k) != recorded.get(k) for k in code):
        what = "; ".join(
            f"{name} {recorded.get(k, '(not recorded)')} vs {current.get(k, '(not recorded)')}"
            for k, name in ((VERSION, "dip_lightning version"), (SOURCE, "source code hash"))
            if recorded.get(k) != current.get(k)
        )
        if identity.get(FORCE) == "True":
            log.warning("resume_force=true: resuming %s, written by other code (%s, checkpoint vs now)", path, what)
        else:
            raise DIPError(
                f"resume={str(path)!r}: the checkpoint was written by other code than this run's ({what}: the "
                "checkpoint's vs this run's; the hash covers the package's .py files that shape a run), so the "
                "rest of the run could compute differently from its start, and the result would be neither "
                "version's. Resume with the code that wrote it, start again without resume=, or pass "
                "resume_force=true to accept the difference."
            )
    done = int(state["iteration"])
    if iterations < done:
        raise DIPError(
            f"resume={str(path)!r}: the checkpoint is at iteration {done} but iterations={iterations}; a "
            f"resumed run can only go further: set iterations >= {done}."
        )


def _to(obj: Any, device: torch.device) -> Any:
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj


def _stateful(callbacks) -> dict[str, Any]:
    """The callbacks whose running state lives on the device (best iterate, stoppers), by their name in the config
    (`callbacks.<name>`, set by dip-run): two rules of one class keep their own state. A callback built outside the
    config goes by its class name."""
    from ..callbacks.roles import iteration_hooks

    stateful = iteration_hooks(callbacks)
    names = [c.config_name or type(c).__name__ for c in stateful]  # every IterationHook has one (roles.Role)
    if len(set(names)) != len(names):
        raise DIPError(
            f"Two on-device callbacks share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}; "
            "their checkpoint states would collide. Give each its own key under callbacks."
        )
    return dict(zip(names, stateful))


def checkpoint_state(task, trainable, k: int, callbacks) -> dict[str, Any]:
    """The checkpoint of `task` (run k of `trainable`, loop/trainable.py: its optimizer state and backtracking
    snapshot, in the unpacked format) and its on-device `callbacks`, without the run's identity. "iteration" repeats
    the task's, for readers that have no task (check_resume, tools)."""
    snapshot = trainable.snapshot_row(k)
    return {
        "format": FORMAT,
        "iteration": task.iteration,
        "image": task.data.name if task.data is not None else None,
        "task": {**task.run_state(), "snapshot": snapshot},
        "optimizer": trainable.optimizer_state(k),
        "torch_rng": torch.get_rng_state(),
        "callbacks": {name: c.state_dict() for name, c in _stateful(callbacks).items()},
    }


def restore_checkpoint(task, state: dict[str, Any], path: Path, trainable, k: int, callbacks) -> None:
    """Put a checkpoint's state back into `task`, run k of `trainable` and the run's `callbacks`: the run's
    on-device callbacks (best iterate, stopping rules) must be the checkpoint's, name for name."""
    stateful = _stateful(callbacks)
    _check_callbacks(state, path, stateful)
    try:
        task.load_run_state(state["task"])
        trainable.load_optimizer_state(k, state["optimizer"])
        trainable.load_snapshot_row(k, state["task"].get("snapshot"))
        torch.set_rng_state(state["torch_rng"])
        for name, callback in stateful.items():
            callback.load_state_dict(_to(state["callbacks"][name], task.device))
    except torch.OutOfMemoryError:
        raise
    except DIPError as err:
        raise DIPError(
            f"The checkpoint {str(path)!r} does not fit this run: {err}. Resume with the overrides of the "
            "interrupted run."
        ) from None
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise DIPError(
            f"The checkpoint {str(path)!r} does not fit this run, or it is damaged: putting its state back failed "
            f"({type(err).__name__}: {first_line(err)}). Resume with the overrides of the interrupted run, from "
            "an earlier checkpoint, or start again without resume=."
        ) from None


def _check_callbacks(state: dict[str, Any], path: Path, stateful: dict[str, Any]) -> None:
    """Refuse a resume whose on-device callbacks are not the checkpoint's: a stopping rule added would judge only
    the iterations from here on (self-validation would hold out its pixels from here on), one removed would drop
    what it chose so far."""
    saved, now = set(state["callbacks"]), set(stateful)
    if saved == now:
        return
    parts = []
    if now - saved:
        parts.append(
            f"{', '.join(sorted(now - saved))} would start at iteration {state['iteration']}, without the "
            "iterations before"
        )
    if saved - now:
        parts.append(f"{', '.join(sorted(saved - now))} of the checkpoint would be dropped, with what it chose so far")
    raise DIPError(
        f"The checkpoint {str(path)!r} holds the running state of the callbacks {sorted(saved)} (best iterate, "
        f"stopping rules) and this run has {sorted(now)}: {'; '.join(parts)}. Resume with the callbacks of the "
        "interrupted run (its folder's .hydra/overrides.yaml lists them), or start again without resume=."
    )


def logger_ids(loggers: list) -> dict[str, str]:
    """The ids of the loggers' runs that a resume continues (W&B's run id), by kind; a checkpoint keeps them."""
    return {"wandb": str(lg.version) for lg in loggers if type(lg).__name__ == "WandbLogger" and lg.version}


class Checkpointing(pl.Callback):
    """One run's checkpoint file: where it goes, how often (`every`), what it must match (`identity`), and the state
    it resumes from (read and checked here, before anything runs; the loop puts it back). A Lightning callback: a
    task fitted by a Trainer finds it among the Trainer's callbacks (`Trainer(callbacks=[Checkpointing(folder,
    every=100)])`, and `resume_from=` a checkpoint file to go on from it)."""

    def __init__(
        self,
        run_dir: Path,
        every: int | None = None,
        resume_from: Path | None = None,
        identity: dict[str, str] | None = None,
        iterations: int | None = None,
    ):
        if every is not None and int(every) < 1:
            raise DIPError(f"checkpoint_every={every!r} is not valid; expected null (off) or a positive number.")
        self.path = Path(run_dir) / CHECKPOINT
        self.run_dir = Path(run_dir)
        self.every = int(every) if every is not None else None
        self.identity = identity or {}
        self.resume_from = resume_from
        self.resume_state = load_checkpoint(resume_from) if resume_from is not None else None
        if self.resume_state is not None:
            check_resume(self.resume_state, resume_from, self.identity, iterations or 0)
        # where this process starts (kept: the resume state itself is freed once it is restored)
        self.start_iteration = int(self.resume_state["iteration"]) if self.resume_state is not None else 0
        # the ids of the loggers' runs (W&B's), kept in every checkpoint: a resume continues the same W&B run
        loggers = self.resume_state.get("loggers") if self.resume_state is not None else None
        self.resumed_logger_ids: dict[str, str] = (
            {str(k): str(v) for k, v in loggers.items()} if isinstance(loggers, dict) else {}
        )
        self.iterations = iterations
        # the loop time and the processes of the run before this process (a resume: a requeued SLURM job), kept in
        # every checkpoint: metrics.json's total_seconds and processes count the whole run
        elapsed = self.resume_state.get("elapsed") if self.resume_state is not None else None
        self.earlier_seconds, self.earlier_processes = _elapsed(elapsed)
        if self.resume_state is not None:  # one written before "elapsed" was kept: its process's time is unknown
            self.earlier_processes = max(self.earlier_processes, 1)
        self._next: int | None = None
        self._began: float | None = None

    def take_resume_state(self) -> dict[str, Any] | None:
        """The state to resume from, once: the loop puts it back and the memory is freed."""
        state, self.resume_state = self.resume_state, None
        return state

    def start(self, iteration: int) -> None:
        if self._began is None:  # the loop starts: this process's time counts from here
            self._began = time.perf_counter()
        self._next = ((iteration // self.every) + 1) * self.every if self.every else None

    def elapsed(self) -> dict[str, Any]:
        """The whole run's loop time and processes so far, this one included."""
        ran = time.perf_counter() - self._began if self._began is not None else 0.0
        return {"seconds": self.earlier_seconds + ran, "processes": self.earlier_processes + 1}

    def due(self, iteration: int) -> bool:
        return self._next is not None and iteration >= self._next

    def save(self, state: dict[str, Any], loggers: dict[str, str] | None = None) -> Path:
        """Write `state` (checkpoint_state's) with this run's identity and its loggers' run ids (`logger_ids`, the
        resumed run's where this process has none); the next one is due at the next multiple of `every` (a chunk
        ends there: data/schedule.py)."""
        ids = {**self.resumed_logger_ids, **(loggers or {})}
        extra = {"identity": self.identity, "loggers": ids, "elapsed": self.elapsed()}
        path = save_checkpoint(self.path, {**state, **extra})
        self.start(int(state["iteration"]))
        return path


def _elapsed(value: Any) -> tuple[float, int]:
    """(seconds, processes) of a checkpoint's "elapsed"; (0, 0) where it has none (written before it was kept)."""
    if not isinstance(value, dict):
        return 0.0, 0
    seconds, processes = value.get("seconds"), value.get("processes")
    ok = isinstance(seconds, (int, float)) and isinstance(processes, int) and seconds >= 0 and processes >= 0
    return (float(seconds), int(processes)) if ok else (0.0, 0)
