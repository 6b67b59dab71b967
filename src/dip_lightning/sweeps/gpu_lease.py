"""One GPU per running job (or a few, `jobs_per_gpu`): a lease on a per-GPU lock file, taken at job start and given
back at job end.

Placing jobs by job number (GPU = num % n) breaks both ways when jobs take different times or workers are reused:
two jobs land on one GPU while another GPU idles. A lease cannot: a job holds an exclusive `fcntl` lock on
`<lock_dir>/gpu<id>.lock` for as long as it runs, and a job that finds every GPU taken waits for one. The kernel drops
the lock when the process dies, so a crashed job never keeps its GPU.

The lease sets CUDA_VISIBLE_DEVICES to the one leased GPU before CUDA starts, so the job sees it as cuda:0. CUDA
reads that variable once per process: a reused worker process (joblib) whose CUDA is already running can only use
the GPU it saw first, so such a process waits for that same GPU again ("sticky") instead of taking another one.

`jobs_per_gpu: N` gives each GPU N slots (`gpu<id>.lock`, `gpu<id>.slot1.lock`, ...), filled one per GPU first, so a
second job joins a GPU only when every GPU has one. Kernels of two processes do not run at the same time on a GPU
(each has its own CUDA context), so N > 1 pays where a job leaves its GPU idle part of the time: its start-up,
compilation and CUDA graph capture, its host-bound launches at small sizes, its outputs at the end.

In a SLURM job that was given GPUs (SLURM_JOB_GPUS or SLURM_STEP_GPUS set), the GPUs to share out are the ones
SLURM gave (`slurm_devices`: CUDA_VISIBLE_DEVICES, which SLURM sets per job or task), and the leases are taken in a
folder of that job's own (`<lock_dir>/slurm-job-<SLURM_JOB_ID>`): SLURM never gives one GPU to two jobs, but with
its device cgroups every job sees its GPU as 0, so jobs that leased machine-wide would wait for each other's
"GPU 0". gpu_lease.devices may only name GPUs SLURM gave: another one is another job's.

The lock folder is the user's own: by default `/tmp/dip_lightning_gpu_locks-<uid>` (`gpu_lease.lock_dir`, or the
environment variable DIP_GPU_LOCK_DIR, names another). It is created with mode 0700, and one that is not owned by
this user or that others may write to is refused: anyone who can write there could plant a symbolic link at a lock
file's name and have the lease write into the file it points to. Lock files are opened without following a symbolic
link (O_NOFOLLOW) and without truncating them, and a lease writes its PID only into a file that is a lock: a regular
file of this user with one link, holding nothing but a PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..errors import DIPError

log = logging.getLogger("dip_lightning")
LOCK_CONTENT = re.compile(rb"\d*\n?")  # what a lock file holds: its holder's PID (or nothing yet)


def default_lock_dir() -> Path:
    """The lock folder when none is configured: DIP_GPU_LOCK_DIR, else one of this user's own under /tmp.

    A fixed path, the same for every process of the user however it was started (shell, tmux, cron, SLURM), so that
    every job of the user's sweeps finds the same leases; not $XDG_RUNTIME_DIR, which such processes do not share.
    """
    env = os.environ.get("DIP_GPU_LOCK_DIR")
    return Path(env) if env and env.strip() else Path(f"/tmp/dip_lightning_gpu_locks-{os.getuid()}")


def _refuse_dir(lock_dir: Path, why: str) -> DIPError:
    return DIPError(
        f"gpu_lease.lock_dir={str(lock_dir)!r} {why}; expected a folder owned by this user (uid {os.getuid()}) "
        "that no other user may write to (mode 0700), since anyone who can write there could plant a symbolic "
        "link at a lock file and have the lease write into the file it points to. If it is yours, `chmod 700` "
        "it; else set gpu_lease.lock_dir (or DIP_GPU_LOCK_DIR) to a folder of your own, e.g. one under your home."
    )


def open_lock_dir(lock_dir: Path) -> int:
    """A descriptor of the lock folder, created with mode 0700 when missing, after checking that it is safe."""
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        link = os.lstat(lock_dir)
        fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise _refuse_dir(lock_dir, f"cannot be used as a folder ({err.strerror})") from None
    st = os.fstat(fd)  # the folder opened, not the path: what is checked is what the lock files go in
    uid = os.getuid()
    if stat.S_ISLNK(link.st_mode) and link.st_uid != uid:
        why = f"is a symbolic link of another user (uid {link.st_uid})"
    elif st.st_uid != uid:
        why = f"is owned by another user (uid {st.st_uid})"
    elif st.st_mode & 0o022:
        why = f"may be written to by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return fd
    os.close(fd)
    raise _refuse_dir(lock_dir, why)


def _refuse_file(path: Path, why: str) -> DIPError:
    return DIPError(
        f"gpu_lease lock file {str(path)!r} {why}; expected a lock file of this user's (a regular file holding "
        "only the PID of the job that holds it), which the lease creates itself. The lease did not write to it: "
        "look at what put it there, remove it, and start the job again."
    )


SLURM_GPUS = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS")  # set by SLURM in a job (step) it gave GPUs to


def slurm_devices() -> list[str] | None:
    """The GPUs SLURM gave this job or task, as CUDA sees them (CUDA_VISIBLE_DEVICES, which SLURM sets for it);
    None outside a SLURM job given GPUs."""
    if not os.environ.get("SLURM_JOB_ID") or not any(os.environ.get(k, "").strip() for k in SLURM_GPUS):
        return None
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [d.strip() for d in env.split(",") if d.strip()]


def visible_devices(devices: Sequence[int | str] | int | None = None) -> list[str]:
    """The GPU ids to share out: given ids, or a count, else CUDA_VISIBLE_DEVICES, else every GPU of the machine.
    In a SLURM job given GPUs: the ones it gave, and given ids or a count must be among them."""
    given = slurm_devices()
    if given is not None:
        return _within_slurm(devices, given)
    if isinstance(devices, int):
        return [str(i) for i in range(devices)]
    if devices:
        return [str(d) for d in devices]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # NVML count: does not start CUDA


def _within_slurm(devices: Sequence[int | str] | int | None, given: list[str]) -> list[str]:
    if devices is None or (not isinstance(devices, int) and not devices):
        return given
    if isinstance(devices, int):
        if devices <= len(given):
            return given[:devices]
        wanted = f"gpu_lease.devices={devices} GPUs"
    else:
        wanted_ids = [str(d) for d in devices]
        if set(wanted_ids) <= set(given):
            return wanted_ids
        wanted = f"gpu_lease.devices={list(devices)}"
    raise DIPError(
        f"{wanted} is more than this SLURM job was given: SLURM gave it the GPUs CUDA_VISIBLE_DEVICES="
        f"{','.join(given) or '(none)'} (job {os.environ.get('SLURM_JOB_ID')}), and any other GPU of the node is "
        "another job's. Leave gpu_lease.devices=null to share out the ones SLURM gave, or ask SLURM for more "
        "(hydra.launcher.gpus_per_task, or sbatch --gpus)."
    )


def slurm_lock_dir(lock_dir: Path) -> Path:
    """`lock_dir` itself, or in a SLURM job given GPUs, its folder for that job (checked and made first)."""
    if slurm_devices() is None:
        return lock_dir
    os.close(open_lock_dir(lock_dir))
    return lock_dir / f"slurm-job-{os.environ['SLURM_JOB_ID']}"


def cuda_started() -> bool:
    """Whether this process has started CUDA (without starting it)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


class GpuLease:
    """An exclusive lease on one of `devices`; use as a context manager."""

    # The GPU this process made visible before CUDA started: a reused process can only ever use that one.
    pinned: str | None = None

    def __init__(
        self,
        devices: Sequence[str],
        lock_dir: str | os.PathLike | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
        cuda_started: Callable[[], bool] = cuda_started,
        jobs_per_gpu: int = 1,
    ):
        if not devices:
            raise DIPError(
                "gpu_lease.enabled=true but no GPU is visible (CUDA_VISIBLE_DEVICES is empty and torch "
                "counts 0 GPUs); set gpu_lease.devices=[0,1,...] or use a CPU launcher."
            )
        if isinstance(jobs_per_gpu, bool) or not isinstance(jobs_per_gpu, int) or jobs_per_gpu < 1:
            raise DIPError(
                f"gpu_lease.jobs_per_gpu={jobs_per_gpu!r} is not valid; expected a whole number >= 1 (1: each "
                "running job has a GPU to itself)."
            )
        self.devices = [str(d) for d in devices]
        self.jobs_per_gpu = jobs_per_gpu
        self.lock_dir = Path(lock_dir).expanduser() if lock_dir else default_lock_dir()
        self.poll_seconds, self.timeout = float(poll_seconds), timeout
        self.cuda_started = cuda_started
        self.device: str | None = None
        self._fd: int | None = None
        self._old_env: str | None = None

    def _candidates(self) -> list[tuple[str, int]]:
        """(GPU, slot) pairs in the order to try: every GPU's first slot before any GPU's second."""
        slots = range(self.jobs_per_gpu)
        if GpuLease.pinned is not None and self.cuda_started():
            return [(GpuLease.pinned, slot) for slot in slots]
        # start at a per-process offset so that waiting jobs do not all try GPU 0 first
        k = os.getpid() % len(self.devices)
        order = self.devices[k:] + self.devices[:k]
        return [(device, slot) for slot in slots for device in order]

    def _try(self, device: str, slot: int = 0) -> bool:
        name = f"gpu{device}.lock" if slot == 0 else f"gpu{device}.slot{slot}.lock"
        dir_fd = open_lock_dir(self.lock_dir)
        try:
            # never follows a symbolic link, never truncates (a file that is not a lock is left as it is)
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as err:
            why = "is a symbolic link" if os.path.islink(self.lock_dir / name) else f"cannot be opened ({err.strerror})"
            raise _refuse_file(self.lock_dir / name, why) from None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _refuse_file(self.lock_dir / name, "is not a regular file")
            if st.st_uid != os.getuid():
                raise _refuse_file(self.lock_dir / name, f"is owned by another user (uid {st.st_uid})")
            if st.st_nlink != 1:  # a hard link to some other file
                raise _refuse_file(self.lock_dir / name, f"has {st.st_nlink} hard links")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        held = os.pread(fd, 33, 0)  # held now: no lease is writing its PID into it
        if len(held) > 32 or not LOCK_CONTENT.fullmatch(held):
            os.close(fd)
            raise _refuse_file(self.lock_dir / name, "holds something other than a PID")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for a person looking at the lock dir
        self._fd, self.device = fd, device
        return True

    def acquire(self) -> str:
        start, waited = time.monotonic(), False
        while True:
            for device, slot in self._candidates():
                if self._try(device, slot):
                    if waited:
                        log.info("gpu lease: got GPU %s after %.0f s", device, time.monotonic() - start)
                    self._old_env = os.environ.get("CUDA_VISIBLE_DEVICES")
                    os.environ["CUDA_VISIBLE_DEVICES"] = device
                    if not self.cuda_started():
                        GpuLease.pinned = device
                    return device
            if self.timeout is not None and time.monotonic() - start > self.timeout:
                raise TimeoutError(f"no free GPU among {self.devices} after {self.timeout} s")
            if not waited:
                log.info(
                    "gpu lease: all of GPUs %s are taken (%d job(s) each); waiting",
                    ",".join(self.devices),
                    self.jobs_per_gpu,
                )
                waited = True
            time.sleep(self.poll_seconds)

    def release(self) -> None:
        if self._fd is None:
            return
        if self._old_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._old_env
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = self.device = None

    def __enter__(self) -> "GpuLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def gpu_lease(cfg) -> Iterator[GpuLease | None]:
    """The lease a job's config asks for (gpu_lease.enabled), or nothing."""
    if cfg is None or not cfg.get("enabled", False):
        yield None
        return
    # release() puts CUDA_VISIBLE_DEVICES back, so a reused process sees the machine's full list again here
    lease = GpuLease(
        visible_devices(cfg.get("devices")),
        slurm_lock_dir(Path(cfg.get("lock_dir") or default_lock_dir()).expanduser()),
        poll_seconds=cfg.get("poll_seconds", 1.0),
        jobs_per_gpu=cfg.get("jobs_per_gpu", 1),
    )
    with lease:
        log.info("gpu lease: this job runs on GPU %s", lease.device)
        yield lease
