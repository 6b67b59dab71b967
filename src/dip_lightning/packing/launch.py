"""The packed launcher's work (hydra_plugins/dip_sweepers/packed_launcher.py): prepare every job, group the jobs
into packs, train each pack, and leave every job's folder as an unpacked job leaves it (outputs, or error.json)."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch

from ..checkpoint import Interrupted
from ..data.io import write_json
from ..errors import DIPError
from ..loop.engine import train_runs
from ..loop.ensemble import run_ensemble
from ..sweeps.job_end import release
from .pack import group_packs, optimized_value

log = logging.getLogger("dip_lightning")
AUTO_MEMORY_SHARE = 0.7  # pack=auto fills at most this share of the free memory
AUTO_MAX = 64


def run_jobs(jobs: list[tuple], pack, overrides: list[list[str]], n_parallel: int = 1) -> list[float]:
    """jobs: (config, run folder, logger names) per job. Returns each job's value for the sweeper (NaN when it
    failed). `n_parallel` > 1: that many packs at a time, each in its own worker process (each takes a GPU through
    gpu_lease when enabled, or its cores on a CPU)."""
    if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
        raise DIPError(f"hydra.launcher.n_parallel={n_parallel!r} is not valid; expected a number of packs >= 1.")
    with contextlib.ExitStack() as folders:
        return _run_jobs(jobs, pack, overrides, n_parallel, folders)


def _run_jobs(jobs: list[tuple], pack, overrides: list[list[str]], n_parallel: int, folders) -> list[float]:
    from ..run_folder import check_writable, locked
    from ..train import finished_run, prepare_run

    values = [math.nan] * len(jobs)
    prepared = {}
    for i, (cfg, run_dir, names) in enumerate(jobs):
        try:
            folders.enter_context(locked(check_writable(Path(run_dir))))  # this process's, for the whole launch
            if str(cfg.get("resume")) == "auto" and (Path(run_dir) / "metrics.json").is_file():
                values[i] = optimized_value(cfg, finished_run(cfg, Path(run_dir)))
            elif cfg.get("ensemble", 1) != 1:  # an ensemble job is a pack of its own
                values[i] = optimized_value(cfg, run_ensemble(cfg, run_dir, names))
            else:
                prepared[i] = prepare_run(cfg, run_dir, names)
        except DIPError as err:
            _failed(run_dir, err, overrides[i])
        except Interrupted as err:
            _failed(run_dir, err, overrides[i])
            raise SystemExit(128 + err.signum) from None
    live = list(prepared)
    if not live:
        return values
    size = pack_size(pack, [prepared[i] for i in live])
    groups = [[live[j] for j in group] for group in group_packs([prepared[i] for i in live], size)]
    if n_parallel == 1:
        results = [run_group([prepared[i] for i in group], [overrides[i] for i in group]) for group in groups]
    else:  # the workers prepare their jobs again (a prepared run holds tensors and open state, not worth pickling)
        from joblib import Parallel, delayed

        prepared.clear()
        results = Parallel(n_jobs=n_parallel, backend="loky")(
            delayed(run_group)([jobs[i] for i in group], [overrides[i] for i in group]) for group in groups
        )
    for group, group_values in zip(groups, results):
        for i, value in zip(group, group_values):
            values[i] = value
    return values


def run_group(runs: list, overrides: list[list[str]]) -> list[float]:
    """Train one pack (or one unpackable job); each job's value, its folder written (outputs or error.json).
    `runs`: train.PreparedRun, or (config, run folder, names) to prepare here (a worker process)."""
    from ..sweeps.gpu_lease import gpu_lease
    from ..train import prepare_run

    if runs and isinstance(runs[0], tuple):
        runs = [prepare_run(*job) for job in runs]
    with gpu_lease(runs[0].cfg.get("gpu_lease")):
        try:
            log.info("pack of %d: %s", len(runs), ", ".join(str(r.run_dir) for r in runs))
            results: list = train_runs(runs)
        except Interrupted as err:
            for r, o in zip(runs, overrides):
                _failed(r.run_dir, err, o)
            raise SystemExit(128 + err.signum) from None
        except Exception as err:  # a crash takes its pack's jobs, not the other packs
            log.exception("pack failed")
            results = [RuntimeError(f"{type(err).__name__}: {err}")] * len(runs)
            release(err)  # what the failed pack held, before the next pack (sweeps/job_end.py)
    values = []
    for r, o, result in zip(runs, overrides, results):
        if isinstance(result, Exception):
            _failed(r.run_dir, result, o)
            values.append(math.nan)
        else:
            values.append(optimized_value(r.cfg, result))
    return values


def _failed(run_dir: Path, err: Exception, overrides: list[str]) -> None:
    log.error("job %s failed: %s", run_dir, err)
    write_json(Path(run_dir) / "error.json", {"error": str(err), "overrides": overrides})


# ------------------------------------------------------------------------------------------------------ pack=auto
def pack_size(pack, runs: list) -> int:
    """`pack` as a number; "auto": as many runs as the free memory of the device holds, with a margin, from one
    run's peak memory measured on the GPU (estimated on a CPU)."""
    if pack != "auto":
        if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
            raise DIPError(f"hydra.launcher.pack={pack!r} is not valid; expected a number of jobs >= 1 or auto.")
        return pack
    free, where = free_bytes(runs[0])
    on_gpu = where == "the GPU"
    largest = max(runs, key=lambda r: r.task.z.numel())  # the largest image's run needs the most
    per_run = measured_run_bytes(largest) if on_gpu else run_bytes(largest)
    size = max(1, min(AUTO_MAX, len(runs), int(AUTO_MEMORY_SHARE * free // per_run)))
    log.info(
        "pack=auto: %d (%.1f GB free on %s, %.0f MB per run %s)",
        size,
        free / 2**30,
        where,
        per_run / 2**20,
        "measured: one iteration's peak" if on_gpu else "estimated from one forward pass",
    )
    return size


def run_bytes(r) -> int:
    """A run's training memory, estimated: every module output of one forward pass (kept for the backward, and its
    gradient) plus its weights, gradients and Adam's two moments, in float32."""
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(o.numel() if torch.is_tensor(o) else 0))
        for m in r.task.net.modules()
    ]
    try:
        with torch.no_grad():
            r.task.net(r.task.z)
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in r.task.net.parameters())
    return 4 * (2 * sum(outputs) + 4 * params)


def measured_run_bytes(r, device: str = "cuda") -> int:
    """A run's training memory, measured: the peak of one forward and backward of a copy of its net on the GPU,
    under its speed options, plus Adam's two moments and backtracking's snapshot of the weights."""
    import copy

    net = copy.deepcopy(r.task.net).to(device)
    z = r.task.z.to(device)
    if r.speed.channels_last:
        net, z = net.to(memory_format=torch.channels_last), z.contiguous(memory_format=torch.channels_last)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with r.speed.autocast(torch.device(device)):
        out = net(z)
    out.float().square().mean().backward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    weights = 4 * sum(p.numel() for p in net.parameters())
    del net, z, out
    torch.cuda.empty_cache()
    return peak + 3 * weights


def free_bytes(r) -> tuple[int, str]:
    accelerator = str(r.cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.mem_get_info()[0], "the GPU"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "the CPU"
    except OSError:
        pass
    return 4 * 2**30, "the CPU (assumed 4 GB: /proc/meminfo is not readable)"
