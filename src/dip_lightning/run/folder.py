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
- `check_same_jobs(sweep_dir, jobs)`: a resumed sweep whose job numbers now name other jobs (its values reordered)
  is refused before Hydra rewrites any job's record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
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


def check_same_jobs(sweep_dir: Path, jobs: list[list[str]], ignored: tuple[str, ...] = ()) -> None:
    """A resumed sweep must number its jobs as the first run did: job i goes to <sweep dir>/i, whose Hydra record
    (.hydra/overrides.yaml) Hydra rewrites before the job starts. Refuse, before any job, a sweep whose job i is not
    the one recorded in folder i (its values given in another order, a value added or removed), `ignored`: the keys
    that do not make a job another (resume, the launcher, the logger: Hydra's override_dirname exclude_keys)."""
    import yaml

    def settings(overrides: list[str]) -> dict[str, str]:
        pairs = (o.split("=", 1) for o in overrides if "=" in o)
        return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in ignored}

    moved = []
    for i, job in enumerate(jobs):
        record = Path(sweep_dir) / str(i) / ".hydra" / "overrides.yaml"
        if not earlier_files(record.parent.parent, ignore=(".hydra",)):
            continue  # no run there yet: nothing a rewritten record would misname
        try:
            recorded = settings([str(o) for o in yaml.safe_load(record.read_text()) or []])
        except (OSError, yaml.YAMLError, TypeError):
            continue  # an unreadable record: the job's own resume check compares its config.yaml
        now = settings(list(job))
        if recorded != now:
            diff = sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))
            held = ", ".join(f"{k}={recorded.get(k, '(unset)')}" for k in diff)
            wanted = ", ".join(f"{k}={now.get(k, '(unset)')}" for k in diff)
            moved.append(f"job {i} holds {held} where this sweep's job {i} has {wanted}")
    if moved:
        shown = "; ".join(moved[:4]) + ("; ..." if len(moved) > 4 else "")
        raise DIPError(
            f"resume=auto: the sweep folder {str(sweep_dir)!r} holds other jobs under the same numbers ({shown}). "
            "Hydra numbers a sweep's jobs by the order of its values, so a resumed sweep needs the same values in "
            "the same order as its first run (its command is in multirun.yaml's hydra.overrides.task). Nothing was "
            "run or rewritten: run the first command again with resume=auto, or start the new sweep in a new folder."
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
            try:  # who holds it, for the message of a run refused beside it; the lock is the flock alone
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:  # a full disk: the run still holds its folder, its refusals say "process unknown"
                pass
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


PROBE_BYTES = 64 * 1024  # a file this large must fit in the folder, or its disk is full


def check_writable(run_dir: Path) -> Path:
    """Fail before any computation when the run folder cannot take the outputs: a folder that cannot be made or
    written, or whose disk cannot take a small file (full)."""
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test.") as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DIPError(
                f"The disk holding the run folder {str(run_dir)!r} is full ({free_mb(run_dir)} MB free), so this "
                "run's results could not be written. Free some space, or choose a folder on another disk "
                "(hydra.run.dir=<folder>, hydra.sweep.dir=<folder> with -m); a sweep goes on with the same command "
                "and resume=auto, which keeps its finished jobs."
            ) from None
        raise DIPError(
            f"The run folder {str(run_dir)!r} cannot be written ({err.strerror or err}); the results "
            "would be lost. Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "with -m), or run from a writable directory."
        ) from None
    return run_dir


def free_mb(folder: Path) -> int:
    """The MB free on `folder`'s disk (or its nearest existing parent's)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free // 2**20
    except OSError:
        return 0
