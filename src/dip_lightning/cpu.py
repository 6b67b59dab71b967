"""How many CPU threads a run uses by default: the CPUs it may use that other work leaves free.

On a machine shared with other processes, torch's default (a thread per core) collapses: OpenMP's threads spin
while they wait for a peer that another process has descheduled. Measured on this project's 2-core machine, skip128x5
at 128 px (experiments/RESULTS.md, `bench_speed.py --sizes 128 --load 1`): beside one busy process, 2 threads took
1.62x the time of 1 thread; OMP_WAIT_POLICY=PASSIVE avoided that (1.03x) but cost 1.22x on the idle machine (0.73
against 0.60 of 1 thread's time). Counting the CPUs that are busy when the run starts did best in both: 0.61 idle
(2 threads), 1.02 beside the busy process (1 thread). OMP_NUM_THREADS or MKL_NUM_THREADS is always obeyed; an
explicit `cpu_threads=N` is, up to the CPUs this process may use, with a warning where it is capped (threads beyond
the CPUs only wait for each other: cpu_threads=256 on the 2 CPUs ran at 1/50 of the speed).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("dip_lightning")


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def busy_cpus(cpus: list[int], interval: float = 0.2) -> float:
    """How many of `cpus` other processes keep busy, from /proc/stat over `interval` seconds (0 where unknown)."""

    def sample() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    values = [int(v) for v in fields[:8]]
                    idle = values[3] + values[4]  # idle + iowait
                    out[int(name[3:])] = (sum(values), idle)
        return out

    try:
        first = sample()
        time.sleep(interval)
        second = sample()
    except (OSError, ValueError):
        return 0.0
    busy = 0.0
    for cpu in cpus:
        if cpu in first and cpu in second:
            total = second[cpu][0] - first[cpu][0]
            idle = second[cpu][1] - first[cpu][1]
            busy += (total - idle) / total if total > 0 else 0.0
    return busy


def threads_fixed_by_environment() -> bool:
    return any(os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


_torch_default: int | None = None  # torch's own count, read before any run of this process changed it


def set_threads(cpu_threads: int | None) -> tuple[int, str]:
    """Set torch's CPU threads for a run: `cpu_threads`, else what the environment fixed, else the free CPUs.
    Returns (threads, why) for the log."""
    import torch

    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    if cpu_threads:
        threads, usable = int(cpu_threads), len(allowed_cpus())
        if threads > usable:  # more threads than CPUs only wait for each other: 256 on 2 CPUs ran 50x slower
            log.warning(
                "cpu_threads=%d capped at %d: this process may use %d CPUs (os.sched_getaffinity), and threads "
                "beyond them only wait for each other",
                threads,
                usable,
                usable,
            )
            torch.set_num_threads(usable)
            return usable, f"cpu_threads={threads}, capped at the {usable} CPUs allowed"
        torch.set_num_threads(threads)
        return threads, "cpu_threads"
    if threads_fixed_by_environment():
        return torch.get_num_threads(), "OMP_NUM_THREADS/MKL_NUM_THREADS"
    cpus = allowed_cpus()
    busy = busy_cpus(cpus)
    threads = max(1, min(_torch_default, len(cpus) - round(busy)))
    torch.set_num_threads(threads)
    return threads, f"{len(cpus)} CPUs allowed, {busy:.1f} busy with other work"
