"""Seed ensembles: runs that differ only in their seed, averaged into one image (the paper's "averaged over 2
runs", 31.00 dB on denoise9 against 30.43 for one run).

Each run's chosen image (restored.png: its stopping rule's choice, so an ensemble of GT-free choices uses no ground
truth) is averaged pixel by pixel. Where the runs had a ground truth (ground_truth.png), the average is scored in
the runs' own convention (metrics.json's psnr_convention), next to each member's score. The MSE of an average is
never above the members' mean MSE (convexity), so the ensemble is at least as good as the average member.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.io import read_image, write_image
from ..errors import DIPError
from ..metrics import score as score_in


def score(image: torch.Tensor, truth: torch.Tensor, convention: str = "rgb") -> float:
    """PSNR of `image` against `truth` in a run's convention (metrics.json's psnr_convention)."""
    return float(score_in(image, truth, convention))


def average(paths: list[Path]) -> torch.Tensor:
    """The pixel-wise mean of the images at `paths` (all of one size)."""
    images = [read_image(p) for p in paths]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        listing = ", ".join(f"{p} {tuple(img.shape[-2:])}" for p, img in zip(paths, images))
        raise DIPError(
            f"The runs of an ensemble have images of different sizes ({listing}); expected runs that "
            "differ only in their seed."
        )
    return torch.stack(images).mean(0)


def ensemble(jobs: list[Path], out: Path, image: str = "restored", convention: str = "rgb") -> dict:
    """Average `<image>.png` over the job folders `jobs`, write it to `out`; returns its PSNR (when the jobs have
    ground_truth.png) and the members' mean PSNR."""
    paths = [job / f"{image}.png" for job in jobs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DIPError(f"An ensemble needs {image}.png in every run; missing: {', '.join(missing)}.")
    write_image(out, average(paths))
    mean = read_image(out)  # scored as written (8-bit), so the table and the file agree
    result = {"members": len(jobs), "image": str(out), "psnr": None, "psnr_members_mean": None}
    truth_path = jobs[0] / "ground_truth.png"
    if truth_path.is_file():
        truth = read_image(truth_path)
        members = [score(read_image(p), truth, convention) for p in paths]
        result.update(psnr=score(mean, truth, convention), psnr_members_mean=sum(members) / len(members))
    return result
