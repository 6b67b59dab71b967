"""Seed ensembles only average runs that restored one observation (metrics.json's observation_sha256).

Fake sweeps written by hand: each job folder has .hydra/overrides.yaml, metrics.json, restored.png and
ground_truth.png, which is all dip-gather reads; no DIP run is needed.
"""

import csv
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from dip_lightning.data.io import write_image
from dip_lightning.errors import DIPError
from dip_lightning.sweeps.gather import ensembles, gather
from dip_lightning.sweeps.gather import main as gather_main

SHA_A = hashlib.sha256(b"observation a").hexdigest()
SHA_B = hashlib.sha256(b"observation b").hexdigest()


def fake_job(sweep: Path, num: int, seed: int, sha: str | None, image: str = "a.png") -> Path:
    """A finished job of seed `seed` on `image`; `sha` None: a metrics.json written before the checksum was."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"data.image={image}", f"seed={seed}"]))
    metrics = {"psnr_final": 20.0, "psnr_best": 25.0, "iterations": 5, "seed": seed, "psnr_convention": "rgb"}
    if sha is not None:
        metrics["observation_sha256"] = sha
    (job / "metrics.json").write_text(json.dumps(metrics))
    gen = torch.Generator().manual_seed(num)
    truth = torch.full((3, 8, 8), 0.5)
    write_image(job / "ground_truth.png", truth)
    write_image(job / "restored.png", (truth + 0.1 * torch.randn(3, 8, 8, generator=gen)).clamp(0, 1))
    return job


def read_ensembles(sweep: Path) -> list[dict]:
    with open(sweep / "ensembles.csv") as f:
        return list(csv.DictReader(f))


def test_runs_of_one_observation_are_averaged_as_same(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        fake_job(sweep, seed, seed, SHA_A)
    rows, _ = gather(sweep)
    (row,) = ensembles(sweep, rows)
    assert row["observations"] == "same" and row["members"] == 2 and row["psnr_ensemble"] is not None
    (written,) = read_ensembles(sweep)
    assert written["observations"] == "same" and (sweep / written["file"]).is_file()
    assert "| same |" in (sweep / "ensembles.md").read_text()


def test_runs_of_different_observations_are_refused_before_anything_is_written(tmp_path):
    sweep = tmp_path / "sweep"
    # a good group first (image a) and a refused one second (image b): nothing of either may be written
    fake_job(sweep, 0, 0, SHA_A)
    fake_job(sweep, 1, 1, SHA_A)
    fake_job(sweep, 2, 0, SHA_A, image="b.png")
    fake_job(sweep, 3, 1, SHA_B, image="b.png")
    rows, _ = gather(sweep)
    with pytest.raises(DIPError) as err:
        ensembles(sweep, rows)
    message = str(err.value)
    assert str(sweep / "2") in message and str(sweep / "3") in message
    assert SHA_A[:12] in message and SHA_B[:12] in message and SHA_A[:13] not in message  # shortened
    assert "different observations" in message and "task.noise_seed" in message and "data.observed" in message
    assert "\n" not in message  # one paragraph
    assert not (sweep / "ensembles.csv").exists() and not (sweep / "ensembles.md").exists()
    assert not (sweep / "ensembles").exists()  # not even the good group's image


def test_runs_without_checksums_are_averaged_as_unverified(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, 0, None)  # sweeps written before observation_sha256 was recorded
    fake_job(sweep, 1, 1, None)
    fake_job(sweep, 2, 0, SHA_A, image="b.png")  # a mix: one recorded, one not; unverified, not refused
    fake_job(sweep, 3, 1, None, image="b.png")
    rows, _ = gather(sweep)
    assert [r["observations"] for r in ensembles(sweep, rows)] == ["unverified", "unverified"]
    assert [r["observations"] for r in read_ensembles(sweep)] == ["unverified", "unverified"]
    assert (sweep / "ensembles.md").read_text().count("| unverified |") == 2


def test_dip_gather_reports_different_observations_as_an_error(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, 0, SHA_A)
    fake_job(sweep, 1, 1, SHA_B)
    # dip-gather's exit status for a DIPError (a bad sweep dir, too few seeds, and this) is 2
    assert gather_main([str(sweep), "--ensemble", "seed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(sweep / "0") in err and str(sweep / "1") in err
    assert "Traceback" not in err
    assert not (sweep / "ensembles.csv").exists() and not (sweep / "ensembles.md").exists()
