"""Everything a run leaves in its folder, each file written atomically; metrics.json last (it marks a finished run)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .. import history as h
from ..data.io import atomic_write, write_image, write_json
from ..errors import DIPError
from .folder import free_mb


def plot_curves(path: Path, history: dict[str, list[float]], marks: dict[str, int | None]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = history[h.ITERATION]
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(its, history[h.LOSS], lw=0.8)
    if min(history[h.LOSS], default=0) > 0:  # a maximised activation's loss is negative: linear axis then
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="iteration", ylabel="loss (MSE to observation)", title="loss")
    ax_psnr.plot(its, history[h.PSNR_FIT], lw=0.8, label="PSNR vs observation")
    if any(v == v for v in history[h.PSNR_GT]):
        ax_psnr.plot(its, history[h.PSNR_GT], lw=0.8, label="PSNR vs ground truth")
        if history[h.PSNR_GT_AVG] != history[h.PSNR_GT]:
            ax_psnr.plot(its, history[h.PSNR_GT_AVG], lw=0.8, label="PSNR of averaged output")
    for label, step in marks.items():
        if step is not None:
            ax_psnr.axvline(step, ls="--", lw=0.8, color="gray")
            ax_psnr.annotate(label, (step, ax_psnr.get_ylim()[0]), rotation=90, fontsize=8, va="bottom")
    ax_psnr.set(xlabel="iteration", ylabel="dB", title="PSNR")
    ax_psnr.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def write_curves(path: Path, history: dict[str, list[float]]) -> Path:
    """The per-iteration history as CSV (iteration, loss, PSNRs): dip-gather averages these over a sweep."""
    keys = list(history)

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(",".join(keys) + "\n")
            for row in zip(*(history[k] for k in keys)):
                f.write(",".join(str(v) if isinstance(v, int) else f"{v:.6g}" for v in row) + "\n")

    return atomic_write(path, write)


def write_run_outputs(
    run_dir: Path,
    images: dict[str, torch.Tensor],
    history: dict[str, list[float]],
    metrics: dict,
    config_yaml: str,
    marks: dict[str, int | None],
) -> list[Path]:
    """Every output of a finished run, all or none (`write_all`): its images, curves, config.yaml, metrics.json."""
    writes = [(f"{name}.png", lambda path, img=img: write_image(path, img)) for name, img in images.items()]
    writes += [
        ("curves.png", lambda path: plot_curves(path, history, marks)),
        ("curves.csv", lambda path: write_curves(path, history)),
    ]
    return write_all(run_dir, writes, config_yaml, metrics)


def write_all(run_dir: Path, writes: list[tuple[str, Callable[[Path], Any]]], config_yaml: str, metrics: dict):
    """`writes` (file name, function writing it to a path), then config.yaml and metrics.json, all or none: written
    into a staging folder inside the run folder, then renamed into place, metrics.json last (it marks a finished
    run). A write that fails (a full disk) leaves none of them, and its DIPError names the file and the space left.
    A run's and an ensemble's outputs alike go through here."""
    run_dir = Path(run_dir)
    staging, current = None, "the staging folder"
    writes = [
        *writes,
        ("config.yaml", lambda path: atomic_write(path, lambda tmp: Path(tmp).write_text(config_yaml))),
        ("metrics.json", lambda path: write_json(path, metrics)),  # last: it marks a finished run
    ]
    try:
        staging = Path(tempfile.mkdtemp(prefix=".outputs-", dir=run_dir))
        for current, write in writes:
            write(staging / current)
        for current, _ in writes:  # renames within one folder need no space
            os.replace(staging / current, run_dir / current)
    except OSError as err:
        raise DIPError(
            f"The run's outputs could not be written to {str(run_dir)!r}: {err.strerror or err} while writing "
            f"{current} ({free_mb(run_dir)} MB free there), so none of them was kept. Free some space (or choose "
            "another folder with hydra.run.dir=) and run again; with checkpoint_every=N, resume=<this folder> goes "
            "on from the last checkpoint."
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return [run_dir / name for name, _ in writes]
