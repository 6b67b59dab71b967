"""Preemption: a run stopped by SIGTERM writes a checkpoint; resuming it ends bit-identical to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, compose_cfg
from pytorch_lightning import Callback

from dip_lightning.checkpoint import CHECKPOINT, Interrupted, find_checkpoint
from dip_lightning.errors import DIPError

# Monitor-mode ES-WMV and the best iterate carry on-device state; backtracking and averaging are on (the defaults).
BASE = [o for o in TINY if not o.startswith("callbacks=")] + [
    "cpu_threads=1",
    "chunk=10",
    "callbacks=es_wmv",
    "callbacks.early_stopping.window=5",
    "callbacks.early_stopping.patience=1000",
    "callbacks.early_stopping.stop=false",
    "callbacks.progress.log_seconds=100",
]
COMPARED = ("psnr_final", "psnr_best", "best_step", "stop_step", "psnr_stop", "backtracks", "iterations")
OUTPUTS = ("restored.png", "best.png", "curves.csv")


class SignalAt(Callback):
    """Sends this process SIGTERM once the run has reached iteration `at` (what SLURM does on preemption)."""

    def __init__(self, at: int):
        self.at, self.sent = at, False

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if task.iteration >= self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(autouse=True)
def _keep_thread_count():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def assert_same_run(a_dir, b_dir, a_metrics, b_metrics):
    for key in COMPARED:
        assert a_metrics[key] == b_metrics[key], key  # exact, not approximate
    for name in OUTPUTS:
        assert (a_dir / name).read_bytes() == (b_dir / name).read_bytes(), name


def test_sigterm_then_resume_matches_the_uninterrupted_run(run_dip, tmp_path):
    straight, straight_dir = run_dip([*BASE, "iterations=60"], run_dir=tmp_path / "straight")
    killed_dir = tmp_path / "killed"
    with pytest.raises(Interrupted, match="SIGTERM at iteration 30.*resume="):
        run_dip(
            [*BASE, "iterations=60", "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=20"],
            run_dir=killed_dir,
        )
    assert (killed_dir / CHECKPOINT).exists() and not (killed_dir / "metrics.json").exists()
    resumed, resumed_dir = run_dip([*BASE, "iterations=60", f"resume={killed_dir}"], run_dir=tmp_path / "resumed")
    assert_same_run(straight_dir, resumed_dir, straight, resumed)
    assert len((resumed_dir / "curves.csv").read_text().splitlines()) == 61  # the history came along


def test_cli_run_killed_by_sigterm_exits_with_a_checkpoint_and_resumes(run_dip, tmp_path):
    # A real SIGTERM from outside to `dip-run`, with periodic checkpoints on; then resume from the run folder.
    run_dir = tmp_path / "cli"
    args = [*BASE, "iterations=80", "checkpoint_every=10", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dip_lightning.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run_dir / CHECKPOINT).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "resume=" in out + err and not (run_dir / "metrics.json").exists()
    stopped_at = torch.load(run_dir / CHECKPOINT, weights_only=True)["iteration"]
    assert 10 <= stopped_at < 80
    resumed, resumed_dir = run_dip(
        [*BASE, "iterations=80", f"resume={run_dir / CHECKPOINT}"], run_dir=tmp_path / "resumed"
    )
    straight, straight_dir = run_dip([*BASE, "iterations=80"], run_dir=tmp_path / "straight")
    assert_same_run(straight_dir, resumed_dir, straight, resumed)
    assert json.loads((resumed_dir / "metrics.json").read_text())["iterations"] == 80


def test_resume_errors_and_auto(tmp_path, run_dip):
    assert find_checkpoint("auto", tmp_path) is None and find_checkpoint(None, tmp_path) is None
    with pytest.raises(DIPError, match="no checkpoint at"):
        find_checkpoint(str(tmp_path / "nowhere"), tmp_path)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(DIPError, match="Could not read the checkpoint"):
        run_dip([*BASE, "iterations=5", f"resume={tmp_path / 'junk.ckpt'}"])
    with pytest.raises(DIPError, match="checkpoint_every=0"):
        run_dip([*BASE, "iterations=5", "checkpoint_every=0"])
    assert compose_cfg(["resume=auto"]).resume == "auto"


def test_the_gt_free_rules_resume_bit_identically(run_dip, tmp_path):
    """Discrepancy (its smoothed loss and sigma) and self-validation (its held-out pixels, drawn again from the
    seed) carry their state through a checkpoint, beside ES-WMV."""
    rules = [
        "+callbacks.dis._target_=dip_lightning.callbacks.discrepancy.Discrepancy",
        "+callbacks.dis.stop=false",
        "+callbacks.dis.patience=5",
        "+callbacks.sv._target_=dip_lightning.callbacks.self_validation.SelfValidation",
        "+callbacks.sv.stop=false",
        "+callbacks.sv.patience=5",
        "iterations=60",
    ]
    straight, straight_dir, resumed, resumed_dir = interrupted_and_resumed(run_dip, tmp_path, rules)
    for rule in ("discrepancy", "self_validation"):
        assert straight[f"{rule}/stop_step"] == resumed[f"{rule}/stop_step"]
        assert (straight_dir / f"{rule}.png").read_bytes() == (resumed_dir / f"{rule}.png").read_bytes()


def test_two_rules_of_one_kind_keep_their_own_state_through_a_resume(run_dip, tmp_path):
    """Checkpoint states are filed under each callback's config key, so two ES-WMV rules with different windows
    do not overwrite each other's (they did when keyed by class name)."""
    second = [
        "+callbacks.wide._target_=dip_lightning.callbacks.early_stopping.ESWMV",
        "+callbacks.wide.window=15",
        "+callbacks.wide.patience=1000",
        "+callbacks.wide.stop=false",
        "iterations=60",
    ]
    straight, straight_dir, resumed, resumed_dir = interrupted_and_resumed(run_dip, tmp_path, second)
    assert straight["wide/stop_step"] == resumed["wide/stop_step"]  # the second ES-WMV, under its config key
    assert (straight_dir / "wide.png").read_bytes() == (resumed_dir / "wide.png").read_bytes()


def interrupted_and_resumed(run_dip, tmp_path, extra: list[str]):
    """The run of BASE + `extra` uninterrupted, and SIGTERMed at iteration 20 then resumed; asserts they are the
    same run and returns (straight metrics, its folder, resumed metrics, its folder)."""
    straight, straight_dir = run_dip([*BASE, *extra], run_dir=tmp_path / "straight")
    killed_dir = tmp_path / "killed"
    with pytest.raises(Interrupted):
        run_dip(
            [*BASE, *extra, "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=20"],
            run_dir=killed_dir,
        )
    resumed, resumed_dir = run_dip([*BASE, *extra, f"resume={killed_dir}"], run_dir=tmp_path / "resumed")
    assert_same_run(straight_dir, resumed_dir, straight, resumed)
    return straight, straight_dir, resumed, resumed_dir
