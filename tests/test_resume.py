"""Preemption: a run stopped by SIGTERM writes a checkpoint; resuming it ends bit-identical to an uninterrupted run."""

import functools
import json
import os
import signal
import time

import pytest
import torch
from conftest import TINY, compose_cfg, dip_cli, dip_process

from dip_lightning.callbacks.roles import RunHook
from dip_lightning.checkpoint import (
    CHECKPOINT,
    Interrupted,
    checkpoint_state,
    find_checkpoint,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import DIPError
from dip_lightning.nets import Skip
from dip_lightning.tasks import Denoising

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


class SignalAt(RunHook):
    """Sends this process SIGTERM once the run has reached iteration `at` (what SLURM does on preemption)."""

    def __init__(self, at: int):
        self.at, self.sent = at, False

    def on_chunk_end(self, run):
        if run.task.iteration >= self.at and not self.sent:
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
    with pytest.raises(Interrupted, match="SIGTERM at iteration 20.*resume="):
        run_dip(
            [*BASE, "iterations=60", "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=20"],
            run_dir=killed_dir,
        )
    assert (killed_dir / CHECKPOINT).exists() and not (killed_dir / "metrics.json").exists()
    resumed, resumed_dir = run_dip([*BASE, "iterations=60", f"resume={killed_dir}"], run_dir=tmp_path / "resumed")
    assert_same_run(straight_dir, resumed_dir, straight, resumed)
    assert len((resumed_dir / "curves.csv").read_text().splitlines()) == 61  # the history came along


# A callback for a dip-run process (the test writes it beside the run, on the process's sys.path): once the run has
# passed iteration `at` it writes `marker` and holds the loop until a signal arrives, so the signal from outside comes
# mid-run however fast or loaded the machine is.
HOLD_UNTIL_SIGNAL = """
import signal, time
from pathlib import Path
from dip_lightning.callbacks.roles import RunHook

class HoldUntilSignal(RunHook):
    def __init__(self, at: int, marker: str):
        self.at, self.marker, self.done = at, marker, Path(marker).exists()  # held once: not again on a resume

    def on_chunk_end(self, run):
        if self.done or run.task.iteration <= self.at:
            return
        self.done, got, handler = True, [], signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda signum, frame: (got.append(signum), handler(signum, frame)))
        Path(self.marker).touch()
        deadline = time.monotonic() + 300  # only bounds a test that would otherwise hang
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.signal(signal.SIGTERM, handler)
"""


def test_cli_run_killed_by_sigterm_exits_with_a_checkpoint_and_resumes(run_dip, tmp_path):
    # A real SIGTERM from outside to `dip-run`, with periodic checkpoints on; then resume from the run folder.
    (tmp_path / "hold_until_signal.py").write_text(HOLD_UNTIL_SIGNAL)
    run_dir, marker = tmp_path / "cli", tmp_path / "holding"
    hold = ["+callbacks.hold._target_=hold_until_signal.HoldUntilSignal", "+callbacks.hold.at=10"]
    args = [*BASE, "iterations=80", "checkpoint_every=10", *hold, f"+callbacks.hold.marker={marker}"]
    proc = dip_process([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-2000:]
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


# ----------------------------------------------------------------------------- the task's own state, unit level
class CountingDenoising(Denoising):
    """A task with running state of its own (a count of its backward passes), kept through the run-state hooks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backwards = torch.zeros((), dtype=torch.long)

    def after_backward(self, *args, **kwargs):
        self.backwards += 1
        return super().after_backward(*args, **kwargs)

    def run_state(self) -> dict:
        return {**super().run_state(), "backwards": self.backwards}

    def load_run_state(self, state: dict) -> None:
        super().load_run_state(state)
        self.backwards.copy_(state["backwards"])


def small_task(net_seed: int, cls=CountingDenoising):
    """A prepared 32-px task (`cls`) with jitter, averaging (a plain mean from iteration 2) and backtracking, and
    its optimizer."""
    torch.manual_seed(net_seed)
    net = Skip(input_depth=4, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])
    opt = functools.partial(torch.optim.Adam, lr=0.01)
    task = cls(net, opt, seed=0, reg_noise_std=0.05, exp_weight=0.9, average_from=2, backtracking=True)
    task.prepare(SingleImageDataModule(image="astronaut", crop=32).load(net.size_multiple))
    task.start_on_device()
    return task, task.make_optimizer()


def assert_same(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where  # NaN history entries are equal here


def test_a_task_subclass_state_goes_through_the_checkpoint_and_the_run_goes_on_identically(tmp_path):
    """run_state -> checkpoint file -> a fresh task (other initial weights) -> the same run_state, and the next
    iterations of both are bit-identical (backtracking's snapshot is flattened again after the restore)."""
    task, opt = small_task(net_seed=0)
    for _ in range(4):
        task.dip_iteration(opt)
    state = checkpoint_state(task, task.by_hand(opt).trainable, 0, [])
    path = save_checkpoint(tmp_path / "last.ckpt", {**state, "identity": {}})
    state = load_checkpoint(path)
    assert state["iteration"] == 4 and int(state["task"]["backwards"]) == 4

    fresh, fresh_opt = small_task(net_seed=1)
    assert not torch.equal(next(fresh.net.parameters()), next(task.net.parameters()))
    restore_checkpoint(fresh, state, path, fresh.by_hand(fresh_opt).trainable, 0, [])
    assert_same(task.run_state(), fresh.run_state())
    for _ in range(3):
        assert torch.equal(task.dip_iteration(opt), fresh.dip_iteration(fresh_opt))
    assert_same(task.run_state(), fresh.run_state())
    assert int(fresh.backwards) == 7


def test_a_format_3_checkpoint_is_read_and_formats_1_and_2_are_refused(tmp_path):
    """Format 3 held the same parts with the task's at the top level: it resumes as format 4 does."""
    task, opt = small_task(net_seed=0, cls=Denoising)
    for _ in range(2):
        task.dip_iteration(opt)
    now = {**checkpoint_state(task, task.by_hand(opt).trainable, 0, []), "identity": {"seed": "0"}}
    task_keys = ("net", "buffers", "snapshot", "jitter_gen", "history")  # format 3's layout, spelt out
    old = {**{k: v for k, v in now.items() if k != "task"}, **{k: now["task"][k] for k in task_keys}, "format": 3}
    torch.save(old, tmp_path / "old.ckpt")
    torch.save(now, tmp_path / "now.ckpt")
    assert_same(load_checkpoint(tmp_path / "now.ckpt"), load_checkpoint(tmp_path / "old.ckpt"))
    for fmt, why in ((1, "did not record what defines its run"), (2, "checkpoint format 2")):
        torch.save({**old, "format": fmt}, tmp_path / f"f{fmt}.ckpt")
        with pytest.raises(DIPError, match=why):
            load_checkpoint(tmp_path / f"f{fmt}.ckpt")


def test_a_state_of_another_output_shape_is_refused_with_the_checkpoint_named(tmp_path):
    task, opt = small_task(net_seed=0)
    task.dip_iteration(opt)
    state = checkpoint_state(task, task.by_hand(opt).trainable, 0, [])
    state["task"]["buffers"]["out_avg"] = torch.zeros(1, 3, 16, 16)
    with pytest.raises(DIPError, match=r"checkpoint 'x.ckpt' does not fit this run: .*\(1, 3, 16, 16\) out_avg"):
        restore_checkpoint(task, state, "x.ckpt", task.by_hand(opt).trainable, 0, [])


def test_a_logger_that_cannot_finish_is_a_warning_not_the_runs_end(tmp_path, caplog):
    # SLURM's SIGTERM reaches every process of a preempted job: W&B's service dies with the run's process group
    from dip_lightning.run.loggers import close_loggers

    class ServiceGone:
        log_dir = str(tmp_path / "logs")

        def finalize(self, status):
            raise ConnectionResetError(104, "Connection reset by peer")

    with caplog.at_level("WARNING", logger="dip_lightning"):
        close_loggers([ServiceGone()], failed=True)
    assert "ServiceGone could not finish its run (ConnectionResetError" in caplog.text


def test_resume_auto_goes_on_with_the_newest_interrupted_run_of_the_same_overrides(tmp_path):
    """A single run's resume=auto, started again with the same overrides as the interrupted run (whose message
    says so), continues that run in its folder; with other overrides it says it found none and starts fresh."""
    (tmp_path / "hold_until_signal.py").write_text(HOLD_UNTIL_SIGNAL)
    marker = tmp_path / "holding"  # the loop is held mid-run until the signal comes (HOLD_UNTIL_SIGNAL)
    hold = ["+callbacks.hold._target_=hold_until_signal.HoldUntilSignal", "+callbacks.hold.at=10"]
    args = [*BASE, "iterations=80", "checkpoint_every=10", *hold, f"+callbacks.hold.marker={marker}"]
    proc = dip_process(args, tmp_path)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    (interrupted,) = [p.parents[1] for p in tmp_path.glob(f"outputs/denoising/*/{CHECKPOINT}")]
    assert f"hydra.run.dir={interrupted} resume=auto" in out + err  # the command that goes on from it

    again = dip_cli([*args, "resume=auto"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "going on with the interrupted run in" in again.stdout + again.stderr
    metrics = json.loads((interrupted / "metrics.json").read_text())
    assert metrics["iterations"] == 80 and metrics["resumed_at"] >= 10 and metrics["processes"] == 2

    other = dip_cli([*BASE, "iterations=20", "seed=5", "resume=auto"], cwd=tmp_path)
    assert other.returncode == 0 and "starting fresh" in other.stdout + other.stderr
