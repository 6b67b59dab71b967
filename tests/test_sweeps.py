"""Sweeps: image folders/globs, dip-gather, and multiruns with the joblib, submitit_local and Optuna presets."""

import csv
import importlib.util
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_NET, dip_cli, save_png
from hydra.core.hydra_config import HydraConfig

from dip_lightning.errors import DIPError
from dip_lightning.run_metrics import result_psnr
from dip_lightning.sweeps.gather import gather
from dip_lightning.sweeps.gather import main as gather_main
from dip_lightning.sweeps.images import expand_arguments, expand_images

ROOT = Path(__file__).resolve().parents[1]

FAST = [*TINY_NET, "data.crop=32", "callbacks=none", "chunk=10", "iterations=20", "cpu_threads=1"]


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """Two good photos and one broken file that looks like a PNG."""
    import skimage.data

    d = tmp_path / "imgs"
    d.mkdir()
    save_png(d / "a.png", skimage.data.astronaut()[100:164, 100:164])
    save_png(d / "b.png", skimage.data.coffee()[100:164, 100:164])
    (d / "c_broken.png").write_text("not an image")
    (d / "notes.txt").write_text("not an image either, and not picked up")
    return d


def test_folders_and_globs_expand_to_image_files(image_dir):
    files = [str(image_dir / n) for n in ("a.png", "b.png", "c_broken.png")]
    assert expand_images(str(image_dir)) == files
    assert expand_images(f"{image_dir}/[ab].png") == files[:2]
    assert expand_images(f"glob({image_dir}/*.png)") == files
    assert expand_images("astronaut") is None and expand_images(files[0]) is None  # one image: left alone
    with pytest.raises(DIPError, match="matches no image file"):
        expand_images(f"{image_dir}/*.jpg")
    args = expand_arguments([f"data.image={image_dir}/a*", "optimizer.lr=0.1,0.01"])
    assert args == [f"data.image='{files[0]}'", "optimizer.lr=0.1,0.01"]
    with pytest.raises(DIPError, match="both folders"):
        expand_arguments([f"data.image={image_dir}", f"data.observed={image_dir}"])


def fake_job(sweep: Path, num: int, overrides: list[str], metrics=None, error=None, curve=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.json").write_text(json.dumps({"error": error}))
    if curve is not None:
        rows = ["iteration,loss,psnr_fit,psnr_gt,psnr_gt_avg"]
        rows += [f"{i},0.1,20,{v},{v}" for i, v in enumerate(curve)]
        (job / "curves.csv").write_text("\n".join(rows) + "\n")


def test_gather_a_partial_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    m = {"psnr_final": 20.0, "psnr_best": 25.0, "best_step": 3, "iterations": 5, "seed": 0}
    fake_job(sweep, 0, ["data.image=a.png", "optimizer.lr=0.01", "seed=0"], metrics=m, curve=[20, 24, 25])
    fake_job(
        sweep,
        1,
        ["data.image=b.png", "optimizer.lr=0.01", "seed=0"],
        metrics={**m, "psnr_best": 27.0},
        curve=[21, 26, 27, 26],
    )
    fake_job(sweep, 2, ["data.image=a.png", "optimizer.lr=0.1", "seed=0"], error="lr too high: diverged")
    fake_job(sweep, 10, ["data.image=b.png", "optimizer.lr=0.1", "seed=0"])  # died, or still running
    rows, summary = gather(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert rows[2]["error"] == "lr too high: diverged" and "no metrics.json" in rows[3]["error"]
    by_setting = {s["setting"]: s for s in summary}
    assert set(by_setting) == {"optimizer.lr=0.01", "optimizer.lr=0.1"}
    ok = by_setting["optimizer.lr=0.01"]
    assert ok["psnr_best_mean"] == 26.0 and ok["psnr_best_std"] == pytest.approx(np.std([25, 27], ddof=1))
    assert by_setting["optimizer.lr=0.1"]["failed"] == 2 and by_setting["optimizer.lr=0.1"]["psnr_best_mean"] is None
    for name in ("results.csv", "results.md", "summary.csv", "table.csv", "table.md", "table.tex", "results.png"):
        assert (sweep / name).exists(), name
    assert gather_main([str(sweep)]) == 0 and "lr too high" in capsys.readouterr().out
    assert gather_main([str(tmp_path / "nothing")]) == 2


def run_sweep(args, cwd, timeout=400, returncode=0):
    proc = dip_cli(["-m", *args], cwd=cwd, timeout=timeout)
    assert proc.returncode == returncode, proc.stderr[-3000:] + proc.stdout[-3000:]
    return proc


@pytest.fixture
def root_logger():
    """Hydra's launcher configures logging in this process; the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("hydra_restore_singletons", "root_logger")  # Hydra's fixtures: its pytest plugin
def test_the_dip_sweeper_runs_every_batch_past_a_crashed_job(tmp_path, capsys, hydra_sweep_runner):
    """What BasicSweeper does otherwise: it re-raises a crashed job's exception, which ends the sweep there. Job x=2
    crashes, x=3 ends as a DIPError does (error.json, NaN); one job per batch, so x=3 and x=4 are later batches. A
    multirun in this process, without DIP; Hydra's singletons (HydraConfig, which dip-run reads) are put back after."""

    def task(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        if cfg.x == 2:
            raise RuntimeError("boom")
        (out / ("error.json" if cfg.x == 3 else "done")).write_text("{}")
        return math.nan if cfg.x == 3 else float(cfg.x)

    sweep = tmp_path / "sweep"
    args = ["hydra/sweeper=dip", "hydra.sweeper.max_batch_size=1", "hydra.job.chdir=false", "+x=1,2,3,4"]
    with pytest.raises(SystemExit) as exit_, hydra_sweep_runner(__file__, None, task, None, None, args, sweep):
        pass
    out = "".join(capsys.readouterr())
    assert exit_.value.code == 1 and "RuntimeError: boom" in out and "2 of 4 jobs failed" in out
    assert [(sweep / str(i) / "done").exists() for i in range(4)] == [True, False, False, True]
    assert (sweep / "1" / ".hydra" / "overrides.yaml").exists()  # the crashed job ran, and left its folder


def test_the_hydra_range_is_pyprojects_and_a_hydra_outside_it_warns(monkeypatch):
    import hydra
    from packaging.specifiers import SpecifierSet

    from hydra_plugins.dip_sweepers import dip_sweepers

    required = re.search(r'"hydra-core([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert SpecifierSet(required) == SpecifierSet(dip_sweepers.HYDRA_RANGE)
    monkeypatch.setattr(hydra, "__version__", "1.4.0")  # outside the range: importing the sweeper warns
    spec = importlib.util.spec_from_file_location("dip_sweepers_copy", dip_sweepers.__file__)
    with pytest.warns(RuntimeWarning, match="hydra-core 1.4.0 is outside"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_joblib_sweep_of_three_images_one_broken_times_two_settings(tmp_path, image_dir):
    sweep = tmp_path / "sweep"
    proc = run_sweep(
        [
            "launcher=joblib",
            "hydra.launcher.n_jobs=2",
            f"data.image={image_dir}",
            "optimizer.lr=0.01,0.005",
            "logger=none",
            *FAST,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        returncode=1,
    )  # every job ran; the exit status says that some failed
    assert "2 of 6 jobs failed" in proc.stderr + proc.stdout
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == [str(i) for i in range(6)]  # job numbers: folders never collide
    good = [p for p in jobs if (p / "metrics.json").exists()]
    failed = [p for p in jobs if (p / "error.json").exists()]
    assert len(good) == 4 and len(failed) == 2
    assert all("c_broken.png" in json.loads((p / "error.json").read_text())["error"] for p in failed)
    assert all((p / "curves.csv").exists() and (p / "restored.png").exists() for p in good)
    assert gather_main([str(sweep)]) == 0
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(r["status"] == "ok" for r in rows) == 4
    assert sorted(r["image"] for r in rows if r["status"] == "failed") == ["c_broken"] * 2  # named, not a path
    assert sorted(Path(r["image_path"]).name for r in rows if r["status"] == "failed") == ["c_broken.png"] * 2
    summary = (sweep / "results.md").read_text()
    assert "optimizer.lr=0.01 | 3 | 2 | 1 |" in summary and "optimizer.lr=0.005 | 3 | 2 | 1 |" in summary


def test_joblib_gpus_with_two_jobs_per_gpu_uses_the_second_slot(tmp_path, image_dir):
    """launcher=joblib_gpus through Hydra with gpu_lease.jobs_per_gpu=2, on the CPU with a simulated GPU 0 whose
    first slot this test holds: the jobs can only run in the second slot (with one job per GPU they would wait)."""
    import fcntl
    import os

    locks, sweep = tmp_path / "locks", tmp_path / "sweep"
    locks.mkdir()
    held = os.open(locks / "gpu0.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        run_sweep(
            [
                "launcher=joblib_gpus",
                "trainer=cpu",
                "hydra.launcher.n_jobs=1",
                "gpu_lease.devices=[0]",
                "gpu_lease.jobs_per_gpu=2",
                f"gpu_lease.lock_dir={locks}",
                "gpu_lease.poll_seconds=0.1",
                f"data.image={image_dir / 'a.png'}",
                "seed=0",
                "logger=none",
                *FAST,
                f"hydra.sweep.dir={sweep}",
            ],
            cwd=tmp_path,
        )
    finally:
        os.close(held)
    assert (sweep / "0" / "metrics.json").exists()
    assert (locks / "gpu0.slot1.lock").exists()


def test_submitit_local_sweep_with_wandb_groups(tmp_path, image_dir):
    sweep = tmp_path / "sweep_sub"
    run_sweep(
        [
            "launcher=submitit_local",
            f"data.image='{image_dir}/[ab].png'",
            "logger=wandb",
            *FAST,
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 2 and all((p / "metrics.json").exists() for p in jobs)
    for job in jobs:
        # offline W&B run inside the job folder; its group is the sweep's name, its tags name task, net and image
        (run_file,) = list((job / "wandb").glob("offline-run-*/run-*.wandb"))
        data = run_file.read_bytes()
        image = json.loads((job / "metrics.json").read_text())["image"]
        assert sweep.name.encode() in data and b"denoising" in data and Path(image).stem.encode() in data
        assert b"psnr_best" in data  # the summary metrics


def test_optuna_preset_maximises_the_mean_over_images(tmp_path, image_dir):
    sweep = tmp_path / "sweep_optuna"
    proc = dip_cli(
        [
            "hparams_search=dip_optuna",
            f"data.image='{image_dir}/[ab].png'",
            "hydra.sweeper.n_trials=2",
            "logger=none",
            *FAST,
            "iterations=10",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optimizer.lr", "task.reg_noise_std", "net"}
    jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(jobs) == 4  # 2 trials x 2 images, each in its own numbered folder
    values = {}
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        trial = " ".join(o for o in overrides if not o.startswith("data.image"))
        values.setdefault(trial, []).append(result_psnr(json.loads((job / "metrics.json").read_text())))
    # the default target is each run's result (callbacks=none: psnr_final), not the oracle psnr_best
    assert result["best_value"] == pytest.approx(max(np.mean(v) for v in values.values()), abs=1e-4)
