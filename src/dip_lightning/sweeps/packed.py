"""The packed launcher's work (hydra_plugins/dip_sweepers/packed_launcher.py): its jobs go through the one job
lifecycle (run/job.run_jobs) with packs of at most `pack` runs; with n_parallel > 1, the jobs are first grouped
into packs and each group runs the lifecycle in a worker process of its own."""

from __future__ import annotations

import logging
import math

from ..checkpoint import Interrupted
from ..errors import DIPError
from ..run.gt_free import choose_ensemble, choose_regularizer
from ..run.job import Job, run_jobs
from ..run.packs import group_packs, optimized_value, pack_size
from ..run.prepare import prepare_run
from .gpu_lease import gpu_lease

log = logging.getLogger("dip_lightning")


def run_packed(jobs: list[Job], pack, n_parallel: int = 1) -> list[float]:
    """Each job's value for the sweeper (NaN when it failed: its error.json says why). `n_parallel` > 1: that many
    packs at a time, each in its own worker process (each takes a GPU through gpu_lease when enabled, or its cores
    on a CPU)."""
    if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
        raise DIPError(f"hydra.launcher.n_parallel={n_parallel!r} is not valid; expected a number of packs >= 1.")
    if n_parallel == 1:
        return run_group(jobs, pack)
    from joblib import Parallel, delayed

    groups = plan_packs(jobs, pack)
    outcomes = Parallel(n_jobs=n_parallel, backend="loky")(
        delayed(run_group)([jobs[i] for i in group], len(group)) for group in groups
    )
    values = [math.nan] * len(jobs)
    for group, group_values in zip(groups, outcomes):
        for i, value in zip(group, group_values):
            values[i] = value
    return values


def run_group(jobs: list[Job], pack) -> list[float]:
    """The lifecycle of `jobs` in packs of at most `pack`, under one GPU lease; each job's value."""
    try:
        with gpu_lease(jobs[0].cfg.get("gpu_lease")):
            results = run_jobs(jobs, pack, record_errors=True)
    except Interrupted as err:  # every unfinished job has its checkpoint and error.json: exit as the signal asks
        log.error("%s", err)
        raise SystemExit(128 + err.signum) from None
    return [optimized_value(job.cfg, result) for job, result in zip(jobs, results)]


def plan_packs(jobs: list[Job], pack) -> list[list[int]]:
    """The jobs' indices grouped as run_jobs would pack them, for workers that each take one group: every job is
    prepared here only to read its pack key (nothing is locked or written); a job that cannot be prepared, or an
    ensemble, is a group of its own (its worker's lifecycle records its outcome)."""
    prepared, alone = {}, []
    for i, job in enumerate(jobs):
        choose_ensemble(job.cfg)  # ensemble=auto: the number run_jobs will train
        choose_regularizer(job.cfg)  # and the GT-free variant it will run
        if job.cfg.get("ensemble", 1) != 1 or str(job.cfg.get("resume")) == "auto":
            alone.append([i])
            continue
        try:
            prepared[i] = prepare_run(job.cfg, job.run_dir, job.names)
        except DIPError:
            alone.append([i])
    order = list(prepared)
    groups = []
    if order:
        size = pack_size(pack, [prepared[i] for i in order])
        groups = [[order[j] for j in g] for g in group_packs([prepared[i] for i in order], size)]
    prepared.clear()  # a prepared run holds tensors and open state: the workers prepare their jobs again
    return groups + alone
