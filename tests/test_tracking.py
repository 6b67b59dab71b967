"""Experiment tracking on the sweep path is what it is on the single path: every job of a pack and every member of
an ensemble, and the ensemble itself, is its own W&B run (id, name, config, curves on the iteration axis,
summary), named by task, image and setting and grouped by sweep; a packed job's W&B record equals its unpacked
twin's in everything but timing."""

import pytest
import torch
from conftest import TINY, compose_cfg, wandb_runs

from dip_lightning.run.job import Job, run, run_jobs

BASE = [o for o in TINY if o != "logger=none"] + ["logger=wandb", "cpu_threads=1", "chunk=10", "iterations=30"]
TIMING = (
    "_runtime",
    "_timestamp",
    "_wandb/runtime",
    "seconds",
    "wall_seconds",
    "iterations_per_second",
    "total_seconds",
    "pack_seconds",
    "pack",
)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def steps(record: dict) -> list[int]:
    return [int(h["trainer/global_step"]) for h in record["history"] if "loss" in h]


def untimed(values: dict) -> dict:
    return {
        k: v for k, v in values.items() if k not in TIMING and k != "paths" and not k.startswith("_")
    }  # paths: its folder


def test_each_job_of_a_pack_is_its_own_wandb_run_as_if_it_had_run_alone(tmp_path):
    jobs = [Job(compose_cfg([*BASE, f"seed={s}"]), tmp_path / f"job{s}") for s in (0, 1)]
    packed = run_jobs(jobs, pack=2)
    assert [m["pack"] for m in packed] == [2, 2]
    records = [wandb_runs(tmp_path / f"job{s}") for s in (0, 1)]
    assert [len(r) for r in records] == [1, 1]  # one W&B run in each job's own folder
    (first,), (second,) = records
    assert first["id"] != second["id"]
    assert first["config"]["seed"] == 0 and second["config"]["seed"] == 1
    assert first["summary"]["psnr_final"] == pytest.approx(packed[0]["psnr_final"])
    assert second["summary"]["psnr_final"] == pytest.approx(packed[1]["psnr_final"])
    assert steps(first) == steps(second) and steps(first)[-1] == 29  # each run's own curve, iteration as the step
    assert first["job_type"] == "denoising" and first["name"].startswith("denoising/astronaut")

    alone = run(compose_cfg([*BASE, "seed=1"]), tmp_path / "alone")  # the unpacked twin of the second job
    (twin,) = wandb_runs(tmp_path / "alone")
    assert alone["psnr_final"] == pytest.approx(packed[1]["psnr_final"], abs=1e-4)  # packs match within rounding
    assert steps(twin) == steps(second)
    assert untimed(twin["config"]) == untimed(second["config"])
    assert untimed(twin["summary"]).keys() == untimed(second["summary"]).keys()
    for key, value in untimed(twin["summary"]).items():
        if isinstance(value, float):
            assert second["summary"][key] == pytest.approx(value, abs=1e-3), key
    assert twin["tags"] == second["tags"]


def test_an_ensemble_is_a_wandb_run_of_its_own_beside_one_per_member(tmp_path):
    metrics = run(compose_cfg([*BASE, "ensemble=3"]), tmp_path / "ens")
    (ensemble,) = wandb_runs(tmp_path / "ens")
    members = [wandb_runs(tmp_path / "ens" / "members" / f"seed_{s}")[0] for s in (0, 1, 2)]
    assert len({r["id"] for r in [ensemble, *members]}) == 4
    assert [m["config"]["seed"] for m in members] == [0, 1, 2]
    assert all(m["name"].endswith(f"seed={s}") for m, s in zip(members, (0, 1, 2)))
    assert {m["group"] for m in members} == {ensemble["group"]} and ensemble["group"]
    assert ensemble["summary"]["psnr_ensemble"] == pytest.approx(metrics["psnr_ensemble"])
    assert all(steps(m) and steps(m)[-1] == 29 for m in members)


def test_a_packed_sweeps_jobs_are_named_by_task_image_and_setting_and_grouped_by_the_sweep(tmp_path):
    import skimage.data
    from conftest import dip_cli, save_png

    images = tmp_path / "images"
    images.mkdir()
    save_png(images / "chelsea.png", skimage.data.chelsea()[100:196, 150:246])
    save_png(images / "coffee.png", skimage.data.coffee()[100:196, 150:246])
    sweep = tmp_path / "sweep"
    args = ["-m", "launcher=packed", f"data.image={images}", "seed=0,1", "optimizer.lr=0.01", *BASE]
    proc = dip_cli([*args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {job.name: wandb_runs(job) for job in sorted(sweep.iterdir()) if (job / ".hydra").is_dir()}
    assert len(records) == 4 and all(len(r) == 1 for r in records.values())  # every job its own W&B run
    runs = [r for (r,) in records.values()]
    assert len({r["id"] for r in runs}) == 4 and {r["group"] for r in runs} == {"sweep"}
    names = sorted(r["name"] for r in runs)
    assert [n.split("/")[:2] for n in names] == [["denoising", "chelsea"]] * 2 + [["denoising", "coffee"]] * 2
    # the swept values only: what every job shares (lr, iterations, cpu_threads, the image folder) is the group's
    assert [n.split("/")[2] for n in names] == ["seed=0", "seed=1"] * 2
    assert all("net=skip_small" in r["tags"] and r["config"]["choices"]["net"] == "skip_small" for r in runs)
    for job, (record,) in records.items():  # each job's own record: its image, seed and curve
        assert record["config"]["seed"] == int(record["name"][-1])
        assert steps(record)[-1] == 29


def test_tensorboard_marks_the_oracle_image_and_fills_its_hparams_tab(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = [o if o != "logger=wandb" else "logger=tensorboard" for o in BASE]
    metrics = run(compose_cfg([*tb, "seed=3"]), tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "final/best (oracle)" in events.Tags()["images"] and "final/restored" in events.Tags()["images"]
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    start = hparams["_hparams_/session_start_info"]
    assert b"seed" in start and b"optimizer.lr" in start  # the run's setting, by which the tab compares runs
    (final,) = events.Scalars("final/psnr_result")
    assert final.step == 29 and final.value == pytest.approx(metrics["psnr_final"], abs=1e-4)
