"""Preemption and resume: the whole DIP state in one file, written atomically, and read back bit for bit.

A checkpoint holds what the next iteration depends on, each part as its owner gives it: the task's `run_state()`
(net weights, averaged and last output, backtracking state and snapshot, iteration count, the jitter generator's
state, the history), the optimizer's state_dict, the process's RNG state, and the `state_dict()` of every on-device
callback (best iterate, early stopping) under its config name. This module only assembles the file: its format,
the run's identity (checked on resume) and the atomic write. With it, a resumed run on CPU with the same config ends
bit-identical to one that was never interrupted.

Checkpoints are written at chunk ends by the loop (loop/engine.py): every `checkpoint_every` iterations (off by
default), and always when the process gets SIGTERM (SLURM preemption) or Ctrl-C (`SignalGuard`), after which the
run stops with `Interrupted`. A packed run's checkpoint has the unpacked format, so it resumes packed or not.
"""

from __future__ import annotations

import logging
import pickle
import re
import signal
import threading
from pathlib import Path
from typing import Any

import torch

from .data.io import atomic_write
from .errors import DIPError
from .run_identity import differences

log = logging.getLogger("dip_lightning")
CHECKPOINT = Path("checkpoints") / "last.ckpt"
# 4: the task's state under "task" (its run_state()); 3: the same parts, the task's at the top level (read as 4);
# 2: stoppers did not keep their candidates; 1: no run identity. 1 and 2 are refused.
FORMAT = 4
TASK_KEYS_3 = ("net", "buffers", "snapshot", "jitter_gen", "history")  # format 3's top-level keys of the task's state


class Interrupted(Exception):
    """The run was stopped by a signal after writing its checkpoint."""

    def __init__(self, signum: int, iteration: int, path: Path, run_dir: Path):
        self.signum, self.iteration, self.path = signum, iteration, path
        super().__init__(
            f"Interrupted by {signal.Signals(signum).name} at iteration {iteration}; checkpoint "
            f"written to {path}. Continue with the same overrides plus resume={run_dir}"
        )


def find_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """resume: null (start fresh), 'auto' (this run dir's checkpoint if there is one), a run dir or a file."""
    if resume in (None, "", False):
        return None
    if str(resume) == "auto":
        path = Path(run_dir) / CHECKPOINT
        return path if path.exists() else None
    path = Path(str(resume)).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise DIPError(
            f"resume={resume!r}: no checkpoint at {str(path)!r}; expected a run folder holding "
            f"{CHECKPOINT} (run with checkpoint_every=N, or stop it with SIGTERM/Ctrl-C) or a .ckpt file."
        )
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        found = re.search(r"GLOBAL ([\w.]+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if found:  # torch.load(weights_only=True) refused it: a checkpoint is data, none of its code runs
            raise DIPError(
                f"The checkpoint {str(path)!r} holds a pickled Python object ({found.group(1)}) that no checkpoint "
                "written by dip-run holds (the file is not dip-run's, or it is damaged): a checkpoint is data, read "
                "with torch.load(weights_only=True), which runs no code from a file, so it is not resumed. Resume "
                "from a checkpoint that dip-run wrote, or start the run again without resume=."
            ) from None
        raise DIPError(
            f"Could not read the checkpoint {str(path)!r} ({err}); expected a file written by dip-run."
        ) from None
    if isinstance(state, dict) and state.get("format") == 1:
        raise DIPError(
            f"{str(path)!r} was written by an earlier dip-run that did not record what defines its run, so "
            "resuming it could silently continue another run; it is not resumed. Start the run again "
            "without resume=."
        )
    if isinstance(state, dict) and state.get("format") == 2:
        raise DIPError(
            f"{str(path)!r} was written by an earlier dip-run (checkpoint format 2) whose early stoppers "
            "did not keep the averaged output they now return; it is not resumed. Start the run again "
            "without resume=."
        )
    if isinstance(state, dict) and state.get("format") == 3:
        state = from_format_3(state)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DIPError(f"{str(path)!r} is not a dip-run checkpoint (format {FORMAT}).")
    return state


def from_format_3(state: dict[str, Any]) -> dict[str, Any]:
    """A format-3 checkpoint in format 4: the same values, the task's moved under "task" (nothing else changed)."""
    state = dict(state)
    task = {"iteration": state["iteration"], **{key: state.pop(key) for key in TASK_KEYS_3}}
    return {**state, "task": task, "format": FORMAT}


def check_resume(state: dict[str, Any], path: Path, identity: dict[str, str], iterations: int) -> None:
    """Refuse to resume a checkpoint of another run, or one that is already past `iterations`."""
    diff = differences(state["identity"], identity)
    if diff:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise DIPError(
            f"resume={str(path)!r}: the checkpoint was written by a different run, and continuing it would report "
            f"that run's state as this one's result. What differs: {shown}. Resume with the overrides of the "
            f"interrupted run (its folder's .hydra/overrides.yaml lists them), or start a new run without resume=. "
            "Only iterations (upwards), chunk, logger, callbacks other than early_stopping, checkpoint_every, "
            "cpu_threads, trainer, channels_last, compile and image paths (not their pixels) may change on resume."
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
    from .callbacks.roles import iteration_hooks

    stateful = iteration_hooks(callbacks)
    names = [getattr(c, "config_name", None) or type(c).__name__ for c in stateful]
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
    """Put a checkpoint's state back into `task`, run k of `trainable` and the run's `callbacks`."""
    try:
        task.load_run_state(state["task"])
    except DIPError as err:
        raise DIPError(
            f"The checkpoint {str(path)!r} does not fit this run: {err}. Resume with the overrides of the "
            "interrupted run."
        ) from None
    trainable.load_optimizer_state(k, state["optimizer"])
    trainable.load_snapshot_row(k, state["task"].get("snapshot"))
    torch.set_rng_state(state["torch_rng"])
    stateful = _stateful(callbacks)
    for name, cb_state in state["callbacks"].items():
        if name in stateful:
            stateful[name].load_state_dict(_to(cb_state, task.device))


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    log.info("checkpoint at iteration %d: %s", state["iteration"], path)
    return path


class Checkpointing:
    """One run's checkpoint file: where it goes, how often (`every`), what it must match (`identity`), and the state
    it resumes from (read and checked here, before anything runs; the loop puts it back)."""

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
        self._next: int | None = None

    def start(self, iteration: int) -> None:
        self._next = ((iteration // self.every) + 1) * self.every if self.every else None

    def due(self, iteration: int) -> bool:
        return self._next is not None and iteration >= self._next

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` (checkpoint_state's) with this run's identity; the next one is due `every` later."""
        path = save_checkpoint(self.path, {**state, "identity": self.identity})
        self.start(int(state["iteration"]))
        return path


class SignalGuard:
    """SIGTERM (SLURM preemption) and Ctrl-C noted while the loop runs, acted upon at the next chunk end, where the
    state is consistent; a second Ctrl-C leaves at once. Replaces Lightning's SIGTERM handler for the loop."""

    def __init__(self):
        self.caught: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._old[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.caught is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now, without a checkpoint
        self.caught = signum
        log.warning("got %s: writing the checkpoints at the end of this chunk", signal.Signals(signum).name)

    def restore(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}
