"""What defines a run, so that `resume=` refuses a checkpoint written by another run.

A checkpoint records every config value that decides the result, and a hash of the content of every image the
run read (paths may move; pixels may not change). Resuming compares them with the resuming run's and refuses any
difference, naming the keys. Everything else may change on resume (README, Sweeps): the values listed in
MAY_CHANGE, which decide how long the run goes, how it is logged, checkpointed or placed, not what it computes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

# Keys (and the keys under them) that may differ between a run and its resume.
MAY_CHANGE = (
    "iterations",
    "chunk",
    "checkpoint_every",
    "resume",
    "cpu_threads",
    "logger",
    "callbacks",
    "trainer",
    "hydra",
    "gpu_lease",
    "optimized_metric",
    "channels_last",
    "compile",
    "cuda_graph",
    "task.log_every",
    "data.iterations",
    "data.chunk",
    "data.chunk_seconds",
    "data.max_pixels",
    "data.root",
    "paths",  # where data is read from (its pixels are hashed) and runs are written
)
# ...except these: an early stopper's settings decide which iterate is returned.
MUST_MATCH = ("callbacks.early_stopping",)


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def content_hash(img: torch.Tensor) -> str:
    return hashlib.sha256(img.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def config_identity(plain: dict, skip: set[str] = frozenset()) -> dict[str, str]:
    """key -> value (as text) of the config values that define a run (`plain`: the resolved config as a dict),
    without the keys in `skip`."""
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    return {
        k: repr(v)
        for k, v in _flatten(plain).items()
        if (not _under(k, MAY_CHANGE) or _under(k, MUST_MATCH)) and k not in skip
    }


def run_identity(cfg: DictConfig, data) -> dict[str, str]:
    """key -> value (as text) of everything that defines the run; `data` is the loaded ImageData."""
    files = {f"data.{k}" for k in data.sources}  # image files: compared by content below, not by path
    identity = config_identity(OmegaConf.to_container(cfg, resolve=True), skip=files)
    images = {"image": data.clean, "observed": data.observed, **data.extras}
    for name, img in images.items():
        if img is not None and torch.is_tensor(img):
            source = data.sources.get(name, "simulated")
            identity[f"content of data.{name}"] = f"{content_hash(img)} ({source})"
    return identity


def differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """'key: checkpoint X, now Y' for every key that differs (or exists on one side only)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key, "(not set)"), current.get(key, "(not set)")
        if a != b:
            out.append(f"{key}: checkpoint {a}, now {b}")
    return out
