"""A checkpoint file: where a resume finds it, its format and fields, its checksum, reading and atomic writing.

Every refusal is one paragraph (a DIPError) naming the file: not a checkpoint, a field missing or of another type
(`_check_fields`), a damaged file whose content no longer matches the sha256 written with it (`state_checksum`), a
write that failed (a full disk: the previous file is left as it was).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.io import atomic_write
from ..errors import DIPError

log = logging.getLogger("dip_lightning")
CHECKPOINT = Path("checkpoints") / "last.ckpt"
# 4: the task's state under "task" (its run_state()); 3: the same parts, the task's at the top level (read as 4);
# 2: stoppers did not keep their candidates; 1: no run identity. 1 and 2 are refused. A format-4 file written since
# the checksum was added holds "checksum" (state_checksum); one without it is read with a warning.
FORMAT = 4
TASK_KEYS_3 = ("net", "buffers", "snapshot", "jitter_gen", "history")  # format 3's top-level keys of the task's state


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


def first_line(err: BaseException) -> str:
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
            f"Could not read the checkpoint {str(path)!r} ({first_line(err)}): it is not a file written by "
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
        f"Could not write the checkpoint {str(path)!r} ({first_line(err)}): {free} ({where}), and it needs about "
        f"{_mb(_size(state))} beside the previous one while it is written. {kept} Free space on that disk, or give "
        "the run a folder on another one (hydra.run.dir=...)."
    )
