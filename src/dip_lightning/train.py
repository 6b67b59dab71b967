"""The Hydra entry point (`dip-run`, or `python -m dip_lightning.train`): compose the config, then the job's
lifecycle (run/job.py: lock, resume, prepare, train, finish, error.json); returns the metric that sweepers optimise
(`optimized_metric`, the result's PSNR by default).

This is the top of the package: importing it registers every resolver the config uses (each layer registers its
own on import: config/, run/gt_free.py, sweeps/slurm.py), so it is what code that composes conf/train.yaml imports.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from . import quiet  # noqa: F401  (no Lightning or W&B banners in any process that trains: it imports this module)
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
    from .run.job import Job, run_jobs, write_error
    from .run.packs import optimized_value
    from .sweeps.gpu_lease import gpu_lease
    from .sweeps.slurm import not_requeued, requeue

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN  # a sweep job: a failure is its error.json, and the sweep goes on
    job = Job(cfg, run_dir, overrides=list(hc.overrides.task))
    try:
        with gpu_lease(cfg.get("gpu_lease")):  # one GPU per running job, taken before CUDA starts
            (result,) = run_jobs([job], record_errors=sweep)
    except Interrupted as err:  # SIGTERM / Ctrl-C: the checkpoint is written; exit as the signal asks
        log.error("%s", err)
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
    return optimized_value(cfg, result)


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


def main() -> None:
    hint = unquoted_non_ascii(sys.argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(1)
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's full tracebacks
        hydra_main()
        return
    from hydra.errors import HydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach this function, to be told in one paragraph
    try:
        hydra_main()
    except DIPError as err:  # raised before the run starts (run.folder.RunFolderGuard: a used folder)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except HydraException as err:  # a config that does not compose (a MissingConfigException is an OSError too)
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
        print(f"error: {err}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # Hydra creates the run folder and its log file before dip-run's code runs
        print(
            f"error: the run folder could not be created or written ({err.strerror or err}: "
            f"{err.filename or ''}). Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "with -m), or run from a writable directory.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
