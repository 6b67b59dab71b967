"""The per-iteration history of a run: the one contract for its column names.

DIPTask records one row per iteration on the device (COLUMNS, in that order) and the host appends it to
`task.history` ({ITERATION: [...], column: [...]}); curves.csv, the loggers, the progress line, dip-gather's curve
plot and the paper tables all read it by these names. Code outside this module names a column through these
constants, so a renamed column fails in one place (an AttributeError here, or `read_curves` naming the missing
column of an older file), not as a silently empty plot.

A column's name means one thing across a run's outputs: none is also a key of metrics.json (run_metrics.KEYS),
whose values W&B would show under the same name as the curve's. `psnr_observed` there is the corrupted input's
PSNR against the ground truth; the fit to the observation, which the history called `psnr_observed` before, is
PSNR_FIT. Files and histories written before (curves.csv, a checkpoint's history) are read with their old names
mapped to the new ones (RENAMED).
"""

from __future__ import annotations

import csv
from pathlib import Path

ITERATION = "iteration"
LOSS = "loss"  # the training loss: MSE of A(output) against the observation
PSNR_FIT = "psnr_fit"  # PSNR of A(output) against the observation: how well the net fits what it was given
PSNR_GT = "psnr_gt"  # PSNR of the raw output against the ground truth (NaN without one)
PSNR_GT_AVG = "psnr_gt_avg"  # PSNR of the averaged output against the ground truth (= PSNR_GT without averaging)
COLUMNS = (LOSS, PSNR_FIT, PSNR_GT, PSNR_GT_AVG)  # one on-device history row
RENAMED = {"psnr_observed": PSNR_FIT}  # old column name -> its name now


def row(**columns):
    """One on-device history row (a 1-d tensor in COLUMNS order) from its columns by name: LOSS and PSNR_FIT, with
    or without the two ground-truth columns (a run without ground truth leaves them out: the history keeps NaN)."""
    import torch

    names = [c for c in COLUMNS if c in columns]
    if names != list(COLUMNS[: len(names)]) or len(names) != len(columns) or len(names) < 2:
        raise ValueError(f"a history row takes {COLUMNS[:2]} and optionally {COLUMNS[2:]}; got {sorted(columns)}")
    return torch.stack([columns[c] for c in names])


def column(rows, name: str):
    """The column `name` of history rows (the last dimension in COLUMNS order): rows[..., index of name]."""
    return rows[..., COLUMNS.index(name)]


def upgrade(history: dict[str, list]) -> dict[str, list]:
    """`history` (a task's, or a curves.csv read as columns) with the old names of RENAMED given their new ones;
    a column that already has its new name is kept as it is."""
    out = {}
    for key, values in history.items():
        new = RENAMED.get(key)
        out[new if new is not None and new not in history else key] = values
    return out


def read_curves(path: str | Path) -> dict[str, list[float]]:
    """A run's curves.csv as {column: values}, older files' column names upgraded (RENAMED); a file without the
    columns of COLUMNS is named as such."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        header = list(rows[0].keys()) if rows else []
    names = list(upgrade(dict.fromkeys(header)))  # the header's columns under their names now
    missing = [c for c in (ITERATION, *COLUMNS) if c not in names]
    if rows and missing:
        from .errors import DIPError

        raise DIPError(
            f"{str(path)!r} lacks the history columns {missing}; expected a curves.csv written by "
            f"dip-run with the columns {', '.join((ITERATION, *COLUMNS))}."
        )
    return upgrade({k: [float(r[k]) for r in rows] for k in header})


def log_history(loggers: list, history: dict[str, list[float]], log_every: int, last: int | None = None) -> None:
    """A run's curves under their history names (history.COLUMNS: loss, psnr_fit, psnr_gt, psnr_gt_avg), every
    `log_every` iterations and the last row; `last`: only the last that many rows (the chunk the loop has just
    read). No history name is a metrics.json key, so W&B's summary of a curve is never a summary value's."""
    steps = history[ITERATION]
    if not loggers:
        return
    first = 0 if last is None else max(len(steps) - last, 0)
    for i in range(first, len(steps)):
        step = steps[i]
        if step % log_every == 0 or i == len(steps) - 1:
            row = {k: history[k][i] for k in history if k != ITERATION and i < len(history[k])}
            for logger in loggers:
                logger.log_metrics({k: v for k, v in row.items() if v == v}, step=step)
