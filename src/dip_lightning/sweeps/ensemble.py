"""Seed ensembles: runs that differ only in their seed, averaged into one image (the paper's "averaged over 2
runs", 31.00 dB on denoise9 against 30.43 for one run).

Each run's chosen image (restored.png: its stopping rule's choice, so an ensemble of GT-free choices uses no ground
truth) is averaged pixel by pixel. Where the runs had a ground truth (ground_truth.png), the average is scored in
the runs' own convention (metrics.json's psnr_convention), next to each member's score. The MSE of an average is
never above the members' mean MSE (convexity), so the ensemble is at least as good as the average member.

The members must have restored one observation: a run that simulates its noise may draw other noise than its
neighbour, and the average of restorations of different inputs would credit DIP with a gain it did not make. Each
run's metrics.json records `observation_sha256`; members whose checksums differ are refused, and members without
one (runs written before it was recorded) are averaged but reported as unverified.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.io import average_images as average
from ..data.io import read_image, write_image
from ..errors import DIPError
from ..metrics import score as score_in


def score(image: torch.Tensor, truth: torch.Tensor, convention: str = "rgb") -> float:
    """PSNR of `image` against `truth` in a run's convention (metrics.json's psnr_convention)."""
    return float(score_in(image, truth, convention))


def _observation_sha256(job: Path) -> str | None:
    """The checksum of the observation `job` restored, from its metrics.json; None when it has none."""
    try:
        metrics = json.loads((job / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # no readable metrics.json: nothing to verify with, not a reason to refuse
    value = metrics.get("observation_sha256") if isinstance(metrics, dict) else None
    return value if isinstance(value, str) and value else None


def check_observations(jobs: list[Path]) -> str:
    """Whether `jobs` restored one observation: "same" when all recorded one checksum, "unverified" when some or
    all recorded none; raises DIPError when two recorded checksums differ (the runs restored different inputs)."""
    sums = {job: _observation_sha256(job) for job in jobs}
    recorded = {s for s in sums.values() if s is not None}
    if len(recorded) > 1:
        listing = ", ".join(f"{job} ({s[:12] if s else 'no checksum'})" for job, s in sums.items())
        raise DIPError(
            f"The runs of an ensemble restored different observations (observation_sha256 in their "
            f"metrics.json: {listing}); their noise was simulated differently (e.g. with different "
            "task.noise_seed), so their average would mix restorations of different inputs and credit DIP with "
            "the difference. Ensemble only runs of one observation: the same task.noise_seed, or a given "
            "data.observed."
        )
    # a mix of recorded and missing checksums proves nothing about the missing ones: unverified, not refused
    return "same" if recorded and None not in sums.values() else "unverified"


def ensemble(jobs: list[Path], out: Path, image: str = "restored", convention: str = "rgb") -> dict:
    """Average `<image>.png` over the job folders `jobs`, write it to `out`; returns its PSNR (when the jobs have
    ground_truth.png), the members' mean PSNR and whether they restored one observation ("same" or
    "unverified"; different observations raise DIPError before anything is written)."""
    observations = check_observations(jobs)
    paths = [job / f"{image}.png" for job in jobs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DIPError(f"An ensemble needs {image}.png in every run; missing: {', '.join(missing)}.")
    write_image(out, average(paths))
    mean = read_image(out)  # scored as written (8-bit), so the table and the file agree
    result = {
        "members": len(jobs),
        "image": str(out),
        "psnr": None,
        "psnr_members_mean": None,
        "observations": observations,
    }
    truth_path = jobs[0] / "ground_truth.png"
    if truth_path.is_file():
        truth = read_image(truth_path)
        members = [score(read_image(p), truth, convention) for p in paths]
        result.update(psnr=score(mean, truth, convention), psnr_members_mean=sum(members) / len(members))
    return result
