"""The Hydra entry point (`dip-run`, or `python -m dip_lightning.train`): compose the config, then the job's
lifecycle (run/job.py: lock, resume, prepare, train, finish, error.json); returns the metric that sweepers optimise
(`optimized_metric`, the result's PSNR by default).

This is the top of the package: importing it registers every resolver the config uses (each layer registers its
own on import: config/, run/gt_free.py, sweeps/slurm.py), so it is what code that composes conf/train.yaml imports.
"""

from __future__ import annotations

import errno
import logging
import os
import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import (
    early_signal,
    quiet,  # noqa: F401  (no Lightning or W&B banners in any process that trains: it imports this module)
)
from .config.compose import CONFIG_DIR
from .errors import DIPError
from .run import gt_free  # noqa: F401  (registers ${dip.gt_free_rule:})
from .sweeps import slurm  # noqa: F401  (registers SLURM's resolvers)

log = logging.getLogger("dip_lightning")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .checkpoint import Interrupted
    from .run.job import Job, draw_seed, run_jobs, write_error
    from .run.packs import optimized_value
    from .sweeps.gpu_lease import gpu_lease
    from .sweeps.slurm import not_requeued, requeue

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN  # a sweep job: a failure is its error.json, and the sweep goes on
    if sweep:
        die_with_parent()
    draw_seed(cfg)  # seed=null: drawn before anything shows or uses the config
    extras(cfg, print_config=not sweep)
    fresh = run_dir
    if not sweep and str(cfg.get("resume")) == "auto":  # the newest interrupted run of this config goes on
        run_dir = interrupted_run(run_dir, list(hc.overrides.task)) or run_dir
    job = Job(cfg, run_dir, overrides=list(hc.overrides.task))
    try:
        with gpu_lease(cfg.get("gpu_lease")):  # one GPU per running job, taken before CUDA starts
            (result,) = run_jobs([job], record_errors=sweep)
    except Interrupted as err:  # SIGTERM / Ctrl-C: the checkpoint is written; exit as the signal asks
        log.error("%s", err)
        log.error("To go on from it: %s", resume_command(hc, run_dir))
        if orphaned():  # a joblib worker whose sweep died: nobody waits for its answer, so end at once
            logging.shutdown()
            os._exit(128 + err.signum)
        refused = requeue(err.signum)  # submitit's preemption signal: its handler requeues the job and exits
        if refused is None:
            raise SystemExit(128 + err.signum)
        message = not_requeued(refused, err)  # timed out more often than hydra.launcher.max_num_timeout
        log.error("%s", message)
        write_error(run_dir, message, job.overrides)
        return float("nan")
    if isinstance(result, Exception):
        if sweep:  # run_jobs wrote its error.json; dip-gather lists the failure
            return float("nan")
        if not isinstance(result, DIPError):
            raise result
        log.error("%s", result)
        print(f"\nerror: {result}", file=sys.stderr)
        raise SystemExit(1)
    if run_dir != fresh:
        log.info("this process's log is %s; the run's outputs are in %s", fresh / "train.log", run_dir)
    return optimized_value(cfg, result)


_SWEEP_PROCESS: list[int] = []  # a joblib worker's parent, the sweep's process, once die_with_parent has run


def die_with_parent() -> None:
    """In a joblib worker (loky) of a sweep: SIGTERM when the sweep's process dies (Linux's PR_SET_PDEATHSIG), so a
    killed sweep leaves no worker holding its jobs' folders and memory; SIGTERM checkpoints a run in its loop."""
    import ctypes
    import signal

    try:
        with open("/proc/self/cmdline", "rb") as f:
            if b"loky" not in f.read():
                return  # the sweep's own process (launcher=local, packed): its parent is the user's shell
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no such call
        return
    _SWEEP_PROCESS[:] = [parent]
    if parent == 1:  # the parent died before the call: act as the signal would have
        os.kill(os.getpid(), signal.SIGTERM)


def orphaned() -> bool:
    """Whether this is a joblib worker whose sweep's process has died."""
    return bool(_SWEEP_PROCESS) and os.getppid() != _SWEEP_PROCESS[0]


def extras(cfg: DictConfig, print_config: bool) -> None:
    """conf/train.yaml's `extras`: the resolved config printed as a tree (a single run), tags required."""
    wanted = cfg.get("extras") or {}
    if wanted.get("enforce_tags") and not cfg.get("tags"):
        raise DIPError(
            "extras.enforce_tags=true and the run has no tags: give it what it is for, e.g. 'tags=[baseline,lr]' "
            "(they go to its loggers), or set extras.enforce_tags=false."
        )
    if print_config and wanted.get("print_config"):
        print_config_tree(cfg)


FIRST = ("task", "net", "optimizer", "regularizer", "data", "trainer", "logger", "callbacks", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a rich tree, its main groups first (resolved: the values the run will use)."""
    from omegaconf import OmegaConf
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    keys = [*(k for k in FIRST if k in cfg), *(k for k in cfg if k not in FIRST)]
    for key in keys:
        node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        try:  # a value that does not resolve is shown as written: the run's check says what is wrong with it
            text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
        except Exception:
            text = OmegaConf.to_yaml(node) if OmegaConf.is_config(node) else str(node)
        tree.add(str(key), style="bold").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich_print(tree)


def interrupted_run(new_dir: Path, overrides: list[str]) -> Path | None:
    """resume=auto on a single run, in the new folder Hydra made for it: the newest folder beside it whose run was
    interrupted (a checkpoint, no metrics.json) with the same overrides (resume= aside), or None (said in the log:
    the run starts fresh)."""
    from .checkpoint import CHECKPOINT

    if (new_dir / CHECKPOINT).is_file() or (new_dir / "metrics.json").is_file():
        return None  # hydra.run.dir=<the run's folder> resume=auto: this folder is the run's
    wanted = same_run(overrides)
    found = (
        [
            d
            for d in new_dir.parent.iterdir()
            if d != new_dir
            and (d / CHECKPOINT).is_file()
            and not (d / "metrics.json").exists()
            and same_run(recorded_overrides(d)) == wanted
        ]
        if new_dir.parent.is_dir()
        else []
    )
    if not found:
        log.info(
            "resume=auto: no interrupted run with these overrides in %s (a folder with %s and no metrics.json); "
            "starting fresh in %s",
            new_dir.parent,
            CHECKPOINT,
            new_dir,
        )
        return None
    chosen = max(found, key=lambda d: (d / CHECKPOINT).stat().st_mtime)
    log.info(
        "resume=auto: going on with the interrupted run in %s (the newest of %d with these overrides)",
        chosen,
        len(found),
    )
    return chosen


def same_run(overrides: list[str] | None) -> list[str] | None:
    """The overrides that make a run this run, as resume=auto compares them (resume= and hydra.run.dir= aside)."""
    if overrides is None:
        return None
    return sorted(o for o in overrides if not o.lstrip("+~").startswith(("resume=", "hydra.run.dir=")))


def recorded_overrides(run_dir: Path) -> list[str] | None:
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except (OSError, ValueError, TypeError):
        return None


def resume_command(hc, run_dir: Path) -> str:
    """The command that goes on from an interrupted run's checkpoint: a single run in its own folder, a sweep in
    its sweep folder (its finished jobs are kept, the others resume)."""
    from hydra.types import RunMode

    from .run.prepare import sweep_arguments

    if hc.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hc.sweep.dir)
        given = sweep_arguments(sweep_dir) or list(hc.overrides.task)
        args = [o for o in given if not o.startswith(("resume=", "hydra.sweep.dir="))]
        return shlex.join(["dip-run", "-m", *args, f"hydra.sweep.dir={sweep_dir}", "resume=auto"])
    args = [o for o in hc.overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    return shlex.join(["dip-run", *args, f"hydra.run.dir={run_dir}", "resume=auto"])


def unquoted_non_ascii(args: list[str]) -> str | None:
    """The quoting hint for an override whose value has non-ASCII characters outside quotes: Hydra's override
    lexer stops at them with a LexerNoViableAltException that says nothing about quotes."""
    for arg in args:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or value.isascii():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            continue
        return (
            f"the override {arg!r} has non-ASCII characters, which Hydra's override parser only takes inside "
            f"quotes. Write it as {key}='{value}', in a shell: \"{key}='{value}'\"."
        )
    return None


def exit_if_signalled(signum: int | None) -> None:
    """Exit as a signal that came before any run started asks (128 + its number), in one line."""
    if signum is not None:
        import signal

        name = signal.Signals(signum).name
        print(f"dip-run: interrupted ({name}) before a run started; nothing was trained.", file=sys.stderr)
        raise SystemExit(128 + signum)


def main() -> None:
    hint = unquoted_non_ascii(sys.argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(1)
    if not {"-m", "--multirun"} & set(sys.argv[1:]):  # a single run: a signal before its loop is its own too
        early_signal.install()
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's full tracebacks
        hydra_main()
        exit_if_signalled(early_signal.end())
        return
    from hydra.errors import HydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach this function, to be told in one paragraph
    try:
        hydra_main()
        exit_if_signalled(early_signal.end())  # noted before any run's guard took it over (no run started)
    except KeyboardInterrupt:  # Ctrl-C before the loop started, or held while the outputs were written
        print(
            "dip-run: interrupted (Ctrl-C); outputs that were being written are complete, a run stopped in its loop "
            "kept its checkpoint (the line above says how to go on).",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except DIPError as err:  # raised before the run starts (run.folder.RunFolderGuard: a used folder)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except HydraException as err:  # a config that does not compose (a MissingConfigException is an OSError too)
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
        print(f"error: {err}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # Hydra creates the run folder and its log file before dip-run's code runs
        where = f": {err.filename}" if err.filename else ""
        full = err.errno == errno.ENOSPC
        fix = "free some space, or choose a folder on another disk" if full else "choose a writable folder"
        print(
            f"error: the run folder could not be created or written ({err.strerror or err}{where}); {fix}: "
            "hydra.run.dir=<folder> (hydra.sweep.dir=<folder> with -m), or run from a writable directory.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
