"""Packs: which prepared DIP runs can be trained together as one batched model (the loop, dip_lightning/loop,
trains them; each finishes as an unpacked run would).

Runs of one pack share the task, the net, the shapes, the speed options and the optimizer apart from the
learning rate; each keeps its own seed, observation, jitter, averaging, backtracking decision, best iterate,
stopping rules, loggers and checkpoint (PER_RUN lists what may differ).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..callbacks.roles import lightning_callbacks
from ..checkpoint.identity import MAY_CHANGE, flatten_config, key_under
from ..errors import DIPError
from ..run_metrics import RESULT, result_psnr

log = logging.getLogger("dip_lightning")
AUTO_MEMORY_SHARE = 0.7  # pack=auto fills at most this share of the free memory
AUTO_MAX = 64

ADAM = "torch.optim.Adam"
# Config values that may differ inside one pack (besides what may change on a resume): each run has its own.
PER_RUN = (
    "seed",
    "optimizer.lr",
    "task.reg_noise_std",
    "task.reg_noise_schedule",
    "task.exp_weight",
    "task.average_from",
    "task.backtrack_drop_db",
    "task.backtracking",
    "task.seed",
    "task.noise_seed",
    "data.image",
    "data.observed",
    "data.mask",
    "data.flash",
    "data.no_flash",
    "callbacks",
    "iterations",
    "data.iterations",
)


def pack_key(r) -> str | None:
    """What the runs of one pack must share (task, net, shapes, optimizer apart from lr, ...) as a string; None
    when the run cannot be packed at all (it then runs on its own). `r` is a run.prepare.PreparedRun."""
    cfg = r.cfg
    if cfg.optimizer.get("_target_") != ADAM or cfg.optimizer.get("amsgrad") or cfg.optimizer.get("maximize"):
        return None
    if r.task.optimize_input or r.task.regularizer.trains_input or r.task.regularizer.calls_net:
        return None  # the pack stacks the nets' weights (not each run's z), so a run's own net is not the one trained
    if lightning_callbacks(r.callbacks):
        return None  # a plain Lightning callback sees the loop's module: it is given one run only
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    # everything but the per-run values and how runs are logged or checkpointed; the pack runs with one Trainer
    # config, so that stays in
    shared = {
        k: v
        for k, v in flatten_config(plain).items()
        if not key_under(k, PER_RUN) and (not key_under(k, MAY_CHANGE) or key_under(k, ("trainer",)))
    }
    shared.update(
        task=type(r.task).__name__,
        output=list(r.task.out_avg.shape),
        input=list(r.task.z.shape),
        net_output=r.task.net.output_channels,
        start=r.checkpointing.start_iteration,
        speed=r.speed.describe(),  # one pack runs with one set of speed options
    )
    return json.dumps(shared, sort_keys=True, default=str)


def group_packs(runs: list, size: int) -> list[list[int]]:
    """Indices of `runs` in packs of at most `size` sharing their pack_key; unpackable runs alone."""
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for i, r in enumerate(runs):
        key = pack_key(r)
        if key is None:
            alone.append([i])
        else:
            groups.setdefault(key, []).append(i)
    packs = [idx[j : j + size] for idx in groups.values() for j in range(0, len(idx), size)]
    return packs + alone


def optimized_value(cfg, metrics: dict | Exception) -> float:
    """What the sweeper gets from a job: its optimized_metric. The default, psnr_result, is the PSNR of what the
    run returned (restored.png: psnr_stop when a stopping rule chose it, else psnr_final; an ensemble's
    psnr_ensemble; run_metrics.result_psnr), not the oracle psnr_best, which a search would otherwise tune for an
    iterate no method without ground truth can pick. Another metrics.json key is read as it is, and a job without
    it gives the result's PSNR; NaN without either (no ground truth) or for a failed job."""
    if isinstance(metrics, Exception):
        return math.nan
    name = cfg.get("optimized_metric") or RESULT
    value = result_psnr(metrics) if name == RESULT else metrics.get(name)
    if value is None:
        value = result_psnr(metrics)
    return float(value) if value is not None else math.nan


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
