"""GPU leases with simulated GPUs: worker processes that are reused for jobs of different lengths never share a GPU.

The tests assert what the leases guarantee, not what a scheduler happens to do: where a test needs jobs to run at
the same time, they wait for each other while holding their leases (a barrier), so that a loaded machine that runs
the workers one after another cannot make them pass or fail."""

import multiprocessing as mp
import os
import random
import signal
import time

import pytest

from dip_lightning.errors import DIPError
from dip_lightning.sweeps.gpu_lease import GpuLease, gpu_lease, visible_devices


def hold_until_the_slots_are_taken(together) -> None:
    """The first `parties` leases of a simulation (as many as can be held at once) wait for each other while held."""
    if together is None:
        return
    count, barrier = together
    with count.get_lock():
        count.value += 1
        first = count.value <= barrier.parties
    if first:
        barrier.wait(timeout=60)


def worker(lock_dir, devices, jobs, seed, sticky, queue, jobs_per_gpu=1, together=None):
    """A reused worker process (as joblib's): runs `jobs` jobs in turn, each under a lease; reports intervals."""
    random.seed(seed)
    GpuLease.pinned = None
    cuda = {"started": False}  # simulated: the first job in this process starts CUDA when `sticky`
    for _ in range(jobs):
        lease = GpuLease(
            devices, lock_dir, poll_seconds=0.005, cuda_started=lambda: cuda["started"], jobs_per_gpu=jobs_per_gpu
        )
        with lease:
            start = time.monotonic()
            assert os.environ["CUDA_VISIBLE_DEVICES"] == lease.device
            cuda["started"] = sticky
            hold_until_the_slots_are_taken(together)
            time.sleep(random.choice([0.01, 0.05, 0.15]))  # jobs of different lengths
            queue.put((os.getpid(), lease.device, start, time.monotonic()))
        assert os.environ.get("CUDA_VISIBLE_DEVICES") is None  # given back on release


def simulate(tmp_path, n_gpus, n_workers, jobs_each, sticky, jobs_per_gpu=1, together=False):
    """`together`: the first leases, as many as there are slots (or workers), are held at the same time."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    devices = [str(i) for i in range(n_gpus)]
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    barrier = (ctx.Value("i", 0), ctx.Barrier(min(n_workers, n_gpus * jobs_per_gpu))) if together else None
    args = (tmp_path / "locks", devices, jobs_each)
    procs = [
        ctx.Process(target=worker, args=(*args, i, sticky, queue, jobs_per_gpu, barrier)) for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    records = [queue.get(timeout=60) for _ in range(n_workers * jobs_each)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return records


def assert_no_sharing(records):
    by_gpu = {}
    for pid, device, start, end in records:
        by_gpu.setdefault(device, []).append((start, end))
    for device, spans in by_gpu.items():
        spans.sort()
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"two jobs on GPU {device} at once"
    return by_gpu


@pytest.mark.parametrize("n_gpus, n_workers", [(2, 2), (2, 4), (3, 5), (4, 2)])
def test_no_two_running_jobs_share_a_gpu(tmp_path, n_gpus, n_workers):
    records = simulate(tmp_path, n_gpus, n_workers, jobs_each=4, sticky=False)
    by_gpu = assert_no_sharing(records)
    assert len(records) == n_workers * 4
    assert set(by_gpu) <= {str(i) for i in range(n_gpus)}  # only the given GPUs


def test_reused_worker_with_cuda_started_keeps_its_gpu(tmp_path):
    # Once CUDA runs in a process it can only use the GPU it saw first: every later job there gets that one.
    records = simulate(tmp_path, n_gpus=2, n_workers=3, jobs_each=3, sticky=True)
    assert_no_sharing(records)
    devices_of = {}
    for pid, device, _, _ in records:
        devices_of.setdefault(pid, set()).add(device)
    assert all(len(d) == 1 for d in devices_of.values()), devices_of


def _hold_forever(lock_dir, held):
    GpuLease(["0"], lock_dir).acquire()
    held.set()  # the lease is taken (its lock file exists before: that does not say it is locked)
    time.sleep(600)


def test_a_killed_job_frees_its_gpu(tmp_path):
    ctx = mp.get_context("fork")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(tmp_path, held))
    holder.start()
    try:
        assert held.wait(timeout=60), "the holder did not take its lease"
        with pytest.raises(TimeoutError):
            GpuLease(["0"], tmp_path, poll_seconds=0.01, timeout=0.2, cuda_started=lambda: False).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    with GpuLease(["0"], tmp_path, poll_seconds=0.01, timeout=5, cuda_started=lambda: False) as lease:
        assert lease.device == "0"
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)


def most_at_once(records) -> dict[str, int]:
    """Per GPU, the largest number of jobs that ran on it at the same time."""
    most = {}
    for device in {r[1] for r in records}:
        events = sorted((t, kind) for _, d, start, end in records if d == device for t, kind in ((start, 1), (end, -1)))
        running = peak = 0
        for _, kind in events:  # at equal times the end (-1) sorts first: a job handed over is not overlap
            running += kind
            peak = max(peak, running)
        most[device] = peak
    return most


@pytest.mark.parametrize("sticky", [False, True], ids=["fresh workers", "reused workers with CUDA started"])
def test_jobs_per_gpu_caps_the_jobs_running_on_each_gpu(tmp_path, sticky):
    # the first 4 leases (one per slot) are held at once, so both slots of both GPUs are used whatever the scheduler
    records = simulate(tmp_path, n_gpus=2, n_workers=5, jobs_each=4, sticky=sticky, jobs_per_gpu=2, together=True)
    assert len(records) == 20
    most = most_at_once(records)
    assert most == {"0": 2, "1": 2}, most  # never more than the 2 slots; the second slot of each GPU was used


def test_a_second_job_joins_a_gpu_only_when_every_gpu_has_one(tmp_path):
    leases = [GpuLease(["0", "1"], tmp_path, cuda_started=lambda: False, jobs_per_gpu=2) for _ in range(4)]
    try:
        got = [lease.acquire() for lease in leases]
        assert sorted(got[:2]) == ["0", "1"] and sorted(got[2:]) == ["0", "1"]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "gpu0.lock",
            "gpu0.slot1.lock",
            "gpu1.lock",
            "gpu1.slot1.lock",
        ]
        with pytest.raises(TimeoutError):  # every slot is taken
            GpuLease(["0", "1"], tmp_path, poll_seconds=0.01, timeout=0.1, jobs_per_gpu=2).acquire()
    finally:
        for lease in leases:
            lease.release()
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        GpuLease.pinned = None


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_a_bad_jobs_per_gpu_is_one_clear_error(value):
    with pytest.raises(DIPError, match=f"gpu_lease.jobs_per_gpu={value!r} is not valid; expected a whole number >= 1"):
        GpuLease(["0"], "/tmp/unused", jobs_per_gpu=value)


def test_devices_from_config_env_and_disabled(monkeypatch):
    assert visible_devices([0, 2]) == ["0", "2"] and visible_devices(3) == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert visible_devices(None) == ["1", "3"]
    with gpu_lease({"enabled": False}) as lease:
        assert lease is None


# ----------------------------------------------------------------------------------- the lock folder is the user's own
def lease_in(lock_dir, **kw):
    return GpuLease(["0"], lock_dir, poll_seconds=0.01, timeout=0.2, cuda_started=lambda: False, **kw)


@pytest.fixture
def locks(tmp_path):
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("a file of the user's that the lease must not touch\n")
    yield lock_dir, victim
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    GpuLease.pinned = None


def test_a_symlink_planted_at_a_lock_file_is_not_followed(locks):
    lock_dir, victim = locks
    before = victim.read_text()
    (lock_dir / "gpu0.lock").symlink_to(victim)
    with pytest.raises(DIPError, match=r"lock file '.*gpu0\.lock' is a symbolic link; expected a lock file") as err:
        lease_in(lock_dir).acquire()
    assert "\n" not in str(err.value)
    assert victim.read_text() == before  # not truncated, no PID written
    (lock_dir / "gpu0.lock").unlink()
    (lock_dir / "gpu0.lock").symlink_to(lock_dir.parent / "made_by_the_lease")  # a dangling link: nothing created
    with pytest.raises(DIPError, match="is a symbolic link"):
        lease_in(lock_dir).acquire()
    assert not (lock_dir.parent / "made_by_the_lease").exists()


def test_a_file_that_is_not_a_lock_is_left_as_it_is(locks):
    lock_dir, victim = locks
    before = victim.read_text()
    os.link(victim, lock_dir / "gpu0.lock")  # a hard link to the victim
    with pytest.raises(DIPError, match=r"gpu0\.lock' has 2 hard links; expected a lock file"):
        lease_in(lock_dir).acquire()
    os.unlink(lock_dir / "gpu0.lock")
    (lock_dir / "gpu0.lock").write_text(before)  # a regular file holding something else than a PID
    with pytest.raises(DIPError, match=r"gpu0\.lock' holds something other than a PID"):
        lease_in(lock_dir).acquire()
    assert victim.read_text() == before == (lock_dir / "gpu0.lock").read_text()


def test_a_lease_writes_its_pid_into_a_lock_file_only_the_user_can_read(locks):
    lock_dir, _ = locks
    (lock_dir / "gpu0.lock").write_text("12345\n")  # a lock file left by an earlier job
    with lease_in(lock_dir) as lease:
        assert lease.device == "0"
        assert (lock_dir / "gpu0.lock").read_text() == f"{os.getpid()}\n"
    new = lock_dir.parent / "new" / "locks"
    with lease_in(new):
        assert oct(new.stat().st_mode & 0o777) == oct(0o700)  # whatever the umask
        assert oct((new / "gpu0.lock").stat().st_mode & 0o777) == oct(0o600)


def test_a_lock_folder_others_can_write_to_is_refused(locks):
    lock_dir, _ = locks
    lock_dir.chmod(0o777)
    with pytest.raises(
        DIPError, match=r"lock_dir='.*locks' may be written to by other users \(mode 0777\); expected"
    ) as err:
        lease_in(lock_dir).acquire()
    assert "\n" not in str(err.value) and "chmod 700" in str(err.value)
    assert list(lock_dir.iterdir()) == []  # no lock file made there
    lock_dir.chmod(0o770)
    with pytest.raises(DIPError, match=r"mode 0770"):
        lease_in(lock_dir).acquire()


def test_a_lock_folder_of_another_user_is_refused(locks, monkeypatch):
    lock_dir, _ = locks
    uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: uid + 1)
    with pytest.raises(
        DIPError, match=rf"is owned by another user \(uid {uid}\); expected a folder owned by this user"
    ):
        lease_in(lock_dir).acquire()
    assert list(lock_dir.iterdir()) == []


def test_the_default_lock_folder_is_the_users_own(monkeypatch, tmp_path):
    from conftest import compose_cfg

    from dip_lightning.sweeps.gpu_lease import default_lock_dir

    monkeypatch.delenv("DIP_GPU_LOCK_DIR", raising=False)
    assert str(default_lock_dir()) == f"/tmp/dip_lightning_gpu_locks-{os.getuid()}"
    assert compose_cfg([]).gpu_lease.lock_dir is None  # conf/train.yaml: null, the per-user default
    assert str(GpuLease(["0"]).lock_dir) == f"/tmp/dip_lightning_gpu_locks-{os.getuid()}"
    monkeypatch.setenv("DIP_GPU_LOCK_DIR", str(tmp_path / "mine"))
    assert default_lock_dir() == tmp_path / "mine" and compose_cfg([]).gpu_lease.lock_dir == str(tmp_path / "mine")
    with gpu_lease({"enabled": True, "devices": [0], "lock_dir": None}) as lease:
        assert lease.lock_dir == tmp_path / "mine" and (tmp_path / "mine" / "gpu0.lock").is_file()
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    GpuLease.pinned = None
