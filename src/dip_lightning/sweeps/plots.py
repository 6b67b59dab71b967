"""dip-gather's results.png: the mean curve of each setting over its finished jobs."""

from __future__ import annotations

from pathlib import Path

from .. import history as h
from ..data.io import atomic_write
from ..errors import DIPError
from ..history import read_curves
from .tables import short_setting


def read_curve(job: Path) -> dict[str, list[float]] | None:
    path = job / "curves.csv"
    if not path.exists():
        return None
    try:
        return read_curves(path)
    except (DIPError, ValueError, OSError, UnicodeDecodeError):  # a damaged or foreign file: no curve, not a crash
        return None


def curve_labels(curves: list[dict[str, list[float]]]) -> tuple[str, str, str]:
    """Which history column results.png plots, its title and its axis label: with ground truth psnr_gt_avg, what
    psnr_final measures (the averaged output where averaging is on, else the output: then it equals psnr_gt);
    without, psnr_fit (the fit to the observation)."""
    if any(any(v == v for v in c.get(h.PSNR_GT, [])) for c in curves):
        averaged = any(c.get(h.PSNR_GT_AVG) != c.get(h.PSNR_GT) for c in curves)
        what = "the averaged output" if averaged else "the output (no averaging)"
        return (
            h.PSNR_GT_AVG,
            f"PSNR of {what} vs the ground truth, mean per setting",
            f"PSNR of {what} vs ground truth (dB)",
        )
    return (
        h.PSNR_FIT,
        "PSNR of A(output) vs the observation (no ground truth), mean per setting",
        "PSNR of A(output) vs observation (dB)",
    )


def plot(sweep_dir: Path, rows: list[dict], path: Path, summary: list[dict] | None = None) -> Path | None:
    """The mean curve of each setting over its finished jobs (curve_labels: what psnr_final measures, with ground
    truth), each labelled with its mean result and its mean oracle (summary)."""
    curves: dict[str, list[dict]] = {}
    for r in rows:
        curve = read_curve(sweep_dir / r["job"]) if r["status"] == "ok" else None
        if curve and curve.get(h.ITERATION):
            curves.setdefault(r["setting"], []).append(curve)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    key, title, ylabel = curve_labels([c for cs in curves.values() for c in cs])
    by_setting = {s["setting"]: s for s in summary or []}
    fig, ax = plt.subplots(figsize=(9, 5))
    for setting, cs in curves.items():
        longest = max(cs, key=lambda c: len(c[h.ITERATION]))
        n = len(longest[h.ITERATION])
        grid = np.full((len(cs), n), np.nan)  # early-stopped jobs are shorter: average what is there
        for i, c in enumerate(cs):
            grid[i, : len(c[key])] = c[key]
        with np.errstate(all="ignore"):
            mean = np.nanmean(grid, axis=0)
        s = by_setting.get(setting, {})
        scores = [
            f"{name} {s[f'{k}_mean']:.2f} dB"
            for k, name in (("psnr_result", "result"), ("psnr_best", "best (oracle)"))
            if s.get(f"{k}_mean") is not None
        ]
        shown = short_setting(setting)
        legend = f"{shown} ({len(cs)} jobs{'; ' + ', '.join(scores) if scores and key != h.PSNR_FIT else ''})"
        ax.plot(longest[h.ITERATION], mean, lw=1, label=legend)
    ax.set(xlabel="iteration", ylabel=ylabel, title=title)
    ax.title.set_fontsize(12)
    ax.legend(fontsize=10)  # readable at 100%
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path
