"""The one job lifecycle: every run goes through `run_jobs`, a single run (`run`, dip-run), every job of a packed
sweep (sweeps/packed.py), an ensemble (run/ensemble.py) and a joblib or SLURM job (dip-run in its process).

For each job: its folder is locked for this process (run/folder.py) and checked; a finished job is kept on
resume=auto (its recorded config and observation checked); an ensemble prepares its members; any other job is
prepared (run/prepare.py). The prepared runs are trained in packs of at most `pack` runs that can share one
(run/packs.py; one by one with pack=1), each finished as a job of its own (run/fit.py: its outputs all or none,
metrics.json last). A job that failed gets error.json (`write_error`, the one writer of that file) when the caller
records errors (a sweep's jobs); a job that succeeded loses an earlier attempt's error.json. A crash of one pack
takes only its own jobs; a signal (Interrupted) ends every job that had not finished, with its checkpoint, and is
raised once the finished ones are written.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..checkpoint import Interrupted
from ..config.validate import validate_config
from ..data.io import write_json
from ..errors import DIPError
from ..speed import SpeedOptions
from .ensemble import Ensemble
from .fit import train_runs
from .folder import check_writable, finished_metrics, locked
from .gt_free import choose_ensemble, choose_regularizer
from .packs import group_packs, pack_size
from .prepare import PreparedRun, RunNames, prepare_run
from .results import observation_checksum

log = logging.getLogger("dip_lightning")
ERROR = "error.json"


@dataclass
class Job:
    """One job: its config and folder; `names`: how its loggers name it where Hydra's current job is not this one
    (a packed job); `overrides`: what its error.json records (a sweep job's command-line overrides)."""

    cfg: DictConfig
    run_dir: Path
    names: RunNames | None = None
    overrides: list[str] | None = None


def write_error(run_dir: Path, message: str, overrides: list[str] | None = None) -> bool:
    """A job's error.json: why it has no result, and its overrides (dip-gather lists it as failed). The one writer of
    that file: the lifecycle here, and the launchers for a job whose process died before it could (sweeps/).
    False when it cannot be written (a full disk): the log then holds the job's error, and the sweep's last
    message names the job."""
    try:
        write_json(Path(run_dir) / ERROR, {"error": message, "overrides": list(overrides or [])})
    except OSError as err:
        log.error("job %s: its error.json could not be written either (%s)", run_dir, err.strerror or err)
        return False
    return True


def release(error: BaseException | None = None) -> None:
    """Free what a finished (or failed) job held: its traceback's frames, the cycles, CUDA's cache (a failed
    job's exception keeps its net and images alive in reference cycles; the next job may need that memory)."""
    if error is not None:
        error.__traceback__ = None
    gc.collect()
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """One DIP restoration (an ensemble of seeds with ensemble=N) in `run_dir`; returns metrics.json's content, or
    raises the DIPError that ended it. Nothing is written to run_dir unless it succeeds."""
    (result,) = run_jobs([Job(cfg, Path(run_dir))])
    if isinstance(result, Exception):
        raise result
    return result


def run_prepared(r: PreparedRun) -> dict[str, Any]:
    """Train and finish a run prepared already (run/prepare.py) on its own, outside the lifecycle (no lock, no
    error.json): what the benchmarks time."""
    (result,) = train_runs([r])
    if isinstance(result, Exception):
        raise result
    return result


def run_jobs(jobs: list[Job], pack: int | str = 1, record_errors: bool = False) -> list[dict | Exception]:
    """Every job's lifecycle (the module's docstring): each job's metrics, or the exception that ended it;
    `record_errors`: a failed job's error.json is written (a sweep's jobs)."""
    results: list[dict | Exception | None] = [None] * len(jobs)
    try:
        with contextlib.ExitStack() as folders:
            started: dict[int, Any] = {}
            for i, job in enumerate(jobs):
                try:
                    draw_seed(job.cfg)
                    choose_ensemble(job.cfg)  # ensemble=auto: a number, before anything reads it
                    choose_regularizer(job.cfg)  # without ground truth: the task's GT-free variant
                    validate_config(job.cfg)  # a bad value is refused before the run folder is made
                    SpeedOptions.from_config(job.cfg)
                    folders.enter_context(locked(check_writable(Path(job.run_dir))))  # for the job's whole life
                    started[i] = start(job)
                except DIPError as err:
                    results[i] = err
            for i, s in started.items():
                if isinstance(s, dict):
                    results[i] = s
            runs = {i: s for i, s in started.items() if isinstance(s, PreparedRun)}
            if runs:
                order = list(runs)
                size = pack_size(pack, [runs[i] for i in order])
                for group in group_packs([runs[i] for i in order], size):
                    ks = [order[j] for j in group]
                    for k, out in zip(ks, train_group([runs[k] for k in ks])):
                        results[k] = out
            for i, s in started.items():
                if isinstance(s, Ensemble):
                    try:
                        results[i] = s.run()
                    except DIPError as err:
                        results[i] = err
    except Interrupted as err:
        for i, job in enumerate(jobs):
            if results[i] is None and record_errors:  # its checkpoint is written: resume=auto goes on from it
                write_error(job.run_dir, str(err), job.overrides)
        raise
    finally:
        for job, result in zip(jobs, results):
            end(job, result, record_errors)
    return results  # type: ignore[return-value]


def draw_seed(cfg: DictConfig) -> None:
    """seed=null: a random seed, drawn once and written into the config, so config.yaml (and the loggers) record
    the seed that repeats the run."""
    if "seed" in cfg and cfg.seed is None:
        with open_dict(cfg):
            cfg.seed = secrets.randbelow(2**31)
        log.info(
            "seed=null: this run's seed is %d (config.yaml records it; seed=%d repeats the run)", cfg.seed, cfg.seed
        )


def start(job: Job) -> dict | PreparedRun | Ensemble:
    """A locked job's start: its metrics when it had finished (resume=auto), its Ensemble (ensemble=N), else the
    prepared run."""
    cfg, run_dir = job.cfg, Path(job.run_dir)
    for staging in run_dir.glob(".outputs-*"):  # a killed process's half-written outputs (run/outputs.py): ours
        shutil.rmtree(staging, ignore_errors=True)
    if str(cfg.get("resume")) == "auto" and (run_dir / "metrics.json").is_file():
        return finished_run(cfg, run_dir)
    if cfg.get("ensemble", 1) != 1:
        return Ensemble.prepare(cfg, run_dir, job.names)
    return prepare_run(cfg, run_dir, job.names)


def train_group(runs: list[PreparedRun]) -> list[dict | Exception]:
    """One pack's training; a crash (not a DIPError) takes its own jobs, not the other packs'."""
    try:
        if len(runs) > 1:
            log.info("pack of %d: %s", len(runs), ", ".join(str(r.run_dir) for r in runs))
        return train_runs(runs)
    except (Interrupted, KeyboardInterrupt):
        raise
    except DIPError as err:
        return [err] * len(runs)
    except Exception as err:
        if len(runs) == 1:
            raise
        log.exception("pack failed")
        release(err)  # what the failed pack held, before the next pack
        return [RuntimeError(f"{type(err).__name__}: {err}")] * len(runs)


def end(job: Job, result: dict | Exception | None, record_errors: bool) -> None:
    """A job's outcome on disk: error.json for a failure (when recorded), none left from an earlier attempt on
    success."""
    if isinstance(result, Exception) and record_errors:  # a single run's error is the process's (train.py)
        log.error("job %s failed: %s", job.run_dir, result)
        write_error(job.run_dir, str(result), job.overrides)
    elif isinstance(result, dict):
        (Path(job.run_dir) / ERROR).unlink(missing_ok=True)  # an earlier attempt's (a requeued or resumed job)


def finished_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """resume=auto on a folder whose run has finished: its metrics, once its config and observation are this
    run's (a resumed sweep runs only the jobs that had not finished)."""
    with_noise = OmegaConf.merge(cfg, {"ensemble": 1})  # an ensemble's observation is its first member's
    prepared = prepare_run(with_noise, run_dir)
    if cfg.get("ensemble", 1) == 1:  # with the rule a run without ground truth gets, as its config.yaml records it
        cfg = prepared.cfg
    metrics = finished_metrics(cfg, run_dir, observation_checksum(prepared.task.observed))
    log.info("%s had finished (metrics.json): kept, not run again (resume=auto)", run_dir)
    return metrics
