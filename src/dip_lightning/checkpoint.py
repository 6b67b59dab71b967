"""Preemption and resume: the whole DIP state in one file, written atomically, and read back bit for bit.

A checkpoint holds what the next iteration depends on, each part as its owner gives it: the task's `run_state()`
(net weights, averaged and last output, backtracking state and snapshot, iteration count, the jitter generator's
state, the history), the optimizer's state_dict, the process's RNG state, and the `state_dict()` of every on-device
callback (best iterate, early stopping) under its config name, and the ids of the loggers' runs (W&B's: a resume
continues that run). This module only assembles the file: its format, the run's identity (checked on resume) and
the atomic write. With it, a resumed run on CPU with the same config ends bit-identical to one that was never
interrupted.

Checkpoints are written at chunk ends by the loop (loop/engine.py): at every multiple of `checkpoint_every` (off by
default; a chunk ends at each, data/schedule.py), and always when the process gets SIGTERM (SLURM preemption) or
Ctrl-C (`SignalGuard`), after which the run stops with `Interrupted`. A packed run's checkpoint has the unpacked
format, so it resumes packed or not.

What a resume refuses, each with one paragraph (a DIPError) naming the file: a file that is not a checkpoint or
lacks one of its fields (`_check_fields`); a damaged one, whose content no longer matches the sha256 written with
it (`state_checksum`: a bit flipped on disk); another run's (its identity, run_identity.py), including other
stopping rules; one written by other code (the package version or source hash differ) unless `resume_force=true`.
A checkpoint that cannot be written (a full disk) is one paragraph too, and leaves the previous one as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from .data.io import atomic_write
from .errors import DIPError
from .run_identity import FORCE, SOURCE, VERSION, differences

log = logging.getLogger("dip_lightning")
CHECKPOINT = Path("checkpoints") / "last.ckpt"
# 4: the task's state under "task" (its run_state()); 3: the same parts, the task's at the top level (read as 4);
# 2: stoppers did not keep their candidates; 1: no run identity. 1 and 2 are refused. A format-4 file written since
# the checksum was added holds "checksum" (state_checksum); one without it is read with a warning.
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


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


FIX = "Resume from an earlier checkpoint, or start the run again without resume=."


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path` as format 4, its checksum checked (and removed) and its fields checked; anything
    else is a DIPError naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated, damaged or foreign file
        found = re.search(r"GLOBAL ([\w.]+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if found:  # torch.load(weights_only=True) refused it: a checkpoint is data, none of its code runs
            raise DIPError(
                f"The checkpoint {str(path)!r} holds a pickled Python object ({found.group(1)}) that no checkpoint "
                "written by dip-run holds (the file is not dip-run's, or it is damaged): a checkpoint is data, read "
                "with torch.load(weights_only=True), which runs no code from a file, so it is not resumed. Resume "
                "from a checkpoint that dip-run wrote, or start the run again without resume=."
            ) from None
        raise DIPError(
            f"Could not read the checkpoint {str(path)!r} ({_first_line(err)}): it is not a file written by "
            f"dip-run, or it is damaged (truncated, or changed on disk). {FIX}"
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
    if not isinstance(state, dict) or state.get("format") not in (3, FORMAT):
        raise DIPError(f"{str(path)!r} is not a dip-run checkpoint (format {FORMAT}), or it is damaged. {FIX}")
    verify_checksum(state, path)
    if state.get("format") == 3:
        _check_fields(state, path, FIELDS_3)
        state = from_format_3(state)
    _check_fields(state, path, FIELDS)
    if state["task"]["iteration"] != state["iteration"]:
        _damaged_fields(
            path, [f"its task is at iteration {state['task']['iteration']}, the file at {state['iteration']}"]
        )
    return state


def _tensor(dtype: torch.dtype | None = None) -> Callable[[Any], bool]:
    return lambda v: torch.is_tensor(v) and (dtype is None or v.dtype == dtype)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _dict_of(key: Callable[[Any], bool], value: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(key(k) and value(x) for k, x in v.items())


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


# (field, test, what it should be) of a format-4 checkpoint, in order (a field's parent first); FIELDS_3: of format 3
FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("iteration", _is_int, "an iteration count"),
    ("image", lambda v: v is None or isinstance(v, str), "the image's name"),
    ("task", lambda v: isinstance(v, dict), "the task's state (a dict)"),
    ("task.iteration", _is_int, "an iteration count"),
    ("task.net", lambda v: isinstance(v, dict), "the net's state_dict"),
    ("task.buffers", _dict_of(_is_str, _tensor()), "the task's buffers (tensors by name)"),
    ("task.jitter_gen", _tensor(torch.uint8), "a generator state (a uint8 tensor)"),
    ("task.history", _dict_of(_is_str, lambda v: isinstance(v, (list, tuple))), "the history (lists by name)"),
    ("optimizer", lambda v: isinstance(v, dict), "the optimizer's state_dict"),
    ("optimizer.state", lambda v: isinstance(v, dict), "the optimizer's per-parameter state"),
    ("optimizer.param_groups", lambda v: isinstance(v, list), "the optimizer's parameter groups"),
    ("torch_rng", _tensor(torch.uint8), "the RNG state (a uint8 tensor)"),
    ("callbacks", _dict_of(_is_str, lambda v: isinstance(v, dict)), "the callbacks' states (dicts by name)"),
    ("identity", _dict_of(_is_str, _is_str), "the run's identity (text by key)"),
)
FIELDS_3 = (
    ("iteration", _is_int, "an iteration count"),
    *((key, lambda v: True, "the task's state") for key in TASK_KEYS_3),
)
_MISSING = object()


def _field(state: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(state, dict) or part not in state:
            return _MISSING
        state = state[part]
    return state


def _check_fields(state: dict[str, Any], path: Path, fields) -> None:
    """Refuse a checkpoint that lacks one of `fields` or holds one of another type, naming each."""
    problems: dict[str, str] = {}
    for key, ok, expected in fields:
        if any(key.startswith(bad + ".") for bad in problems):
            continue  # its parent is already reported
        value = _field(state, key)
        if value is _MISSING:
            problems[key] = f"{key} is missing"
        elif not ok(value):
            problems[key] = f"{key} is {_kind(value)}, not {expected}"
    if problems:
        _damaged_fields(path, list(problems.values()))


def _kind(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a {value.dtype} tensor"
    return f"a {type(value).__name__}"


def _damaged_fields(path: Path, problems: list[str]) -> None:
    shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
    raise DIPError(f"{str(path)!r} is not a dip-run checkpoint, or it is damaged: {shown}. {FIX}")


def _digest(obj: Any, h) -> None:
    """Feed `obj` to the hash `h` in one deterministic serialisation: dict keys sorted, tensors by dtype, shape
    and bytes, other values by type and repr (what torch.load(weights_only=True) gives back repr's the same); a
    state_dict's `_metadata` too."""
    if torch.is_tensor(obj):
        t = obj.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _digest(key, h)
            _digest(obj[key], h)
        metadata = getattr(obj, "_metadata", None)  # a state_dict's module versions, pickled with it
        if metadata is not None:
            h.update(b"M")
            _digest(metadata, h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for item in obj:
            _digest(item, h)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def state_checksum(state: dict[str, Any]) -> str:
    """sha256 of a checkpoint's content (all of it but its "checksum")."""
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "checksum"}, h)
    return h.hexdigest()


def verify_checksum(state: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose content does not match the checksum written with it; removes the checksum. One
    without a checksum (written before dip-run wrote them) is read, with a warning."""
    recorded = state.pop("checksum", None)
    if recorded is None:
        log.warning(
            "%s holds no checksum (written by an earlier dip-run): whether it is intact cannot be checked", path
        )
        return
    if recorded != state_checksum(state):
        raise DIPError(
            f"The checkpoint {str(path)!r} is damaged: its content does not match the checksum written with it "
            "(a bit changed on disk or in a copy, or the file was edited); resume from an earlier checkpoint or "
            "start again without resume=."
        )


def from_format_3(state: dict[str, Any]) -> dict[str, Any]:
    """A format-3 checkpoint in format 4: the same values, the task's moved under "task" (nothing else changed)."""
    state = dict(state)
    task = {"iteration": state["iteration"], **{key: state.pop(key) for key in TASK_KEYS_3}}
    return {**state, "task": task, "format": FORMAT}


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
    from .callbacks.roles import iteration_hooks

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
            f"({type(err).__name__}: {_first_line(err)}). Resume with the overrides of the interrupted run, from "
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


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write `state` with its checksum to `path` atomically: a failed write (a full disk) leaves the file that was
    there as it was, and is a DIPError naming the file and the free space."""
    path = Path(path)
    state = {**state, "checksum": state_checksum(state)}
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as err:  # torch.save's zip writer reports a full disk as a RuntimeError
        raise DIPError(_write_failed(path, state, err)) from None
    log.info("checkpoint at iteration %s: %s", state.get("iteration"), path)
    return path


def _size(obj: Any) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_size(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_size(v) for v in obj)
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _write_failed(path: Path, state: dict[str, Any], err: BaseException) -> str:
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        free = f"{_mb(shutil.disk_usage(where).free)} free on its disk"
    except OSError:
        free = "its disk's free space unknown"
    kept = (
        f"The checkpoint that was there is unchanged: continue from it with resume={path} once there is room."
        if path.exists()
        else "No earlier checkpoint is there; start the run again once there is room."
    )
    return (
        f"Could not write the checkpoint {str(path)!r} ({_first_line(err)}): {free} ({where}), and it needs about "
        f"{_mb(_size(state))} beside the previous one while it is written. {kept} Free space on that disk, or give "
        "the run a folder on another one (hydra.run.dir=...)."
    )


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
        # the ids of the loggers' runs (W&B's), kept in every checkpoint: a resume continues the same W&B run
        loggers = self.resume_state.get("loggers") if self.resume_state is not None else None
        self.logger_ids: dict[str, str] = (
            {str(k): str(v) for k, v in loggers.items()} if isinstance(loggers, dict) else {}
        )
        # the loop time and the processes of the run before this process (a resume: a requeued SLURM job), kept in
        # every checkpoint: metrics.json's total_seconds and processes count the whole run
        elapsed = self.resume_state.get("elapsed") if self.resume_state is not None else None
        self.earlier_seconds, self.earlier_processes = _elapsed(elapsed)
        if self.resume_state is not None:  # one written before "elapsed" was kept: its process's time is unknown
            self.earlier_processes = max(self.earlier_processes, 1)
        self._next: int | None = None
        self._began: float | None = None

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

    def save(self, state: dict[str, Any]) -> Path:
        """Write `state` (checkpoint_state's) with this run's identity and its loggers' run ids; the next one is due
        at the next multiple of `every` (a chunk ends there: data/schedule.py)."""
        extra = {"identity": self.identity, "loggers": dict(self.logger_ids), "elapsed": self.elapsed()}
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


class SignalGuard:
    """SIGTERM (SLURM preemption) and Ctrl-C noted while the loop runs, acted upon at the next iteration, where the
    state is consistent; a second Ctrl-C leaves at once. Replaces Lightning's SIGTERM handler for the loop. In a
    submitit SLURM job, submitit's preemption signal too (USR2, sent before the time limit: sweeps/slurm.py), whose
    handler requeues the job once the checkpoint is written. After the loop, the same guard holds a signal while
    the outputs are written (`then`), and `deliver()` sends it on (the preemption signal not: the run is complete,
    and a requeue would only run it again)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, then: str = "writing the checkpoints after this iteration"):
        self.caught: int | None = None
        self.then = then  # what happens next, for the log line
        self._old: dict[int, Any] = {}

    @classmethod
    def signals(cls) -> tuple[int, ...]:
        from .sweeps.slurm import preemption_signal

        preemption = preemption_signal()
        return cls.SIGNALS + ((preemption,) if preemption is not None else ())

    @classmethod
    def handlers(cls) -> dict[int, Any]:
        return {signum: signal.getsignal(signum) for signum in cls.signals()}

    def install(self, restore_to: dict[int, Any] | None = None) -> None:
        """`restore_to`: the handlers `restore` puts back (default: those installed now)."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old = dict(restore_to) if restore_to is not None else self.handlers()
        for signum in self.signals():
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.caught is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now, without a checkpoint
        self.caught = signum
        log.warning("got %s: %s", signal.Signals(signum).name, self.then)

    def deliver(self) -> None:
        """Send a held signal on to the handlers put back by `restore` (call that first)."""
        if self.caught is not None:
            log.error("%s came while the outputs were written; they are complete.", signal.Signals(self.caught).name)
            if self.caught in self.signals()[len(self.SIGNALS) :]:
                return  # the preemption signal: the job ends now, with its result, instead of being requeued
            os.kill(os.getpid(), self.caught)

    def restore(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}
