"""Check the composed config's values and types once, before anything is built.

The keys come first: a required key deleted (`~seed`), a value interpolating a key the config lacks, an unknown
top-level key (`+iteration=3000`, a typo that would change nothing) are refused before any value is read.
Then the types, by one mechanism (config/schema.py): a node with a `_target_` (task, net, optimizer, regularizer,
data, trainer, callbacks, metrics) is held to its target's constructor signature, its annotations the one source of
truth (a new option is checked by being annotated); the primary config's own keys, which no constructor takes, by
the dataclass `Primary` below. Hydra passes `iterations=abc` through as a string, `iterations=2.5` as a float and
`net.need_sigmoid=no` as the string 'no'; without this check they end in a traceback from deep inside a
constructor, are silently truncated, or act as true. Each refusal names the key, the value given and what is
expected, in the one-paragraph DIPError that dip-run prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf

from ..errors import DIPError
from .compose import CONF
from .schema import Check, Ge, Gt, Le, Says, check_fields, check_targets

# The largest fixed chunk. A chunk's history rows (runs x chunk x columns) stay on the device until its end, the
# one host read where progress is logged, stopping rules are asked and a checkpoint is written: chunk=1000000000
# meant no progress line and gigabytes resident for as long as the run. 10000 iterations are minutes on a CPU and
# 10 to 60 s on a GPU at the paper's sizes; chunk=auto stays at 500 or less (data/schedule.py).
MAX_CHUNK = 10_000
MAX_SEED = 2**32 - 1  # what seeding takes (numpy's and Lightning's seed_everything: 0..2**32-1)


def metric_list(v: Any) -> bool:
    return "psnr" in v and all(m.isidentifier() for m in v) and len(set(v)) == len(v)


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Bounds on torch.optim's settings: its signatures type them (float) but bound nothing."""

    lr: Annotated[float, Gt(0), Says("a finite learning rate > 0, e.g. optimizer.lr=0.01")]
    momentum: Annotated[float, Ge(0), Says("a finite momentum >= 0, e.g. 0.9")]
    weight_decay: Annotated[float, Ge(0), Says("a finite weight decay >= 0")]


@dataclasses.dataclass(frozen=True)
class Primary:
    """The schema of conf/train.yaml's own keys (no constructor takes them); a key absent from the config is not
    checked. The speed keys (precision, channels_last, compile, cuda_graph) are SpeedOptions.from_config's
    (speed.py), the sweep's (gpu_lease, hydra.launcher) the launchers'."""

    iterations: Annotated[int, Ge(1), Says("a whole number of DIP steps >= 1, e.g. iterations=3000")]
    seed: Annotated[
        int, Ge(0), Le(MAX_SEED), Says(f"a whole number from 0 to {MAX_SEED} (what seeding takes), e.g. seed=0")
    ]
    ensemble: Annotated[
        Literal["auto"] | Annotated[int, Ge(1)],
        Says("'auto' (the task's GT-free recipe without ground truth, else 1) or a number of seeds >= 1, e.g. 4"),
    ]
    gt_free_ensemble: Annotated[
        dict[str, Annotated[int, Ge(1)]], Says("a mapping of devices to seeds >= 1, e.g. {cpu: 2, cuda: 4}")
    ]
    gt_free_regularizer: Annotated[
        dict[str, str | Annotated[int, Ge(1)] | None] | None,
        Says("null or {name: a conf/regularizer option, iterations: steps >= 1, rule: a callbacks preset or null}"),
    ]
    metrics: Annotated[
        list[str],
        Check(metric_list, ""),
        Says(
            "a list of metric names that holds psnr, each once (psnr, ssim, or a metric/<name>.yaml of yours), e.g. "
            "'metrics=[psnr,ssim]'"
        ),
    ]
    chunk: Annotated[
        Literal["auto"] | Annotated[int, Ge(1), Le(MAX_CHUNK)],
        Says(
            f"'auto' or a whole number of iterations per Lightning step from 1 to {MAX_CHUNK} (a chunk's history is "
            "held on the device until its end, where progress is logged and stopping rules are asked)"
        ),
    ]
    cpu_threads: Annotated[Annotated[int, Ge(1)] | None, Says("null (the free CPUs) or a whole number of threads >= 1")]
    checkpoint_every: Annotated[Annotated[int, Ge(1)] | None, Says("null (off) or a whole number of iterations >= 1")]
    resume_force: Annotated[bool, Says("true (resume a checkpoint of other code) or false")]
    optimizer: Optimizer


def validate_config(cfg: DictConfig) -> None:
    """Raise a DIPError for the first problem: a required key missing, an interpolation of a key the config lacks,
    an unknown top-level key, a top-level value of the wrong type or range (`Primary`), a key or value of a node with
    a `_target_` that its target's signature does not take (config/schema.py)."""
    check_keys(cfg)
    check_fields(cfg, Primary)
    n = cfg.get("ensemble", 1)
    if isinstance(n, int) and n > 1 and cfg.seed + n - 1 > MAX_SEED:
        raise DIPError(
            f"ensemble={n} with seed={cfg.seed} trains seeds {cfg.seed} to {cfg.seed + n - 1}, past {MAX_SEED} "
            f"(the largest seed); expected seed + ensemble - 1 <= {MAX_SEED}, e.g. seed=0."
        )
    check_targets(cfg)


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
