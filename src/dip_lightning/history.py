"""The per-iteration history of a run: the one contract for its column names.

DIPTask records one row per iteration on the device (COLUMNS, in that order) and the host appends it to
`task.history` ({ITERATION: [...], column: [...]}); curves.csv, the loggers, the progress line, dip-gather's curve
plot and the paper tables all read it by these names. Code outside this module names a column through these
constants, so a renamed column fails in one place (an AttributeError here, or `read_curves` naming the missing
column of an older file), not as a silently empty plot.
"""

from __future__ import annotations

import csv
from pathlib import Path

ITERATION = "iteration"
LOSS = "loss"  # the training loss: MSE of A(output) against the observation
PSNR_OBSERVED = "psnr_observed"  # PSNR of A(output) against the observation
PSNR_GT = "psnr_gt"  # PSNR of the raw output against the ground truth (NaN without one)
PSNR_GT_AVG = "psnr_gt_avg"  # PSNR of the averaged output against the ground truth (= PSNR_GT without averaging)
COLUMNS = (LOSS, PSNR_OBSERVED, PSNR_GT, PSNR_GT_AVG)  # one on-device history row


def read_curves(path: str | Path) -> dict[str, list[float]]:
    """A run's curves.csv as {column: values}; a file without the columns of COLUMNS is named as such."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        header = rows[0].keys() if rows else []
    missing = [c for c in (ITERATION, *COLUMNS) if c not in header]
    if rows and missing:
        from .errors import DIPError

        raise DIPError(
            f"{str(path)!r} lacks the history columns {missing}; expected a curves.csv written by "
            f"dip-run with the columns {', '.join((ITERATION, *COLUMNS))}."
        )
    return {k: [float(r[k]) for r in rows] for k in header}
