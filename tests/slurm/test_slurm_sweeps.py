"""Sweeps on a real SLURM (a single-node cluster started by slurm_cluster.py): `dip-run -m launcher=submitit_slurm`
as a user runs it, with the preset as it is on a CPU partition, preemption, requeue, time limits and
cancellation done by the scheduler itself.

Runs where the daemons can run (Debian's slurm-wlm and munge, as root: .ci/run installs them); make test runs this
folder in a process of its own beside the main suite (make test-slurm alone). Deadlines only bound a test that
would otherwise hang; what is asserted is what the scheduler and dip-run guarantee: job states from the scheduler's
own records, outputs and their bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from slurm_cluster import SlurmCluster, Unavailable, wait_for

from dip_lightning.sweeps.gather import gather

REPO = Path(__file__).resolve().parents[2]
DIP_RUN = [sys.executable, "-m", "dip_lightning.train"]
# the tests' tiny net; one thread a job; checkpoints often, so a signal finds a recent one
SMALL = [
    "net.num_channels_down=[16,16,16]",
    "net.num_channels_up=[16,16,16]",
    "net.num_channels_skip=[4,4,4]",
    "data.crop=64",
    "callbacks=none",
    "chunk=10",
    "cpu_threads=1",
    "checkpoint_every=20",
]
# the preset as it is: its default trainer finds no GPU on the cluster's partition, so the jobs ask for none
SLURM = ["-m", "launcher=submitit_slurm", "hydra.launcher.mem_gb=1", *SMALL]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except Unavailable as why:
        c.stop()
        pytest.skip(str(why))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of two real photos (scikit-image's), 80x80."""
    import skimage.data

    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage.data.astronaut()[180:260, 200:280]).save(folder / "astronaut.png")
    Image.fromarray(skimage.data.coffee()[100:180, 200:280]).save(folder / "coffee.png")
    return folder


def sweep(cluster: SlurmCluster, sweep_dir: Path, *overrides: str, background: bool = False):
    """`dip-run -m launcher=submitit_slurm ...` with the cluster's SLURM_CONF, run from the repository."""
    args = [*DIP_RUN, *SLURM, f"hydra.sweep.dir={sweep_dir}", *overrides]
    env = {**cluster.env, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    if background:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def slurm_jobs(sweep_dir: Path) -> list[str]:
    """The SLURM job ids of a sweep's jobs, in job order, from submitit's folders under .submitit/: array tasks
    (`12_0`, `12_1`) for a sweep of several jobs, a plain job (`12`) for one."""
    folders = [p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()]
    tasks = [name for name in folders if "_" in name]
    return sorted(tasks, key=lambda t: int(t.split("_")[1])) if tasks else folders


def ends(cluster: SlurmCluster, job: str) -> list[dict]:
    """The job completion log's records of one job (one per end: a requeued run's too), oldest first."""
    if "_" not in job:
        return [r for r in cluster.finished_jobs() if r.get("JobId") == job]
    array_id, index = job.split("_")
    return [r for r in cluster.finished_jobs() if r.get("ArrayJobId") == array_id and r.get("ArrayTaskId") == index]


def test_a_cpu_sweep_over_a_folder_runs_on_slurm_one_task_at_a_time_and_gathers(cluster, photos, tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = sweep(cluster, sweep_dir, f"data.image={photos}", "iterations=30", "hydra.launcher.array_parallelism=1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows, _ = gather(sweep_dir)
    assert sorted(r["image"] for r in rows) == ["astronaut", "coffee"]
    assert all(r["status"] == "ok" and r["iterations"] == 30 and r["psnr_best"] > 15 for r in rows), rows
    # the scheduler's own record: array_parallelism=1 ran the second task after the first had ended
    tasks = slurm_jobs(sweep_dir)
    assert len(tasks) == 2
    first, second = (ends(cluster, t) for t in tasks)
    assert len(first) == len(second) == 1
    spans = sorted((r["StartTime"], r["EndTime"]) for r in (*first, *second))
    assert spans[1][0] >= spans[0][1], spans  # ISO times of one clock compare as strings


def test_a_requeued_job_resumes_and_ends_as_one_successful_job_identical_to_an_uninterrupted_run(
    cluster, photos, tmp_path
):
    image = f"data.image={photos / 'astronaut.png'}"
    run = ["iterations=400", "logger=wandb"]
    sweep_dir = tmp_path / "sweep"
    proc = sweep(cluster, sweep_dir, image, *run, background=True)
    job = sweep_dir / "0"
    # the first process has its checkpoint folder and its W&B run folder (wandb.init starts a service process, which
    # on a loaded machine can take longer): the requeue then interrupts a run that W&B has opened
    started = lambda: (job / "checkpoints").is_dir() and any((job / "wandb").glob("offline-run-*"))  # noqa: E731
    wait_for(lambda: started() or proc.poll() is not None, 600, "the job's first checkpoint and W&B run")
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    (task,) = slurm_jobs(sweep_dir)
    cluster.command("scontrol", "requeue", task)  # what a preempting scheduler does: SIGTERM, then the queue again
    rc, out = finish(proc)
    assert rc == 0, out[-4000:] + cluster.logs()
    assert not (job / "error.json").exists()  # the first run's, removed when the job finished
    m = metrics(job)
    assert m["iterations"] == 400 and m["processes"] == 2 and 0 < m["resumed_at"] < 400
    assert m["total_seconds"] > m["seconds"]  # the whole run's loop time, both processes
    # the completion log's last record: slurmctld writes it as the job ends, which the sweep may see first
    wait_for(lambda: [r["JobState"] for r in ends(cluster, task)][-1:] == ["COMPLETED"], 60, "the job's last record")
    # one W&B run, continued by the second process: both offline run folders carry its id
    runs = sorted((job / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1, runs
    # the same run without SLURM, not interrupted: the same image, byte for byte
    local = subprocess.run(
        [*DIP_RUN, *SMALL, image, *run, f"hydra.run.dir={tmp_path / 'local'}"],
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    for name in ("restored.png", "curves.csv"):
        assert (job / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_the_time_limit_signal_requeues_a_job_up_to_max_num_timeout_times(cluster, photos, tmp_path):
    """SLURM's warning before a job's time limit is the signal submitit asks for (USR2, `sbatch --signal`); it is
    sent here with `scancel --signal=USR2` once the job has run a while, as slurmctld sends it signal_delay_s before
    the limit (its own timing is up to a minute early: a one-minute limit could signal a job before it has started).
    submitit counts it a timeout (it ran past 80% of a 10-minute limit or the last 10 minutes of it), so the job
    writes its checkpoint and is requeued, up to max_num_timeout times; with 0 the first one ends it, the option
    named."""
    image = f"data.image={photos / 'coffee.png'}"
    run = [image, "iterations=300", "logger=none", "hydra.launcher.timeout_min=10"]
    requeued = sweep(cluster, tmp_path / "requeued", *run, "hydra.launcher.max_num_timeout=1", background=True)
    refused = sweep(cluster, tmp_path / "refused", *run, "hydra.launcher.max_num_timeout=0", background=True)
    for name, proc in (("requeued", requeued), ("refused", refused)):
        folder = tmp_path / name / "0"
        wait_for(lambda: (folder / "checkpoints").is_dir() or proc.poll() is not None, 600, f"{name}'s checkpoint")
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        (job,) = slurm_jobs(tmp_path / name)
        cluster.command("scancel", "--signal=USR2", job)
    rc, out = finish(refused)
    assert rc == 1, out[-3000:]
    error = json.loads((tmp_path / "refused" / "0" / "error.json").read_text())["error"]
    assert "hydra.launcher.max_num_timeout=0" in error and "hydra.launcher.timeout_min=10" in error, error
    assert (tmp_path / "refused" / "0" / "checkpoints").is_dir()  # resumable: written before the job ended
    assert not (tmp_path / "refused" / "0" / "metrics.json").exists()
    rc, out = finish(requeued)
    assert rc == 0, out[-3000:]
    m = metrics(tmp_path / "requeued" / "0")
    assert m["iterations"] == 300 and m["processes"] == 2 and m["resumed_at"] > 0
    assert not (tmp_path / "requeued" / "0" / "error.json").exists()
    (job,) = slurm_jobs(tmp_path / "requeued")
    assert [r["JobState"] for r in ends(cluster, job)][-1] == "COMPLETED"


def test_a_cancelled_job_is_that_jobs_failure_and_the_others_finish(cluster, photos, tmp_path):
    sweep_dir = tmp_path / "sweep"
    image = f"data.image={photos / 'astronaut.png'}"
    proc = sweep(cluster, sweep_dir, image, "logger=none", "iterations=30,5000", background=True)
    long_job = sweep_dir / "1"
    wait_for(lambda: (long_job / "checkpoints").is_dir() or proc.poll() is not None, 600, "the long job to run")
    assert "iterations=5000" in (long_job / ".hydra" / "overrides.yaml").read_text()
    tasks = slurm_jobs(sweep_dir)
    cluster.command("scancel", tasks[1])
    rc, out = finish(proc)
    assert rc == 1 and "1 of 2 jobs failed" in out, out[-3000:]
    assert metrics(sweep_dir / "0")["iterations"] == 30 and not (sweep_dir / "0" / "error.json").exists()
    error = json.loads((long_job / "error.json").read_text())["error"]
    assert "CANCELLED" in error and "resume=auto" in error, error
    assert not (long_job / "metrics.json").exists()


def test_a_gpu_asked_of_a_cpu_partition_is_one_paragraph_naming_the_option(cluster, tmp_path):
    done = sweep(cluster, tmp_path / "sweep", "trainer=gpu", "iterations=10", "seed=0,1")
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "sbatch refused" in said and "hydra.launcher.partition" in said and "trainer=cpu" in said, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert not cluster.queue()  # nothing was submitted


def test_the_single_node_cluster_is_stopped_by_pid(tmp_path):
    c = SlurmCluster(tmp_path / "c")
    try:
        c.start()
    except Unavailable as why:
        pytest.skip(str(why))
    procs = dict(c.procs)
    c.stop()
    assert all(p.poll() is not None for p in procs.values())
    for p in procs.values():
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)
