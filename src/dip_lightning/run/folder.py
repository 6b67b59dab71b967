"""A run folder holds one run's files: a new run refuses a folder that holds another run's, and two processes never
write one folder at once.

- `check_unused(run_dir, resume)`: a folder with a run's outputs, error, checkpoint or Hydra record is refused
  unless the run resumes (resume=auto or a path), so that a re-run never mixes its files with an earlier run's and
  dip-gather never pairs one run's config with another's metrics.
- `RunFolderGuard`, a Hydra callback (conf/train.yaml, hydra.callbacks): the same check before Hydra writes
  `.hydra/` into the folder (a refused re-run must not replace the finished run's record), and for a sweep before
  its first job: a sweep folder that holds an earlier sweep's jobs is refused unless resuming.
- `locked(run_dir)`: an exclusive lock (flock on `<run dir>/.dip-run.lock`) for the run's whole life; a second
  process gets one paragraph naming the process that holds it.
- `check_writable(run_dir)`: the folder is made and written to once before any computation, so that a run whose
  results could not be saved fails at its start.
- `finished_metrics(cfg, run_dir, observation)`: resume=auto on a folder whose run had finished keeps it, once its
  recorded config and observation are this run's (a resumed sweep or ensemble does not run its finished jobs again).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import DIPError

# what a run (or a sweep job) leaves in its folder
RUN_FILES = ("metrics.json", "error.json", "restored.png", "checkpoints", "members", "curves.csv", ".hydra")
LOCK = ".dip-run.lock"
_held: dict[Path, tuple[int, int]] = {}  # folder -> (fd, depth): a process may take its own lock again


def earlier_files(run_dir: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    return [name for name in RUN_FILES if name not in ignore and (Path(run_dir) / name).exists()]


def resuming(resume: Any) -> bool:
    return resume not in (None, "", False)


def foreign_files(run_dir: Path) -> list[str]:
    """What `run_dir` holds besides what a new run finds there (Hydra's record and log, this process's lock): in a
    folder a new run is to fill, any such file is the user's or another run's."""
    if not Path(run_dir).is_dir():
        return []
    return sorted(
        p.name
        for p in Path(run_dir).iterdir()
        if p.name not in (".hydra", LOCK) and not p.name.endswith(".log") and not p.name.startswith(".write-test.")
    )


def check_unused(run_dir: Path, resume: Any, ignore: tuple[str, ...] = (".hydra",)) -> None:
    """Refuse `run_dir` when it holds another run's files, or files of the user's, and the run does not resume.
    `.hydra/` is ignored here by default: Hydra has written this run's own by the time the run's code starts
    (RunFolderGuard checks it before)."""
    if resuming(resume):
        return
    found = earlier_files(run_dir, ignore)
    if found:
        raise DIPError(
            f"The run folder {str(run_dir)!r} already holds a run ({', '.join(found)}); a folder holds one run's "
            "files only, so this run would mix its outputs with the earlier one's. Choose a new folder "
            "(hydra.run.dir=<folder>, or leave it to the dated default), move the earlier run away, or continue "
            "it with resume=auto."
        )
    foreign = foreign_files(run_dir)
    if foreign:
        shown = ", ".join(foreign[:6]) + (", ..." if len(foreign) > 6 else "")
        raise DIPError(
            f"The run folder {str(run_dir)!r} is not empty ({shown}); a new run writes config.yaml, observed.png, "
            "restored.png and more there and would replace files of the same names, yours included. Give the run a "
            "folder of its own: hydra.run.dir=<a new or empty folder>, or leave it to the dated default."
        )


def check_sweep_unused(sweep_dir: Path, resume: Any) -> None:
    """Refuse a sweep folder holding an earlier sweep's job folders unless the sweep resumes."""
    sweep_dir = Path(sweep_dir)
    if resuming(resume) or not sweep_dir.is_dir():
        return
    jobs = sorted(p.parent.parent.name for p in sweep_dir.glob("*/.hydra/overrides.yaml"))
    if jobs:
        raise DIPError(
            f"The sweep folder {str(sweep_dir)!r} already holds a sweep ({len(jobs)} job folders: "
            f"{', '.join(jobs[:5])}{', ...' if len(jobs) > 5 else ''}); a new sweep there would mix its jobs' "
            "files with the earlier ones, and dip-gather could report an earlier job's result under a new setting. "
            "Choose a new folder (hydra.sweep.dir=<folder>, or leave it to the dated default), move the earlier "
            "sweep away, or continue it with resume=auto (finished jobs are kept)."
        )


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock while the block runs (again in this process: nested)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        fd, depth = _held[run_dir]
        _held[run_dir] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[run_dir]
            _held[run_dir] = (fd, depth - 1)
        return
    path = run_dir / LOCK
    fd = _lock(path, run_dir)
    _held[run_dir] = (fd, 1)
    try:
        yield
    finally:  # removed while still held, so a finished run's folder keeps no stale lock (see _lock)
        del _held[run_dir]
        try:
            path.unlink()
        except OSError:
            pass
        os.close(fd)


def _lock(path: Path, run_dir: Path) -> int:
    """The lock file's descriptor, flock-ed. The holder removes the file when it is done, so a process that opened
    the old file just before may lock a file no longer in the folder: the lock counts only if the folder's file is
    still the one locked (else it is taken again on the new file)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DIPError(
                f"Another dip-run (process {holder}) is using the run folder {str(run_dir)!r}; two runs in one "
                "folder would mix or delete each other's files. Wait for it to end, or give this run its own folder "
                "(hydra.run.dir=<folder>)."
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # the file was removed by the holder that just finished: lock the folder's new one


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra-core is a dependency
    Callback = object


class RunFolderGuard(Callback):
    """Hydra callback: refuses a used run or sweep folder before Hydra writes into it. Hydra turns a callback's
    exception into a warning and goes on, so a refusal is printed here and ends the process (SystemExit)."""

    def on_run_start(self, config, **kwargs: Any) -> None:
        folder = _select(config, "hydra.run.dir")
        _refuse_or_go(lambda: check_unused(folder, config.get("resume"), ignore=()))

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        folder = _select(config, "hydra.sweep.dir")
        _refuse_or_go(lambda: check_sweep_unused(folder, config.get("resume")))


def _select(config, key: str) -> Path:
    """A folder of Hydra's config; its `${hydra:...}` parts (the default run dir names the task) resolve only once
    HydraConfig holds the config, which Hydra sets later, as the job starts: set it now (the same config)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(config)
    return Path(str(OmegaConf.select(config, key)))


def _refuse_or_go(check) -> None:
    import sys

    try:
        check()
    except DIPError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def finished_metrics(cfg, source: Path, observation: str, dest: Path | None = None) -> dict[str, Any]:
    """The metrics of the finished run in `source`, once its recorded config (config.yaml) and observation
    (observation_sha256) are this run's; its files are copied to `dest` when that is another folder."""
    import json
    import shutil

    from omegaconf import OmegaConf

    from ..checkpoint.identity import config_identity, differences

    metrics = json.loads((Path(source) / "metrics.json").read_text())
    recorded = OmegaConf.to_container(OmegaConf.load(Path(source) / "config.yaml"), resolve=True)
    current = OmegaConf.to_container(cfg, resolve=True)
    diff = differences(config_identity(recorded), config_identity(current))
    if metrics.get("observation_sha256") != observation:
        diff.append("the observation (observation_sha256) differs")
    if diff:
        raise DIPError(
            f"The finished run in {str(source)!r} was run with another config than this resume: {'; '.join(diff)}. "
            "Resume with the overrides of the earlier run, or start again in a new folder without resume=."
        )
    if dest is not None and Path(source).resolve() != Path(dest).resolve():
        shutil.copytree(source, dest, dirs_exist_ok=True)
    else:  # still this run's result: newer than the record Hydra has just written (dip-gather pairs them so)
        os.utime(Path(source) / "metrics.json")
    return metrics


def check_writable(run_dir: Path) -> Path:
    """Fail before any computation when the run folder cannot take the outputs."""
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test."):
            pass
    except OSError as err:
        raise DIPError(
            f"The run folder {str(run_dir)!r} cannot be written ({err.strerror or err}); the results "
            "would be lost. Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "with -m), or run from a writable directory."
        ) from None
    return run_dir
