"""Check the composed config's values and types once, before anything is built.

Hydra passes `iterations=abc` through as a string and `iterations=2.5` as a float; without this check they end in
a traceback from deep inside a constructor, or are silently truncated. Each rule names the key, the value given
and what is expected, in the one-paragraph DIPError that dip-run prints.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .errors import DIPError


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


def chunk(v: Any) -> bool:
    return v == "auto" or positive_int(v)


def channel_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(positive_int(x) for x in v)


def metric_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and "psnr" in v and all(m in ("psnr", "ssim") for m in v)


def skip_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)


# key -> (rule, what is expected). A key that is absent from the config (another net, optimizer, task) is skipped.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "iterations": (positive_int, "a whole number of DIP steps >= 1, e.g. iterations=3000"),
    "seed": (_is_int, "a whole number, e.g. seed=0"),
    "ensemble": (positive_int, "a number of seeds >= 1 (1: one run), e.g. ensemble=4"),
    "metrics": (metric_list, "a list of metrics that holds psnr, from psnr and ssim, e.g. 'metrics=[psnr,ssim]'"),
    "chunk": (chunk, "'auto' or a whole number of iterations per Lightning step >= 1"),
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
    """Raise a DIPError for the first value that breaks its rule."""
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


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
