"""`dip-run ensemble=N`: N seeds of one observation trained together; restored.png is their pixel mean, each member
is the run of its seed, and an interrupted ensemble resumes to the uninterrupted one."""

import json
import os
import signal

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, dip_cli, save_png
from PIL import Image

from dip_lightning.callbacks.roles import RunHook
from dip_lightning.checkpoint import CHECKPOINT, Interrupted
from dip_lightning.errors import DIPError
from dip_lightning.run.job import run
from dip_lightning.run_metrics import undocumented
from dip_lightning.sweeps.gather import gather

BASE = [*TINY, "cpu_threads=1", "chunk=20"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pixels(path):
    return np.asarray(Image.open(path)).astype(np.float64)


class SignalWhen(RunHook):
    """SIGTERM to this process once the member of seed `seed` has reached iteration `at` (a preemption)."""

    def __init__(self, seed: int, at: int):
        self.seed, self.at, self.sent = seed, at, False

    def on_chunk_end(self, run):
        if run.task.seed == self.seed and run.task.iteration >= self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_an_ensemble_is_the_mean_of_its_members_and_each_member_is_the_run_of_its_seed(tmp_path):
    m = run(compose_cfg([*BASE, "iterations=300", "ensemble=3"]), tmp_path / "ens")
    alone = run(compose_cfg([*BASE, "iterations=300", "seed=1"]), tmp_path / "alone")
    members = [tmp_path / "ens" / "members" / f"seed_{s}" for s in (0, 1, 2)]
    assert m["ensemble"] == 3 and m["seeds"] == [0, 1, 2] and m["pack"] == 3
    assert not undocumented(m)  # every key is in docs/outputs.md's table
    # trained in one pack, member seed=1 is the run of seed 1 on its own, bit for bit
    assert (members[1] / "restored.png").read_bytes() == (tmp_path / "alone" / "restored.png").read_bytes()
    sums = {json.loads((f / "metrics.json").read_text())["observation_sha256"] for f in members}
    assert sums == {m["observation_sha256"]} == {alone["observation_sha256"]}  # one observation for all seeds
    mean = np.mean([pixels(f / "restored.png") for f in members], axis=0)
    assert np.abs(pixels(tmp_path / "ens" / "restored.png") - mean).max() <= 0.5  # the pixel mean, rounded
    assert m["psnr_ensemble"] > m["psnr_members_mean"] + 0.1  # averaging seeds removes some of each one's noise
    assert m["psnr_ensemble"] > m["psnr_observed"] + 2  # and the result restores
    assert m["psnr_ensemble_best"] >= m["psnr_ensemble"]  # the oracle: each member's best iterate, averaged
    assert {"observed.png", "ground_truth.png", "config.yaml", "metrics.json"} <= {
        f.name for f in (tmp_path / "ens").iterdir()
    }


def test_without_ground_truth_each_member_stops_by_its_own_rule(tmp_path):
    import skimage.data

    clean = skimage.data.astronaut()[160:224, 180:244].astype(np.float64)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    observed = save_png(tmp_path / "noisy.png", noisy)
    m = run(
        compose_cfg([*BASE, "data.image=null", f"data.observed={observed}", "iterations=1200", "ensemble=2"]),
        tmp_path / "ens",
    )
    assert m["psnr_ensemble"] is None and m["psnr_observed"] is None
    assert m["stop_reason"] == "discrepancy" and all(s is not None for s in m["member_stop_steps"])
    for seed in (0, 1):
        member = json.loads((tmp_path / "ens" / "members" / f"seed_{seed}" / "metrics.json").read_text())
        assert member["stop_rule"] == "Discrepancy" and member["seed"] == seed
    # the mean of two GT-free choices, scored afterwards against the clean crop: better than the noisy input
    mse = np.mean((pixels(tmp_path / "ens" / "restored.png") - clean) ** 2)
    assert 10 * np.log10(255**2 / mse) > 10 * np.log10(255**2 / np.mean((noisy - clean) ** 2)) + 3


def test_ensemble_auto_is_the_tasks_gt_free_recipe_without_ground_truth_and_one_run_with_it(tmp_path):
    noisy = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    observed = save_png(tmp_path / "noisy.png", noisy)
    auto = [o for o in BASE if o != "ensemble=1"]  # the default
    gt_free = [*auto, "data.crop=null", "data.image=null", f"data.observed={observed}", "iterations=20"]
    assert compose_cfg(gt_free).ensemble == "auto"  # the default
    n = compose_cfg(gt_free).gt_free_ensemble.cpu  # conf/task/denoising.yaml's number on a CPU
    assert n > 1
    m = run(compose_cfg(gt_free), tmp_path / "auto")
    assert m["ensemble"] == n and m["seeds"] == list(range(n))
    assert f"ensemble: {n}" in (tmp_path / "auto" / "config.yaml").read_text()  # the number, recorded
    assert run(compose_cfg([*gt_free, "gt_free_ensemble.cpu=3"]), tmp_path / "three")["ensemble"] == 3
    one = run(compose_cfg([*gt_free, "ensemble=1"]), tmp_path / "one")  # asked for: one run
    assert "ensemble" not in one and not (tmp_path / "one" / "members").exists()
    with_truth = run(compose_cfg([*auto, "iterations=20"]), tmp_path / "truth")  # a ground truth: one run
    assert "ensemble" not in with_truth and "ensemble: 1" in (tmp_path / "truth" / "config.yaml").read_text()
    with pytest.raises(DIPError, match=r"ensemble='many' is not valid; expected 'auto' .* or a number of seeds >= 1"):
        run(compose_cfg([*BASE, "ensemble=many"]), tmp_path / "bad")


TASKS = {
    "denoising": [],
    "inpainting": ["task=inpainting", "data.mask=random"],
    "super_resolution": ["task=super_resolution", "task.factor=2"],
    "restoration": ["task=restoration", "task.kept=0.5"],
    "jpeg": ["task=jpeg", "task.quality=20"],
    "deblurring": ["task=deblurring", "task.kernel=motion"],
    "feature_inversion": ["task=feature_inversion", "task.weights=random", "task.layer=conv3"],
}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_ensembles_one_observation(tmp_path, task):
    m = run(compose_cfg([*BASE, *TASKS[task], "iterations=4", "ensemble=2"]), tmp_path / "ens")
    assert m["task"] == task and m["ensemble"] == 2
    a, b = (json.loads((tmp_path / "ens" / "members" / f"seed_{s}" / "metrics.json").read_text()) for s in (0, 1))
    assert a["observation_sha256"] == b["observation_sha256"]  # the masks and noise follow task.noise_seed
    assert pixels(tmp_path / "ens" / "restored.png").shape == pixels(tmp_path / "ens" / "observed.png").shape or (
        task in ("super_resolution", "feature_inversion")
    )


SGD = ["optimizer=sgd", "optimizer.lr=0.05", "iterations=60"]  # SGD does not pack: members train one by one


def test_an_interrupted_ensemble_resumes_to_the_uninterrupted_one(tmp_path):
    """SIGTERM while the second member trains: the first has finished, the second has its checkpoint, the third
    has not started. resume=<the ensemble's folder> reuses the first, resumes the second, runs the third: the same
    files as the ensemble that ran straight."""
    straight = run(compose_cfg([*BASE, *SGD, "ensemble=3"]), tmp_path / "straight")
    killed = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=test_ensemble_run.SignalWhen", "+callbacks.kill.seed=1", "+callbacks.kill.at=20"]
    with pytest.raises(Interrupted, match=f"resume={killed}"):
        run(compose_cfg([*BASE, *SGD, "ensemble=3", *kill]), killed)
    assert (killed / "members" / "seed_0" / "metrics.json").is_file()
    assert (killed / "members" / "seed_1" / CHECKPOINT).is_file()
    assert not any((killed / "members" / "seed_2").iterdir()) and not (killed / "metrics.json").exists()
    resumed = run(compose_cfg([*BASE, *SGD, "ensemble=3", f"resume={killed}"]), tmp_path / "resumed")
    assert resumed["psnr_members"] == straight["psnr_members"]
    assert resumed["psnr_ensemble"] == straight["psnr_ensemble"]
    for name in ("restored.png", "members/seed_1/curves.csv", "members/seed_2/restored.png"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_an_ensemble_resume_with_another_config_and_bad_values_are_refused(tmp_path):
    run(compose_cfg([*BASE, *SGD, "ensemble=2"]), tmp_path / "done")
    with pytest.raises(DIPError, match=r"finished run in .*seed_0.*optimizer.lr: checkpoint 0.05, now 0.1"):
        run(compose_cfg([*BASE, *SGD, "ensemble=2", "optimizer.lr=0.1", f"resume={tmp_path / 'done'}"]), tmp_path / "r")
    with pytest.raises(DIPError, match="holds no members/ folder"):
        run(compose_cfg([*BASE, "ensemble=2", f"resume={tmp_path / 'done' / 'members' / 'seed_0'}"]), tmp_path / "x")
    with pytest.raises(DIPError, match="ensemble=0 is not valid; expected 'auto' .* or a number of seeds >= 1"):
        run(compose_cfg([*BASE, "ensemble=0"]), tmp_path / "y")


def test_a_sweep_of_ensembles_from_the_command_line_gathers(tmp_path):
    sweep = tmp_path / "sweep"
    proc = dip_cli(
        ["-m", *BASE, "iterations=20", "ensemble=2", "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows, _ = gather(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["psnr_ensemble"] is not None for r in rows)  # the ensembles' own score, per setting


@pytest.mark.parametrize("launcher", ["local", "packed"])
def test_a_gt_free_sweep_gives_each_job_ensemble_autos_seeds(tmp_path, launcher):
    """ensemble=auto through dip-run's sweeps: the local launcher's jobs (run_jobs) and the packed launcher's
    plan (plan_packs) both make each job without ground truth the task's GT-free ensemble, recorded per job."""
    noisy = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    observed = save_png(tmp_path / "noisy.png", noisy)
    auto = [o for o in BASE if o != "ensemble=1"]  # the default, auto
    sweep = tmp_path / "sweep"
    args = [*auto, "data.crop=null", "data.image=null", f"data.observed={observed}", "iterations=20"]
    proc = dip_cli(
        ["-m", f"launcher={launcher}", *args, "optimizer.lr=0.01,0.02", f"hydra.sweep.dir={sweep}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = compose_cfg(args).gt_free_ensemble.cpu  # conf/task/denoising.yaml's number on a CPU
    for job in ("0", "1"):
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["ensemble"] == n > 1 and m["seeds"] == list(range(n)), m
        assert f"ensemble: {n}" in (sweep / job / "config.yaml").read_text()
        assert (sweep / job / "members" / f"seed_{n - 1}" / "restored.png").exists()


def test_an_ensemble_stopped_during_its_final_writes_resumes_in_place(tmp_path):
    """Every member had finished; the ensemble's own files were being written (a staging folder left, no
    metrics.json): resume=auto in the same folder keeps the members, writes the ensemble and clears the staging."""
    folder = tmp_path / "ens"
    done = run(compose_cfg([*BASE, *SGD, "ensemble=2"]), folder)
    restored = (folder / "restored.png").read_bytes()
    for name in ("metrics.json", "restored.png", "config.yaml"):
        (folder / name).unlink()
    (folder / ".outputs-killed").mkdir()
    (folder / ".outputs-killed" / "restored.png").write_bytes(b"half")
    again = run(compose_cfg([*BASE, *SGD, "ensemble=2", "resume=auto"]), folder)
    assert again["psnr_ensemble"] == done["psnr_ensemble"] and (folder / "restored.png").read_bytes() == restored
    assert not list(folder.glob(".outputs-*"))


def test_an_ensemble_that_cannot_fit_is_refused_before_its_members_are_built(tmp_path, monkeypatch):
    import dip_lightning.run.prepare as prepare_module

    built = []

    original = prepare_module.prepare_run
    monkeypatch.setattr(prepare_module, "prepare_run", lambda *a, **k: built.append(1) or original(*a, **k))
    with pytest.raises(DIPError, match=r"ensemble=100000 trains its 100000 members together, about .* GB"):
        run(compose_cfg([*BASE, "ensemble=100000", "iterations=20"]), tmp_path / "huge")
    assert len(built) == 1  # the first member only: its memory is what the estimate needs
