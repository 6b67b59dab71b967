"""What defines a run, so that `resume=` refuses a checkpoint written by another run.

A checkpoint records every config value that decides the result, and a hash of the content of every image the
run read (paths may move; pixels may not change). Resuming compares them with the resuming run's and refuses any
difference, naming the keys. Everything else may change on resume (docs/sweeps.md): the values listed in
MAY_CHANGE, which decide how long the run goes, how it is logged, checkpointed or placed, not what it computes.
A stopping rule is no such value under any name: every callback whose class is a StoppingRule is compared, so a
rule added or removed on resume (it would judge only part of the run, or drop its choice) is refused.

The code is part of the identity too: the package's version and a hash of its source (`source_hash`). A checkpoint
written by other code is refused unless the resume passes `resume_force=true` (checkpoint.check_resume); the
identity carries that flag under FORCE, never compared.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..callbacks.roles import target_is_stopping_rule

# Keys (and the keys under them) that may differ between a run and its resume.
MAY_CHANGE = (
    "iterations",
    "gt_free_rule",  # a read-out of without_ground_truth, data and callbacks (dip_lightning/gt_free.py)
    "gt_free_ensemble",  # what ensemble=auto chooses from: the chosen `ensemble` is recorded and compared
    "gt_free_regularizer",  # likewise: the chosen regularizer, net and iterations are recorded and compared
    "metric",  # the recorded configs of the names in `metrics` (compared): configs written before it lack it
    "chunk",
    "checkpoint_every",
    "resume",
    "cpu_threads",
    "logger",
    "callbacks",
    "trainer",
    "hydra",
    "gpu_lease",
    "extras",  # what the entry point prints or requires around a run
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
    "resume_force",  # accept a checkpoint written by other code (checkpoint.check_resume)
    "tags",  # the loggers' labels (tags=[paper])
)
# ...except these: an early stopper's settings decide which iterate is returned (and any StoppingRule under
# another callbacks key: `_stopping_rules`).
MUST_MATCH = ("callbacks.early_stopping",)
# The identity's keys of the code that wrote the checkpoint, and of the resume_force flag (recorded, not compared).
VERSION, SOURCE, FORCE = "code: dip_lightning version", "code: source sha256", "resume_force"
# Modules of the package that take no part in what a run computes or reports: the classical baselines of the
# paper's tables, the loggers (W&B, CSV, TensorBoard), and the sweep tools (dip-gather, GPU leases, image lists).
NOT_HASHED = ("baselines.py", "run/loggers.py", "sweeps/")
PACKAGE = Path(__file__).resolve().parents[1]  # src/dip_lightning


def key_under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _stopping_rules(plain: dict) -> tuple[str, ...]:
    """`callbacks.<name>` of every callback in `plain` whose class is a stopping rule."""
    callbacks = plain.get("callbacks")
    if not isinstance(callbacks, dict):
        return ()
    return tuple(
        f"callbacks.{name}"
        for name, node in callbacks.items()
        # one whose class cannot be told (not importable, a factory function) counts: its settings are compared
        if isinstance(node, dict) and target_is_stopping_rule(node.get("_target_")) is not False
    )


def package_version() -> str:
    try:
        return metadata.version("dip-lightning")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


@functools.lru_cache(maxsize=None)
def source_hash() -> str:
    """sha256 (16 hex digits) of the bytes of the package's .py files that shape a run (nets, tasks, operators, data,
    the loop, callbacks, the run, checkpoints: all but NOT_HASHED), in sorted path order, each with its path and
    length; computed once per process."""
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")):
        if rel.startswith(NOT_HASHED):
            continue
        data = (PACKAGE / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def code_identity() -> dict[str, str]:
    """What a checkpoint records of the code that wrote it."""
    return {VERSION: package_version(), SOURCE: source_hash()}


def content_hash(img: torch.Tensor) -> str:
    return hashlib.sha256(img.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def config_identity(plain: dict, skip: set[str] = frozenset()) -> dict[str, str]:
    """key -> value (as text) of the config values that define a run (`plain`: the resolved config as a dict),
    without the keys in `skip`."""
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    must_match = MUST_MATCH + _stopping_rules(plain)
    return {
        k: repr(v)
        for k, v in flatten_config(plain).items()
        if (not key_under(k, MAY_CHANGE) or key_under(k, must_match)) and k not in skip
    }


def run_identity(cfg: DictConfig, data) -> dict[str, str]:
    """key -> value (as text) of everything that defines the run (config, image content, code; `data` is the loaded
    ImageData), and whether this run passed resume_force=true (FORCE)."""
    files = {f"data.{k}" for k in data.sources}  # image files: compared by content below, not by path
    identity = config_identity(OmegaConf.to_container(cfg, resolve=True), skip=files)
    images = {"image": data.clean, "observed": data.observed, **data.extras}
    for name, img in images.items():
        if img is not None and torch.is_tensor(img):
            source = data.sources.get(name, "simulated")
            identity[f"content of data.{name}"] = f"{content_hash(img)} ({source})"
    identity.update(code_identity())
    identity[FORCE] = repr(bool(cfg.get("resume_force", False)))
    return identity


def differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """'key: checkpoint X, now Y' for every key that differs (or exists on one side only)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key, "(not set)"), current.get(key, "(not set)")
        if a != b:
            out.append(f"{key}: checkpoint {a}, now {b}")
    return out
