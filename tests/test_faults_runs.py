"""Run folders under faults: a folder holds one run's files, one process writes it, the final outputs appear all
together or not at all, a signal during the final writes leaves them complete, a resume in place keeps its logs, and
file names reach Hydra as they are."""

import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_cfg, dip_cli, dip_process
from test_resume import SignalAt

from dip_lightning.callbacks.early_stopping import PSNRPatience
from dip_lightning.callbacks.roles import RunHook
from dip_lightning.errors import DIPError
from dip_lightning.run.folder import LOCK
from dip_lightning.run.job import run
from dip_lightning.sweeps.gather import gather

FAST = [*TINY, "cpu_threads=1", "chunk=10", "iterations=20"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_a_sweep_into_a_folder_holding_an_earlier_sweep_is_refused_and_resume_keeps_its_finished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    first = dip_cli(["-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and p.name != LOCK}
    again = dip_cli(["-m", *FAST, "seed=0,1", "optimizer.lr=0.05", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert again.returncode == 1 and "already holds a sweep (2 job folders" in again.stderr, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    assert {p: p.read_bytes() for p in before} == before  # nothing of the earlier sweep was touched
    resumed = dip_cli(["-m", *FAST, "seed=0,1", "resume=auto", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (sweep / "0" / "restored.png").read_bytes() == before[sweep / "0" / "restored.png"]  # kept, not re-run
    rows, _ = gather(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_a_re_run_into_a_finished_run_folder_is_refused_before_hydra_rewrites_its_record(tmp_path):
    folder = tmp_path / "run"
    assert dip_cli([*FAST, f"hydra.run.dir={folder}"], cwd=tmp_path).returncode == 0
    record = (folder / ".hydra" / "overrides.yaml").read_bytes()
    again = dip_cli([*FAST, "seed=3", f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert again.returncode == 1 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (folder / ".hydra" / "overrides.yaml").read_bytes() == record
    with pytest.raises(DIPError, match="already holds a run .*metrics.json"):  # the Python API too
        run(compose_cfg(FAST), folder)


def test_gather_never_pairs_a_jobs_config_with_another_runs_metrics_and_ignores_file_times(tmp_path):
    sweep = tmp_path / "sweep"
    assert dip_cli(["-m", *FAST, "seed=0,1,2", f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    record = sweep / "0" / ".hydra" / "overrides.yaml"  # job 0's record now says another setting than its result
    record.write_text(record.read_text().replace("seed=0", "seed=5"))
    (sweep / "1" / "error.json").write_text(json.dumps({"error": "collapsed"}))  # job 1 failed after it finished
    os.utime(sweep / "2" / "metrics.json", (1, 1))  # a clock stepped back: job 2's result is still its own
    rows, _ = gather(sweep)
    assert [r["status"] for r in rows] == ["failed", "failed", "ok"]
    assert "earlier run's result, not this job's: seed: recorded 5, config.yaml 0" in rows[0]["error"]
    assert "error.json beside its metrics.json" in rows[1]["error"]


def test_a_second_process_on_a_run_folder_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)  # another process's lock (flock: per open file)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        with pytest.raises(DIPError, match="Another dip-run \\(process 4242\\) is using the run folder"):
            run(compose_cfg(FAST), folder)
    finally:
        os.close(fd)
    assert not (folder / "metrics.json").exists()
    run(compose_cfg(FAST), folder)  # free again


def test_a_resume_in_place_keeps_the_csv_rows_logged_before_the_checkpoint(tmp_path):
    base = [*FAST, "iterations=60", "logger=csv", "task.log_every=5"]
    run(compose_cfg(base), tmp_path / "straight")
    folder = tmp_path / "killed"
    with pytest.raises(Exception, match="SIGTERM"):
        run(compose_cfg([*base, "+callbacks.kill._target_=test_resume.SignalAt", "+callbacks.kill.at=20"]), folder)
    run(compose_cfg([*base, "resume=auto"]), folder)

    def steps(path):
        lines = path.read_text().splitlines()
        col = lines[0].split(",").index("step")
        return [line.split(",")[col] for line in lines[1:]]

    assert steps(folder / "csv" / "metrics.csv") == steps(tmp_path / "straight" / "csv" / "metrics.csv")
    assert SignalAt  # the hook the kill uses


def test_a_full_disk_during_the_final_writes_leaves_no_partial_outputs(tmp_path, monkeypatch):
    import dip_lightning.run.outputs as outputs

    def full(path, history):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_curves", full)
    with pytest.raises(DIPError, match=r"No space left on device while writing curves.csv \(\d+ MB free there\)"):
        run(compose_cfg(FAST), tmp_path / "run")
    left = {p.name for p in (tmp_path / "run").iterdir()}
    assert not left & {"restored.png", "best.png", "metrics.json", "observed.png"}, left
    assert not any(name.startswith(".outputs-") for name in left)


class SignalWhileWriting(PSNRPatience):
    """A stopping rule that sends this process SIGTERM when the run asks for its result (the final writes)."""

    def stop_result(self, task):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().stop_result(task)


def test_sigterm_during_the_final_writes_leaves_the_complete_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    folder = tmp_path / "run"
    proc = dip_cli(
        [
            *FAST,
            "+callbacks.early_stopping._target_=test_faults_runs.SignalWhileWriting",
            "+callbacks.early_stopping.patience=1000",
            f"hydra.run.dir={folder}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), proc.stderr[-2000:]  # ended by the signal
    assert json.loads((folder / "metrics.json").read_text())["iterations"] == 20
    assert (folder / "restored.png").exists() and "they are complete" in (folder / "train.log").read_text()


def test_file_names_with_interpolation_syntax_reach_the_run_as_they_are(tmp_path):
    from hydra import compose, initialize_config_dir

    from dip_lightning.config.compose import CONFIG_DIR
    from dip_lightning.sweeps.images import expand_arguments

    names = ["p${oc.env:X,}.png", "a${oc.env:HOME}.png", "b\\${x}.png", "c\\.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (arg,) = expand_arguments([f"data.image={tmp_path}"])
    values = arg.partition("=")[2]
    seen = []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for value in values.split("','"):  # one job per file, as the sweeper launches them
            value = value if value.startswith("'") else "'" + value
            value = value if value.endswith("'") else value + "'"
            seen.append(compose(config_name="train", overrides=[f"data.image={value}"]).data.image)
    assert sorted(seen) == sorted(str(tmp_path / n) for n in names)
    assert sys.platform  # (POSIX file names: backslashes are ordinary characters)


class KillWorkerOnce(RunHook):
    """SIGKILLs the process running the job (a joblib worker) at its first chunk end, once per marker file: the
    second attempt runs through. `always`: every attempt dies."""

    def __init__(self, marker: str, always: bool = False):
        self.marker, self.always = marker, always

    def on_chunk_end(self, run):
        if self.always or not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("always", [False, True], ids=["killed once", "killed every time"])
def test_a_killed_joblib_worker_costs_no_other_jobs_outcome(tmp_path, monkeypatch, always):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    sweep = tmp_path / "sweep"
    kill = [
        "+callbacks.kill._target_=test_faults_runs.KillWorkerOnce",
        f"+callbacks.kill.marker={tmp_path / 'killed'}",
        f"+callbacks.kill.always={always}",
    ]
    # job 1 (seed=1) is the one that kills its worker: the override applies to it alone through a per-seed key
    proc = dip_cli(
        ["-m", *FAST, "launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2", f"hydra.sweep.dir={sweep}", *kill],
        cwd=tmp_path,
        timeout=600,
    )
    outcomes = {j: sorted(p.name for p in (sweep / j).glob("*.json")) for j in ("0", "1", "2")}
    if not always:  # every job ran to its end: the killed one, and the ones in flight with it, again
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert all(o == ["metrics.json"] for o in outcomes.values()), outcomes
    else:  # every job kills its worker: each one's folder says so, the sweep ends and exits 1
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert all(o == ["error.json"] for o in outcomes.values()), outcomes
        error = json.loads((sweep / "0" / "error.json").read_text())["error"]
        assert "worker process running this job died 2 times" in error
    assert "Traceback" not in proc.stderr


def test_a_failed_sweep_job_frees_what_it_held_before_the_next(tmp_path, monkeypatch):
    """The collapsed job's net lives in reference cycles; the job's end collects them (gc is off here, as it can
    be late in a worker), so the next job starts with its memory back."""
    import gc
    import weakref

    import dip_lightning.run.job as job
    import dip_lightning.train as train

    nets = []
    prepare = job.prepare_run

    def spy(*args, **kwargs):
        r = prepare(*args, **kwargs)
        nets.append(weakref.ref(r.task.net))
        return r

    monkeypatch.setattr(job, "prepare_run", spy)
    sweep = tmp_path / "sweep"
    argv = ["dip-run", "-m", *FAST, "iterations=150", "optimizer.lr=5.0", f"hydra.sweep.dir={sweep}"]
    monkeypatch.setattr(sys, "argv", argv)
    gc.disable()
    try:
        with pytest.raises(SystemExit):  # the sweep had a failed job
            train.hydra_main()
        assert (sweep / "0" / "error.json").exists()
        assert nets and all(ref() is None for ref in nets)
    finally:
        gc.enable()


def test_the_folder_guard_sees_a_run_dir_that_names_the_task(tmp_path):
    """hydra.run.dir with ${hydra:runtime.choices.task} (as the default's) resolves in the guard too: a re-run into
    that finished folder is refused before Hydra rewrites its record."""
    run_dir = f"hydra.run.dir={tmp_path}/${{hydra:runtime.choices.task}}"
    assert dip_cli([*FAST, run_dir], cwd=tmp_path).returncode == 0
    record = (tmp_path / "denoising" / ".hydra" / "overrides.yaml").read_bytes()
    again = dip_cli([*FAST, "seed=4", run_dir], cwd=tmp_path)
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert (tmp_path / "denoising" / ".hydra" / "overrides.yaml").read_bytes() == record


def test_a_finished_run_keeps_no_lock_and_a_failed_one_leaves_only_hydras_record(tmp_path):
    run(compose_cfg(FAST), tmp_path / "done")
    assert not (tmp_path / "done" / LOCK).exists() and (tmp_path / "done" / "metrics.json").is_file()
    collapsing = [*FAST, "optimizer.lr=5.0", "iterations=150"]
    failed = dip_cli([*collapsing, f"hydra.run.dir={tmp_path / 'failed'}"], cwd=tmp_path)
    assert failed.returncode == 1 and "collapsed" in failed.stderr
    assert {p.name for p in (tmp_path / "failed").iterdir()} == {".hydra", "train.log"}  # docs/outputs.md says so


def test_a_rule_keyed_like_another_output_never_replaces_it_or_leaves_the_folder(tmp_path):
    from PIL import Image

    from dip_lightning.run.results import output_name

    second = [
        "callbacks=es_wmv",
        "callbacks.early_stopping.stop=false",
        "callbacks.early_stopping.window=5",
        "+callbacks.observed._target_=dip_lightning.callbacks.early_stopping.ESWMV",
        "+callbacks.observed.stop=false",
        "+callbacks.observed.window=5",
    ]
    metrics = run(compose_cfg([*FAST, "iterations=40", *second]), tmp_path / "run")
    observed = np.asarray(Image.open(tmp_path / "run" / "observed.png"))
    assert "observed/stop_step" in metrics and (tmp_path / "run" / "observed_rule.png").is_file()
    assert not np.array_equal(observed, np.asarray(Image.open(tmp_path / "run" / "observed_rule.png")))
    taken = {"observed", "restored", "best"}
    assert output_name("../../x", taken) == "x" and output_name("restored", taken) == "restored_rule"
    assert output_name("..", taken) == "rule" and output_name("a b/c", taken) == "a_b_c"


def test_a_run_into_a_folder_of_the_users_files_is_refused_and_leaves_them_as_they_were(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own\n")
    (mine / "observed.png").write_bytes(b"my own picture")
    proc = dip_cli([*FAST, "hydra.run.dir=."], cwd=mine)
    assert proc.returncode == 1 and "is not empty (config.yaml, observed.png)" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "observed.png"]  # not even Hydra's record
    assert (mine / "config.yaml").read_text() == "my own\n"


def test_ctrl_c_before_the_loop_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C once the run has shown its config (before or as its loop starts): one line, no traceback, 130."""

    args = [*FAST, "iterations=2000", f"hydra.run.dir={tmp_path / 'run'}", "extras.print_config=true"]
    proc = dip_process(args, tmp_path)
    for line in proc.stdout:  # the config tree is printed before anything is built
        if "config" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_sweep_into_a_folder_another_sweep_holds_is_refused_and_writes_no_job(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    fd = os.open(sweep / LOCK, os.O_RDWR | os.O_CREAT)  # the sweep that started first holds its folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        proc = dip_cli(["-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and "process 4242" in proc.stdout + proc.stderr
    assert sorted(p.name for p in sweep.iterdir()) == [LOCK]  # no job folder, no .hydra of a job


def test_the_workers_of_a_killed_joblib_sweep_end_with_it(tmp_path):
    """SIGKILL of a joblib sweep's own process: its worker processes get SIGTERM (they checkpoint and end) instead
    of holding the jobs' folders and memory forever."""
    import subprocess
    import time

    def children(pid: int) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"loky" in cmdline:
                found.append(int(entry.name))
        return found

    def alive(pid: int) -> bool:
        try:
            return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    sweep = tmp_path / "sweep"
    args = ["-m", "launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "iterations=100000", "checkpoint_every=50"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dip_lightning.train", *args, "seed=0,1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while len(list(sweep.glob("*/checkpoints/last.ckpt"))) < 2:  # both jobs are in their loops
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.5)
    workers = children(proc.pid)
    assert workers
    proc.kill()
    proc.wait()
    while any(alive(w) for w in workers):
        assert time.time() < deadline, "a worker outlived its sweep"
        time.sleep(0.5)


def test_a_sweep_resumed_with_its_values_reordered_is_refused_before_hydra_rewrites_a_record(tmp_path):
    sweep = tmp_path / "sweep"
    assert dip_cli(["-m", *FAST, "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    records = {p: p.read_bytes() for p in [*sweep.glob("*/.hydra/*.yaml"), sweep / "multirun.yaml"]}
    moved = dip_cli(["-m", *FAST, "seed=1,0", "resume=auto", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert moved.returncode == 1 and "Traceback" not in moved.stderr
    assert "job 0 holds seed=0 where this sweep's job 0 has seed=1" in moved.stdout + moved.stderr
    assert {p: p.read_bytes() for p in records} == records  # no job's record (nor the sweep's) was rewritten
    rows, _ = gather(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    again = dip_cli(["-m", *FAST, "seed=0,1", "resume=auto", "logger=csv", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]  # the same jobs (a logger is not part of a job): kept


FULL_DISK = """
import errno, hydra.core.utils as hydra_utils
_save_config = hydra_utils._save_config
def _full_after_job_0(cfg, filename, output_dir):  # the disk fills up after job 0: Hydra cannot write job 1's record
    if output_dir.parent.name != "0":
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir / filename))
    return _save_config(cfg, filename, output_dir)
hydra_utils._save_config = _full_after_job_0
"""


def test_a_sweep_whose_disk_fills_up_names_every_job_without_an_outcome_in_one_paragraph(tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FULL_DISK)
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "dip_lightning.train", "-m", *FAST, "seed=0,1,2", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(inject), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out and "Logging error" not in out, out[-3000:]
    assert f"job {sweep / '1'} could not be started: Hydra could not write its record" in out
    assert f"failed without an outcome there: {sweep / '1'}, {sweep / '2'}" in out
    assert (sweep / "0" / "metrics.json").exists()  # job 0's result is in place
    assert "resume=auto" in out.splitlines()[-1]


def test_a_job_log_that_cannot_be_written_is_one_line_not_a_traceback_per_line(tmp_path, capsys):
    from dip_lightning.log_file import JobLogFile

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            pass

    handler = JobLogFile(str(tmp_path / "train.log"))
    handler.stream = FullDisk()
    logger = logging.getLogger("test_full_disk_log")
    logger.addHandler(handler)
    try:
        for i in range(3):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot be written (No space left on device)") == 1 and "Logging error" not in err
    assert str(tmp_path / "train.log") in err


def test_a_run_folder_on_a_full_disk_is_refused_before_the_run_naming_the_disk(tmp_path, monkeypatch):
    from dip_lightning.run import folder

    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder.os, "fsync", full)
    with pytest.raises(DIPError, match=r"The disk holding the run folder .* is full \(\d+ MB free\)"):
        run(compose_cfg(FAST), tmp_path / "run")
    monkeypatch.setattr(folder.os, "fsync", real_fsync)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_dip_gather_on_a_full_disk_is_one_paragraph_and_touches_no_job(tmp_path, monkeypatch, capsys):
    from dip_lightning.sweeps import gather as gather_module

    sweep = tmp_path / "sweep"
    assert dip_cli(["-m", *FAST, "seed=0", f"hydra.sweep.dir={sweep}"], cwd=tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gather_module, "_write", full)
    assert gather_module.main([str(sweep)]) == 2
    err = capsys.readouterr().err
    assert f"dip-gather could not write its tables into {sweep} (No space left on device" in err
    assert {p: p.read_bytes() for p in before} == before


def test_a_signal_before_the_runs_guard_is_noted_and_handed_to_it():
    """dip-run's early guard: a Ctrl-C before the run's guard raises nothing (Python could drop a KeyboardInterrupt
    in a finalizer), the run's guard takes it over (its loop acts on it), and a second Ctrl-C leaves at once."""
    from dip_lightning import early_signal
    from dip_lightning.checkpoint import SignalGuard

    before = signal.getsignal(signal.SIGINT)
    early_signal.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # noted, not raised
        assert SignalGuard.handlers()[signal.SIGINT] is before  # what a run's guard will put back
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
        guard = SignalGuard()
        guard.install()
        assert guard.caught == signal.SIGINT and early_signal.replaced() == {}  # taken over, the early guard ended
        guard.restore()
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        early_signal.end()
        signal.signal(signal.SIGINT, before)
    early_signal.install()
    os.kill(os.getpid(), signal.SIGTERM)
    assert early_signal.end() == signal.SIGTERM and signal.getsignal(signal.SIGINT) is before  # no run took it
