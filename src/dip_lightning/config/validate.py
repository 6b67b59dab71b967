"""Check the composed config's values and types once, before anything is built.

The keys come first: a required key deleted (`~seed`), a value interpolating a key the config lacks, an unknown
top-level key (`+iteration=3000`, a typo that would change nothing) are refused before any value is read.
Hydra passes `iterations=abc` through as a string and `iterations=2.5` as a float; without this check they end in
a traceback from deep inside a constructor, or are silently truncated. Each rule names the key, the value given
and what is expected, in the one-paragraph DIPError that dip-run prints.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from ..errors import DIPError
from .compose import CONF


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def optional_positive_int(v: Any) -> bool:
    return v is None or positive_int(v)


def non_negative_number(v: Any) -> bool:
    return _is_number(v) and v >= 0


def positive_number(v: Any) -> bool:
    return _is_number(v) and v > 0


def crop(v: Any) -> bool:
    if v is None or positive_int(v):
        return True
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(positive_int(x) for x in v)


# The largest fixed chunk. A chunk's history rows (runs x chunk x columns) stay on the device until its end, the
# one host read where progress is logged, stopping rules are asked and a checkpoint is written: chunk=1000000000
# meant no progress line and gigabytes resident for as long as the run. 10000 iterations are minutes on a CPU and
# 10 to 60 s on a GPU at the paper's sizes; chunk=auto stays at 500 or less (data/schedule.py).
MAX_CHUNK = 10_000
MAX_SEED = 2**32 - 1  # what seeding takes (numpy's and Lightning's seed_everything: 0..2**32-1)


def chunk(v: Any) -> bool:
    return v == "auto" or (positive_int(v) and v <= MAX_CHUNK)


def seed(v: Any) -> bool:
    return _is_int(v) and 0 <= v <= MAX_SEED


def channel_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(positive_int(x) for x in v)


def metric_list(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and "psnr" in v
        and all(isinstance(m, str) and m.isidentifier() for m in v)
        and len(set(v)) == len(v)
    )


def skip_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)


# key -> (rule, what is expected). A key that is absent from the config (another net, optimizer, task) is skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "iterations": (positive_int, "a whole number of DIP steps >= 1, e.g. iterations=3000"),
    "seed": (seed, f"a whole number from 0 to {MAX_SEED} (what seeding takes), e.g. seed=0"),
    "ensemble": (positive_int, "a number of seeds >= 1 (1: one run), e.g. ensemble=4"),
    "metrics": (
        metric_list,
        "a list of metric names that holds psnr, each once (psnr, ssim, or a metric/<name>.yaml of yours), e.g. "
        "'metrics=[psnr,ssim]'",
    ),
    "chunk": (
        chunk,
        f"'auto' or a whole number of iterations per Lightning step from 1 to {MAX_CHUNK} (a chunk's history is "
        "held on the device until its end, where progress is logged and stopping rules are asked)",
    ),
    "cpu_threads": (optional_positive_int, "null (the free CPUs) or a whole number of threads >= 1"),
    "checkpoint_every": (optional_positive_int, "null (off) or a whole number of iterations >= 1"),
    "resume_force": (lambda v: isinstance(v, bool), "true (resume a checkpoint of other code) or false"),
    "optimizer.lr": (positive_number, "a finite learning rate > 0, e.g. optimizer.lr=0.01"),
    "optimizer.momentum": (non_negative_number, "a finite momentum >= 0, e.g. 0.9"),
    "optimizer.weight_decay": (non_negative_number, "a finite weight decay >= 0"),
    "data.crop": (crop, "null, a size in pixels, or [height, width], e.g. data.crop=256 or 'data.crop=[256,384]'"),
    "data.max_pixels": (positive_int, "the largest image (width x height) that is read, a whole number"),
    "data.chunk_seconds": (positive_number, "seconds between host reads with chunk=auto, > 0"),
    "task.reg_noise_std": (non_negative_number, "the input jitter's std >= 0 (1/30 in the paper)"),
    "task.input_scale": (positive_number, "the scale of the input z, > 0 (0.1 in the paper)"),
    "task.backtrack_drop_db": (positive_number, "the PSNR drop in dB that counts as a collapse, > 0 (5)"),
    "task.log_every": (positive_int, "log every N iterations, N >= 1"),
    "net.input_depth": (positive_int, "the channels of the input z, >= 1"),
    "net.output_channels": (optional_positive_int, "null (the image's channels) or a number of channels >= 1"),
    "net.num_channels_down": (channel_list, "a non-empty list of channel counts >= 1, one per scale"),
    "net.num_channels_up": (channel_list, "a non-empty list of channel counts >= 1, one per scale"),
    "net.num_channels_skip": (skip_list, "a non-empty list of channel counts >= 0 (0: no skip), one per scale"),
    "net.num_channels": (lambda v: positive_int(v) or channel_list(v), "a channel count or a non-empty list of them"),
}


def validate_config(cfg: DictConfig) -> None:
    """Raise a DIPError for the first problem: a required key missing, an interpolation of a key the config lacks,
    an unknown top-level key, a value that breaks its rule."""
    check_keys(cfg)
    for key, (rule, expected) in RULES.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception as err:  # an interpolation that does not resolve, a missing value
            raise DIPError(f"{key} could not be read from the config ({err}); expected {expected}.") from None
        if value is None and OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not rule(value):
            raise DIPError(f"{key}={_show(value)} is not valid; expected {expected}.")
    n = cfg.get("ensemble", 1)
    if n > 1 and cfg.seed + n - 1 > MAX_SEED:
        raise DIPError(
            f"ensemble={n} with seed={cfg.seed} trains seeds {cfg.seed} to {cfg.seed + n - 1}, past {MAX_SEED} "
            f"(the largest seed); expected seed + ensemble - 1 <= {MAX_SEED}, e.g. seed=0."
        )


# Top-level keys the code reads without a default: deleting one (dip-run '~seed') is refused here, not met as a
# ConfigAttributeError traceback later. A key that another value interpolates (data.chunk: ${chunk}) is required too.
REQUIRED = ("iterations", "seed", "task", "net", "optimizer", "data", "trainer")
# ${a.b.c} (not a resolver's ${name:...}, not a relative ${.x}, not an escaped \${...}, which is text: a file name):
# the root key `a` is what it needs
_INTERPOLATION = re.compile(r"(?<!\\)\$\{\s*([A-Za-z_][\w-]*)(?:\.[\w-]+|\[[^\]]*\])*\s*\}")


def check_keys(cfg: DictConfig) -> None:
    """The config's top-level keys: every required key present, every interpolated key present, and no key that
    nothing defines or uses. A top-level key is known when conf/train.yaml or a config group sets it (a group's
    own key, or what a `@package _global_` preset puts at the top); an added key that another value interpolates
    is a helper, not a typo (the paper tables' sweeps: +stem=a with data.image=denoise9/${stem}_GT.png)."""
    keys = set(cfg.keys())
    for name in REQUIRED:
        if name not in keys:
            default = _defaults().get(name)
            hint = f"the default: {name}={default}" if default is not None else "see conf/train.yaml"
            raise DIPError(
                f"{name} is required but the config has none (an override ~{name} deleted it?); leave {name} in "
                f"place, or set it: {name}=<value> ({hint})."
            )
    used: dict[str, tuple[str, str]] = {}  # interpolated root key -> the first value that interpolates it
    for where, text in _strings(OmegaConf.to_container(cfg, resolve=False)):
        for root in _INTERPOLATION.findall(text):
            used.setdefault(root, (where, text))
    for root, (where, text) in used.items():
        if root not in keys and root != "hydra":
            raise DIPError(
                f"{where}={text!r} interpolates ${{{root}}}, but the config has no {root} (an override ~{root} "
                f"deleted it?); expected {root} in the config, as conf/train.yaml sets it: leave out ~{root}."
            )
    known = known_keys()
    for key in sorted(keys - known - set(used) - {"hydra"}):
        value = cfg.get(key)
        shown = f"+{key}={_show(value)}" if not OmegaConf.is_config(value) else f"+{key}"
        close = difflib.get_close_matches(key, sorted(known), n=1)
        suggestion = f"did you mean {close[0]}?" if close else f"the top-level keys are {', '.join(sorted(known))}."
        raise DIPError(
            f"{shown}: {key} is not a key of dip-run's config, so it would change nothing; {suggestion} (An added "
            f"key that another value interpolates, as ${{{key}}}, is a helper and is kept.)"
        )


def _strings(node: Any, where: str = ""):
    """(dotted key, string) of every string value in a plain container."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{where}.{i}")
    elif isinstance(node, str):
        yield where, node


@functools.lru_cache(maxsize=1)
def _train_yaml() -> dict:
    return OmegaConf.to_container(OmegaConf.load(_config_dir() / "train.yaml"), resolve=False)


def _config_dir() -> Path:

    return CONF


def _defaults() -> dict[str, Any]:
    """Each top-level key's default: its conf/train.yaml value, or a group's default option."""
    out = {k: v for k, v in _train_yaml().items() if k not in ("defaults", "hydra")}
    for entry in _train_yaml().get("defaults", []):
        if isinstance(entry, dict):
            out.update({k: v for k, v in entry.items() if v is not None})
    return out


@functools.lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """conf/train.yaml's top-level keys, the groups its defaults list chooses from that put their options under
    their own name, and every top-level key of the groups' `@package _global_` options (experiment presets,
    launchers, hparams_search)."""
    train = _train_yaml()
    known = {k for k in train if k not in ("defaults", "hydra")}
    for entry in train.get("defaults", []):
        if not isinstance(entry, dict):
            continue
        for group in entry:
            for path in sorted((_config_dir() / group).glob("*.yaml")):
                if "@package _global_" in path.read_text().split("\n", 1)[0]:
                    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
                    known |= {k for k in node if k not in ("defaults", "hydra")}
                else:
                    known.add(group)
    return frozenset(known)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
