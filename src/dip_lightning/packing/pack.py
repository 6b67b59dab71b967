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

from omegaconf import OmegaConf

from ..callbacks.roles import lightning_callbacks
from ..run_identity import MAY_CHANGE, flatten_config, key_under
from ..run_metrics import RESULT, result_psnr

log = logging.getLogger("dip_lightning")

ADAM = "torch.optim.Adam"
# Config values that may differ inside one pack (besides what may change on a resume): each run has its own.
PER_RUN = (
    "seed",
    "optimizer.lr",
    "task.reg_noise_std",
    "task.reg_noise_schedule",
    "task.exp_weight",
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
    when the run cannot be packed at all (it then runs on its own). `r` is a train.PreparedRun."""
    cfg = r.cfg
    if cfg.optimizer.get("_target_") != ADAM or cfg.optimizer.get("amsgrad") or cfg.optimizer.get("maximize"):
        return None
    if r.task.optimize_input or r.task.regularizer.trains_input:
        return None  # the pack stacks the nets' weights, not each run's z
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
