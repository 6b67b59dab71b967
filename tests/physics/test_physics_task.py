"""task=physics on deepinv's forward models: every physics_* preset beats deepinv's own reconstruction from the
same observation on a small image on the CPU; a given measurement file restores as the simulated one does; one
operator for every seed; the noise level the discrepancy principle gets; resume, packing and the regularisers.

Needs the deepinv extra (make test runs this folder in .venv-physics: torch 2.14.1 + torchvision 0.29.1)."""

from __future__ import annotations

from pathlib import Path

import deepinv  # noqa: F401  (no skip: without the extra this folder is not collected, conftest.py)
import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg

from dip_lightning.checkpoint import Interrupted
from dip_lightning.config.compose import CONFIG_DIR
from dip_lightning.errors import DIPError
from dip_lightning.run.job import run as dip_run
from dip_lightning.run.packs import group_packs
from dip_lightning.run.prepare import build_run, prepare_run

PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("physics_*.yaml"))
# dB that DIP's result must beat deepinv's baseline by, at 64 px with the tests' tiny net and 400 iterations: well
# inside what was measured there (2-core CPU, torch 2.14.1): deblur 27.83 against A_dagger's 16.29 (+11.5) and the
# blurred observation's 24.28 (+3.5); cs4 31.80 against 15.31 (+16.5); mri4 30.53 against the zero-filled 23.08
# (+7.5); ct 27.80 against FBP's 18.46 (+9.3)
MARGIN = {"physics_deblur_gaussian": 5.0, "physics_cs4": 8.0, "physics_mri4": 3.5, "physics_ct": 4.5}
SMALL = [*TINY, "cpu_threads=1"]


def prepared(overrides: list[str]):
    _, _, task, data = build_run(compose_cfg([*SMALL, *overrides]))
    task.prepare(data)
    return task


def test_the_four_presets_exist():
    assert set(MARGIN) <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_beats_deepinvs_own_reconstruction(run_dip, preset):
    m, run_dir = run_dip([f"experiment={preset}", *SMALL, "iterations=400", "chunk=100"])
    assert m["psnr_final"] > m["psnr_baseline"] + MARGIN[preset], m
    assert m["baseline"] == "A_dagger" and m["physics"].startswith("deepinv.physics.")
    for name in ("restored.png", "baseline.png", "observed.png"):
        assert (run_dir / name).exists(), name
    if m.get("psnr_observed") is not None:  # deblurring: the blurred image itself is the better one to beat
        assert m["psnr_final"] > m["psnr_observed"] + 1.5, m


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_a_given_measurement_file_restores_as_the_simulated_observation(run_dip, tmp_path, suffix):
    task = prepared(["experiment=physics_ct"])
    y = task.observed[0].clone()  # without its batch dimension: the task puts it back
    path = tmp_path / f"sinogram{suffix}"
    torch.save(y, path) if suffix == ".pt" else np.save(path, y.numpy())
    run = ["experiment=physics_ct", *SMALL, "iterations=20", "chunk=20"]
    simulated, _ = run_dip(run)
    given, _ = run_dip([*run, f"data.observed={path}"])  # with the ground truth: scored as the simulated run
    assert given["psnr_final"] == pytest.approx(simulated["psnr_final"], abs=1e-4)
    assert given["psnr_baseline"] == pytest.approx(simulated["psnr_baseline"], abs=1e-4)
    alone, run_dir = run_dip([*run, "data.image=null", f"data.observed={path}", "task.image_size=[64,64]"])
    assert alone["psnr_final"] is None and (run_dir / "restored.png").exists()


def test_a_gray_physics_scores_a_gray_ground_truth_and_leaves_the_loaded_data_as_read(tmp_path):
    """prepare_ground_truth / prepare_observation: the task's ground truth is the colour image made gray, its
    observation the measurement with its batch dimension; the loaded data stays as read."""
    colour = ["experiment=physics_ct", "data.image=astronaut"]  # a colour photo, which task.channels=1 makes gray
    y = prepared(colour).observed[0].clone()
    torch.save(y, tmp_path / "y.pt")
    _, _, task, data = build_run(compose_cfg([*SMALL, *colour, f"data.observed={tmp_path / 'y.pt'}"]))
    loaded_clean, loaded_y = data.clean.clone(), data.observed.clone()
    task.prepare(data)
    assert data.clean.shape[1] == 3 and torch.equal(data.clean, loaded_clean) and torch.equal(data.observed, loaded_y)
    assert task.clean.shape[1] == 1 and torch.equal(task.observed, loaded_y.unsqueeze(0)) and task.given_observation


def test_a_measurement_of_another_shape_is_refused_with_both_shapes(run_dip, tmp_path):
    torch.save(torch.zeros(3, 91, 30), tmp_path / "y.pt")
    with pytest.raises(DIPError, match=r"\(3, 91, 30\) tensor.*makes \(1, 1, 91, 30\)"):
        run_dip(["experiment=physics_ct", *SMALL, f"data.observed={tmp_path / 'y.pt'}", "iterations=2"])


def test_an_image_the_physics_was_not_built_for_is_refused_with_the_fix():
    with pytest.raises(DIPError, match=r"does not take the 1x64x64 image.*img_width"):
        prepared(["experiment=physics_ct", "task.physics.img_width=32"])  # its Radon transform is for 32x32


def test_a_physics_config_that_does_not_build_names_its_key():
    with pytest.raises(DIPError, match=r"task\.physics \(deepinv\.physics\.NoSuchPhysics\) could not be built"):
        prepared(["task=physics", "task.physics._target_=deepinv.physics.NoSuchPhysics"])


def test_every_seed_of_an_ensemble_sees_one_operator_and_one_observation():
    a, b = prepared(["experiment=physics_mri4", "seed=0"]), prepared(["experiment=physics_mri4", "seed=1"])
    assert torch.equal(a.operator.physics.mask, b.operator.physics.mask) and torch.equal(a.observed, b.observed)
    assert not torch.equal(a.z, b.z)
    other = prepared(["experiment=physics_mri4", "task.noise_seed=1"])  # another mask and noise draw
    assert not torch.equal(a.operator.physics.mask, other.operator.physics.mask)


def test_the_discrepancy_sigma_is_the_noise_models_per_measured_entry():
    mri = prepared(["experiment=physics_mri4"])
    sampled = float(mri.operator.physics.mask.mean())  # deepinv's MRI adds noise on the sampled entries only
    assert 0.2 < sampled < 0.35
    assert mri.simulated_noise_sigma() == pytest.approx(0.01 * sampled**0.5, rel=0.02)
    ct = prepared(["experiment=physics_ct"])
    assert ct.simulated_noise_sigma() == pytest.approx(0.01)
    residual = float((ct.operator(ct.clean) - ct.observed).pow(2).mean()) ** 0.5  # what the observation holds
    assert residual == pytest.approx(0.01, rel=0.1)


def test_the_discrepancy_principle_stops_a_physics_run_without_ground_truth(run_dip, tmp_path):
    y = prepared(["experiment=physics_ct"]).observed
    torch.save(y, tmp_path / "y.pt")
    m, _ = run_dip(
        [
            "experiment=physics_ct",
            *[o for o in SMALL if not o.startswith("callbacks=")],
            "callbacks=discrepancy",
            "callbacks.progress.log_seconds=100",
            "data.image=null",
            f"data.observed={tmp_path / 'y.pt'}",
            "task.image_size=[64,64]",
            "iterations=600",
            "chunk=100",
        ]
    )
    assert m["sigma_source"] == "simulation" and m["sigma_used"] == pytest.approx(0.01 * 255, rel=1e-3)
    assert m["stop_step"] is not None and m["stop_step"] < 600


def test_a_physics_run_resumes_to_its_uninterrupted_result(run_dip, tmp_path):
    base = ["experiment=physics_mri4", *SMALL, "iterations=30", "chunk=10", "task.backtracking=true"]
    straight, straight_dir = run_dip(base, run_dir=tmp_path / "straight")
    with pytest.raises(Interrupted):  # SIGTERM at iteration 10 (test_resume's hook), a checkpoint written
        run_dip([*base, "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=10"], tmp_path / "k")
    resumed, resumed_dir = run_dip([*base, f"resume={tmp_path / 'k'}"], run_dir=tmp_path / "resumed")
    for key in ("psnr_final", "psnr_best", "best_step", "psnr_baseline"):
        assert straight[key] == resumed[key], key
    for name in ("restored.png", "best.png", "baseline.png"):
        assert (straight_dir / name).read_bytes() == (resumed_dir / name).read_bytes(), name


def test_physics_runs_pack_and_end_as_they_do_alone(tmp_path):
    from dip_lightning.run.fit import train_runs

    jobs = [["seed=0"], ["seed=1", "optimizer.lr=0.02"]]
    base = ["experiment=physics_ct", *SMALL, "iterations=30", "chunk=10"]
    alone = [dip_run(compose_cfg([*base, *j]), tmp_path / f"alone{i}") for i, j in enumerate(jobs)]
    runs = [prepare_run(compose_cfg([*base, *j]), tmp_path / f"packed{i}") for i, j in enumerate(jobs)]
    assert group_packs(runs, 8) == [[0, 1]]
    for a, p in zip(alone, train_runs(runs)):
        assert p["pack"] == 2 and p["psnr_final"] == pytest.approx(a["psnr_final"], abs=0.05)


@pytest.mark.parametrize("regularizer", ["tv", "self_guided", "aseqdip"])
def test_the_regularisers_run_on_a_physics_task_from_its_baseline(run_dip, regularizer):
    image_input = ["net.input_depth=1"] if regularizer != "tv" else []
    task = prepared(["experiment=physics_ct", f"regularizer={regularizer}", *image_input])
    if regularizer != "tv":  # z starts from deepinv's reconstruction (FBP)
        assert torch.equal(task.z.detach(), task.baseline_image)
    m, _ = run_dip(
        ["experiment=physics_ct", *SMALL, f"regularizer={regularizer}", *image_input, "iterations=5", "chunk=5"]
    )
    assert m["iterations"] == 5
