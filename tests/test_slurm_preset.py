"""launcher=submitit_slurm without a cluster: what its jobs ask SLURM for, sbatch's refusals told as one paragraph,
and the GPU lease in SLURM jobs (simulated: SLURM's environment variables, as test_gpu_lease simulates GPUs).
The jobs on a real scheduler: tests/slurm."""

import multiprocessing as mp
import os
import time

import pytest
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir
from test_gpu_lease import assert_no_sharing

from dip_lightning.errors import DIPError
from dip_lightning.sweeps.gpu_lease import GpuLease, gpu_lease, slurm_lock_dir, visible_devices
from dip_lightning.sweeps.slurm import not_requeued, requeue, sbatch_refused


def launcher_of(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["launcher=submitit_slurm", *overrides], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    return {k: launcher[k] for k in ("gpus_per_task", "cpus_per_task", "mem_gb", "timeout_min", "max_num_timeout")}


@pytest.fixture
def sinfo(tmp_path, monkeypatch):
    """A cluster whose default partition `cpu` has no GPUs and whose partition `gpu` has (an sinfo on PATH)."""
    from dip_lightning.sweeps import slurm

    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'cpu*|(null)\\ngpu|gpu:a100:4(S:0-1)\\ngpu|(null)\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    slurm.partition_has_gpus.cache_clear()
    yield
    slurm.partition_has_gpus.cache_clear()


def test_the_preset_asks_for_a_gpu_where_the_trainer_or_the_partition_has_one(sinfo):
    as_it_is = launcher_of()  # the default trainer (auto) on the default partition, which has no GPUs
    assert as_it_is["gpus_per_task"] is None and as_it_is["mem_gb"] == 4 and as_it_is["cpus_per_task"] == 4
    on_gpus = launcher_of("hydra.launcher.partition=gpu")
    assert on_gpus["gpus_per_task"] == 1 and on_gpus["mem_gb"] == 8
    assert launcher_of("trainer=gpu")["gpus_per_task"] == 1  # asked for: sbatch says so if the partition has none
    cpu = launcher_of("trainer=cpu", "hydra.launcher.partition=gpu", "cpu_threads=2")
    assert cpu["gpus_per_task"] is None and cpu["mem_gb"] == 4 and cpu["cpus_per_task"] == 2
    asked = launcher_of("trainer=cpu", "hydra.launcher.mem_gb=16", "hydra.launcher.gpus_per_task=2")
    assert asked["mem_gb"] == 16 and asked["gpus_per_task"] == 2  # the user's choice stands


def test_sbatch_refusals_are_one_paragraph_naming_the_option():
    said = sbatch_refused(
        "sbatch: error: Invalid generic resource (gres) specification\n",
        {"partition": "cpu", "gpus_per_task": 1, "cpus_per_task": 4, "mem_gb": 8},
    )
    assert "Invalid generic resource" in said and "trainer=cpu" in said and "hydra.launcher.partition" in said
    assert "gpus_per_task=1" in said and "\n" not in said
    said = sbatch_refused("sbatch: error: invalid partition specified: gpu", {"partition": "gpu"})
    assert "sinfo" in said and "partition='gpu'" in said
    said = sbatch_refused("sbatch: error: something new", {})
    assert "something new" in said and "--cfg all" in said  # an unknown refusal still says how to see the request


def requeued_and_exits(signum, frame):
    raise SystemExit(-1)


def test_a_refused_requeue_names_the_options_and_a_preemption_requeues():
    class Refusing:
        def __call__(self, signum, frame):
            raise RuntimeError("Job not requeued because: timed-out too many times.")

    import signal

    old = signal.signal(signal.SIGUSR2, Refusing())
    try:
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"
        assert requeue(signal.SIGUSR2) == "Job not requeued because: timed-out too many times."
        assert requeue(signal.SIGTERM) is None  # SLURM requeues a SIGTERMed job itself (scontrol requeue)
        signal.signal(signal.SIGUSR2, requeued_and_exits)  # as submitit's handler does once it has requeued
        with pytest.raises(SystemExit):
            requeue(signal.SIGUSR2)
    finally:
        os.environ.pop("SUBMITIT_EXECUTOR", None)
        signal.signal(signal.SIGUSR2, old)
    message = not_requeued("timed-out too many times", RuntimeError("Interrupted by SIGUSR2 at iteration 40"))
    assert "hydra.launcher.max_num_timeout" in message and "hydra.launcher.timeout_min" in message
    assert "resume=auto" in message


# ------------------------------------------------------------------------------------------- GPUs in SLURM jobs
@pytest.fixture
def slurm_job(monkeypatch):
    """A SLURM job given GPUs 2 and 5 of its node, which CUDA_VISIBLE_DEVICES shows it as 0 and 1."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_GPUS", "2,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    yield
    GpuLease.pinned = None


def test_a_slurm_job_shares_out_only_the_gpus_slurm_gave(slurm_job, tmp_path):
    assert visible_devices(None) == ["0", "1"] and visible_devices(1) == ["0"] and visible_devices(["1"]) == ["1"]
    with pytest.raises(DIPError, match=r"gpu_lease.devices=4 GPUs.*CUDA_VISIBLE_DEVICES=0,1.*job 4242"):
        visible_devices(4)
    with pytest.raises(DIPError, match=r"gpu_lease.devices=\['3'\]"):
        visible_devices(["3"])
    assert slurm_lock_dir(tmp_path / "locks") == tmp_path / "locks" / "slurm-job-4242"


def test_outside_slurm_the_leases_are_machine_wide(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # a CPU-only SLURM job: no GPUs of its own
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert visible_devices(None) == ["0", "1", "2"] and slurm_lock_dir(tmp_path) == tmp_path


def _job_worker(job_id, lock_dir, jobs, queue, barrier):
    """A process of SLURM job `job_id`, given one GPU it sees as 0 (SLURM's device cgroup), running `jobs` jobs."""
    os.environ.update(SLURM_JOB_ID=job_id, SLURM_JOB_GPUS=job_id[-1], CUDA_VISIBLE_DEVICES="0")
    GpuLease.pinned = None
    for i in range(jobs):
        with gpu_lease({"enabled": True, "lock_dir": str(lock_dir), "poll_seconds": 0.005}) as lease:
            start = time.monotonic()
            if i == 0 and barrier is not None:
                barrier.wait(timeout=60)  # every job holds its first lease at the same time
            time.sleep(0.02)
            queue.put((job_id, lease.device, start, time.monotonic()))


def test_two_slurm_jobs_each_on_its_own_gpu_0_do_not_wait_for_each_other(tmp_path):
    # Both see their GPU as "0": leasing machine-wide they would take turns; in SLURM each job's GPU is its own.
    ctx = mp.get_context("fork")
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_job_worker, args=(j, tmp_path, 3, queue, barrier)) for j in ("71", "72")]
    for p in procs:
        p.start()
    records = [queue.get(timeout=60) for _ in range(6)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0  # the barrier was passed: two leases of "GPU 0" were held at once
    assert {d for _, d, _, _ in records} == {"0"}


def _task_worker(lock_dir, jobs, queue):
    """A worker of one SLURM job given two GPUs (a joblib or packed worker), `jobs` jobs in turn."""
    GpuLease.pinned = None
    for _ in range(jobs):
        with gpu_lease({"enabled": True, "lock_dir": str(lock_dir), "poll_seconds": 0.005}) as lease:
            start = time.monotonic()
            assert os.environ["CUDA_VISIBLE_DEVICES"] == lease.device
            time.sleep(0.02)
            queue.put((os.getpid(), lease.device, start, time.monotonic()))


def test_the_workers_of_one_slurm_job_never_share_one_of_its_gpus(slurm_job, tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_task_worker, args=(tmp_path, 4, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    records = [queue.get(timeout=60) for _ in range(12)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert set(assert_no_sharing(records)) <= {"0", "1"}
    assert (tmp_path / "slurm-job-4242").is_dir()
