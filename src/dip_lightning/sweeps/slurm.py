"""SLURM sweeps (launcher=submitit_slurm, hydra_plugins/dip_sweepers/slurm_launcher.py): what the preset asks for,
what sbatch's refusals mean, how a job's state is known, and a job's preemption and requeue (docs/cluster.md).

- The preset follows the trainer (`slurm_gpus`, `slurm_mem_gb`, resolvers of conf/launcher/submitit_slurm.yaml): one
  GPU per task with trainer=gpu, none with trainer=cpu, and with the default trainer (accelerator=auto) one where
  the partition's nodes have GPUs (sinfo); CPUs from cpu_threads; memory by device.
- sbatch's own errors ("Invalid generic resource (gres) specification") are one paragraph naming the option to
  change (`sbatch_refused`), not submitit's FailedJobError traceback.
- A job's state comes from sacct, else from squeue (the launcher's SqueueWatcher: on a cluster without accounting
  submitit waits forever for a cancelled job), and a job that ended without a result (scancel, out of time or
  memory, a node failure) is that job's failure with its reason in its folder's error.json (`lost_job`), not the
  sweep's end.
- In a job: submitit's preemption signal (USR2, sent before the time limit and by a preempting scheduler) is caught
  by the loop like SIGTERM (checkpoint/signals.py, `preemption_signal`), the checkpoint is written, and then
  submitit's own handler requeues the job (`requeue`), up to hydra.launcher.max_num_timeout times for a timeout.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
from pathlib import Path
from typing import Any

from ..config.resolvers import register_resolvers

log = logging.getLogger("dip_lightning")

GPU_ACCELERATORS = ("gpu", "cuda")
MEM_GB = {"gpu": 8, "cpu": 4}  # a 512 px run of the paper's skip net peaks at 2.5 GB on a CPU; a GPU job adds CUDA's


def slurm_gpus(accelerator: Any, partition: Any = None) -> int | None:
    """hydra.launcher.gpus_per_task for trainer.accelerator: 1 on a GPU, none (no gres request) on a CPU; with
    `auto` (the default trainer), what the partition has: 1 where its nodes have GPUs (sinfo), else none, so the
    preset runs as it is on a GPU partition and on a CPU one, and the job's trainer takes what its node has."""
    kind = str(accelerator).lower()
    if kind in GPU_ACCELERATORS:
        return 1
    if kind == "auto":
        return 1 if partition_has_gpus(None if partition in (None, "") else str(partition)) else None
    return None


def slurm_mem_gb(accelerator: Any, partition: Any = None) -> int:
    """hydra.launcher.mem_gb for trainer.accelerator (MEM_GB), by whether the job gets a GPU."""
    return MEM_GB["gpu" if slurm_gpus(accelerator, partition) else "cpu"]


@functools.lru_cache(maxsize=None)
def partition_has_gpus(partition: str | None) -> bool:
    """Whether the nodes of `partition` (None: the cluster's default one) have GPUs, by sinfo's generic resources
    (%G: "gpu:a100:4(S:0-1)", "(null)"). False where sinfo does not answer (no SLURM here: sbatch will say so)."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    if proc.returncode != 0:
        return False
    for line in proc.stdout.splitlines():
        name, _, gres = line.strip().partition("|")
        default = name.endswith("*")
        if (partition is None and default) or name.rstrip("*") == partition:
            if "gpu" in gres.lower():
                return True
    return False


RESOLVERS = {"dip.slurm_gpus": slurm_gpus, "dip.slurm_mem_gb": slurm_mem_gb}
register_resolvers(RESOLVERS)  # on import: conf/launcher/submitit_slurm.yaml reads them

# (what sbatch says, the options to look at): its refusals of a submission, by the words of its message
SBATCH_ERRORS = (
    (
        "generic resource",
        "the partition has no GPUs of that kind: trainer=gpu and hydra.launcher.gpus_per_task ask for one, while "
        "the default trainer asks for one only where the partition has GPUs and trainer=cpu never does; for a GPU "
        "job choose a GPU partition (hydra.launcher.partition) or the kind of GPU it has "
        "(hydra.launcher.gres=gpu:<type>:1, with hydra.launcher.gpus_per_task=null)",
    ),
    ("invalid partition", "hydra.launcher.partition names no partition of this cluster (sinfo lists them)"),
    ("account", "hydra.launcher.account is not one this user may charge on that partition (sacctmgr show assoc)"),
    ("qos", "hydra.launcher.qos is not one this user may use on that partition (sacctmgr show assoc)"),
    ("time limit", "hydra.launcher.timeout_min is over the partition's limit (sinfo -o '%P %l')"),
    (
        "node configuration is not available",
        "no node of the partition has that many CPUs, that much memory or those GPUs: lower "
        "hydra.launcher.cpus_per_task (cpu_threads), hydra.launcher.mem_gb or hydra.launcher.gpus_per_task",
    ),
    ("memory specification", "hydra.launcher.mem_gb is more than a node of the partition has"),
)
ASKED = ("partition", "account", "qos", "timeout_min", "gpus_per_task", "gres", "cpus_per_task", "mem_gb")


def sbatch_refused(stderr: str, params: dict[str, Any]) -> str:
    """One paragraph for sbatch's refusal of a sweep's jobs: its words, the options that it is about, and what the
    submission asked for."""
    said = " ".join(line.strip() for line in str(stderr).splitlines() if line.strip()) or "no message"
    low = said.lower()
    hint = next((fix for words, fix in SBATCH_ERRORS if words in low), None)
    asked = ", ".join(f"{k}={params.get(k)!r}" for k in ASKED if params.get(k) is not None) or "the defaults"
    return (
        f"sbatch refused the sweep's jobs, so none ran: {said!r}. "
        + (f"That means {hint}. " if hint else "")
        + f"The jobs asked for {asked} (hydra.launcher.*, from conf/launcher/submitit_slurm.yaml and the command "
        "line); change the one it names (`sinfo -o '%P %G %c %m %l'` lists each partition's GPUs, CPUs, memory and "
        "time limit), or print them all: dip-run launcher=submitit_slurm <the same overrides> --cfg all "
        "-p hydra.launcher --resolve."
    )


# ------------------------------------------------------------------------------------------------ lost jobs
ENDINGS = {
    "CANCELLED": "it was cancelled (scancel, or by the cluster's administrators)",
    "TIMEOUT": "it ran out of its time (hydra.launcher.timeout_min) and was not requeued",
    "OUT_OF_MEMORY": "it used more memory than it asked for (raise hydra.launcher.mem_gb)",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "it was preempted and not requeued",
    "BOOT_FAIL": "its node did not boot",
    "DEADLINE": "it reached its deadline",
    "FAILED": "its process ended with an error before writing a result",
}


def lost_job(folder: Path, job_id: str, state: str, log_path: Path | None) -> str:
    """The error.json message of a job that ended without a result (submitit's UncompletedJobError), written into
    its folder unless the job finished there after all (metrics.json). Returns the message."""
    import json

    from ..run.job import write_error

    state = (state or "UNKNOWN").split()[0].upper()
    why = ENDINGS.get(state, "its process ended without writing a result")
    earlier = ""
    try:
        earlier = json.loads((folder / "error.json").read_text()).get("error") or ""
    except (OSError, ValueError, AttributeError):
        pass
    message = (
        f"SLURM job {job_id} ended {state} without a result: {why}"
        + (f" (the job said: {earlier})" if earlier else "")
        + f". Its log: {log_path}. Run the sweep again with the same overrides to continue it: resume=auto (the "
        "preset's) keeps the finished jobs and resumes this one from its checkpoint, if it wrote one."
    )
    if not (folder / "metrics.json").exists():
        overrides: list[str] = []
        try:
            import yaml

            overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
        except (OSError, ValueError, ImportError):
            pass
        folder.mkdir(parents=True, exist_ok=True)
        write_error(folder, message, list(overrides))
    return message


class JobLost(Exception):
    """A SLURM job that ended without a result; its message is lost_job's."""


# ------------------------------------------------------------------------------------------ in the job: requeue
def requeue(signum: int) -> str | None:
    """After the checkpoint of a run stopped by the preemption signal: submitit's own handler for it (installed
    when the job started) requeues the job and ends this process (SystemExit), or refuses to (a job that timed out
    more than hydra.launcher.max_num_timeout times): its refusal is returned. None for another signal."""
    from ..checkpoint.signals import preemption_signal  # here: checkpoint/ imports torch, and --help must not

    if signum != preemption_signal():
        return None
    handler = signal.getsignal(signum)
    if not callable(handler):
        return None
    try:
        handler(signum, None)
    except SystemExit:
        raise
    except Exception as refused:  # submitit's UncompletedJobError: "Job not requeued because: ..."
        return str(refused)
    return None


def not_requeued(refusal: str, interrupted: Exception) -> str:
    """The error.json message of a job whose requeue submitit refused."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    try:
        launcher = HydraConfig.get().launcher
        timeout, times = OmegaConf.select(launcher, "timeout_min"), OmegaConf.select(launcher, "max_num_timeout")
    except ValueError:
        timeout = times = None
    return (
        f"The job was stopped by SLURM's time limit once more than it may be requeued ({refusal.strip()}): "
        f"hydra.launcher.max_num_timeout={times} requeues of hydra.launcher.timeout_min={timeout} minutes were not "
        f"enough. {interrupted}. Give it more time (hydra.launcher.timeout_min) or more requeues "
        "(hydra.launcher.max_num_timeout), then run the sweep again with the same overrides: resume=auto continues "
        "it from that checkpoint."
    )
