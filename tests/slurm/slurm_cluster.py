"""A single-node SLURM on this machine, for the cluster tests (tests/test_slurm.py).

Debian's `slurm-wlm` and `munge` packages (`apt-get install -y slurm-wlm munge` as root; .ci/run installs them), run
as root from a temporary folder: a munged of its own (its key, socket and log there), then slurmctld and slurmd in
the foreground with a generated slurm.conf that names this host (`hostname -s`): select/cons_tres (CPUs and memory
are consumed as on a real cluster), proctrack/linuxproc and task/none (no cgroups needed), one partition `cpu` with
this machine's CPUs and memory, free ports of their own, and their state, spool and log folders in the temporary
folder. The commands (sbatch, squeue, scontrol, scancel) find it through SLURM_CONF, which `env` holds and which
the jobs inherit. Several clusters can run side by side (one per pytest-xdist worker): nothing is shared.

No accounting daemon runs (slurmdbd needs a database): `sacct` says "accounting storage is disabled", as on a
cluster without accounting; squeue knows a job for MinJobAge after its end, and every finished job's start, end
and state are written to the job completion log (`finished_jobs`), which is the scheduler's own record.

A requeued job waits cred_expire seconds before it starts again (120 by default; 30 here).
The daemons are stopped by their PIDs at the end (and get SIGTERM should the test process die first).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
INSTALL = "apt-get install -y slurm-wlm munge (as root; .ci/run does)"
REQUEUE_DELAY = 30  # AuthInfo cred_expire: how long a requeued job waits before it starts again
KILL_WAIT = 30  # seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or out of time


class Unavailable(Exception):
    """SLURM cannot run here (not installed, or not root): the tests skip with this reason."""


def missing_programs() -> list[str]:
    return [name for name in (*DAEMONS, *COMMANDS) if shutil.which(name, path=SEARCH) is None]


def short_hostname() -> str:
    try:
        name = subprocess.run(["hostname", "-s"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or socket.gethostname().split(".")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 2048


def _die_with_parent() -> None:  # in the daemon, before exec: SIGTERM when the test process dies
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.5):
    """`condition()`'s first true value, polled until `timeout` seconds have passed; else AssertionError naming
    `what`. Deadlines are generous: they only bound a test that would otherwise hang, they are not measurements."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = short_hostname()
        self.partition = "cpu"
        self.cpus = os.cpu_count() or 1
        self.memory_mb = memory_mb()
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SEARCH}
        self.procs: dict[str, subprocess.Popen] = {}
        self.socket_dir: Path | None = None

    # ------------------------------------------------------------------------------------------------ start, stop
    def start(self, timeout: float = 120) -> "SlurmCluster":
        missing = missing_programs()
        if missing:
            raise Unavailable(f"SLURM is not installed here ({', '.join(missing)} missing): {INSTALL}")
        if os.geteuid() != 0:
            raise Unavailable("the single-node SLURM runs its daemons as root, and this test process is not root")
        for name in ("munge", "state", "spool", "log"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        # munged's socket: in a folder of its own under /tmp, which every folder above lets others enter (munged
        # refuses pytest's 0700 temporary folders), with a short path (a socket's path holds at most 107 bytes)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="dip-munge-"))
        self.socket_dir.chmod(0o755)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self.socket = self.socket_dir / "munge.socket"
        munge = self.root / "munge"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        wait_for(lambda: self.socket.exists() or self._died("munged"), timeout, "munged's socket")
        self._check_alive("munged")
        self.conf.write_text(self.slurm_conf(free_port(), free_port()))
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        wait_for(lambda: self._controller_up() or self._died("slurmctld"), timeout, "slurmctld to answer")
        self._check_alive("slurmctld")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        wait_for(lambda: self.node_state() == "idle" or self._died("slurmd"), timeout, "the node to be idle")
        self._check_alive("slurmd")
        return self

    def slurm_conf(self, ctld_port: int, slurmd_port: int) -> str:
        r = self.root
        return f"""\
ClusterName=dip{os.getpid()}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire={REQUEUE_DELAY}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r / "log" / "jobcomp.txt"}
MpiDefault=none
ReturnToService=2
KillWait={KILL_WAIT}
MinJobAge=3600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, args: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")
        args = [shutil.which(args[0], path=SEARCH), *args[1:]]
        try:
            self.procs[name] = subprocess.Popen(
                args, env=self.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        finally:
            out.close()

    def _died(self, name: str) -> bool:
        return self.procs[name].poll() is not None

    def _check_alive(self, name: str) -> None:
        if self._died(name):
            raise RuntimeError(f"{name} exited with status {self.procs[name].returncode}:\n{self.logs()}")

    def logs(self, lines: int = 40) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")) + sorted((self.root / "munge").glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what still runs, then end the daemons by their PIDs (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.procs and not self._died("slurmctld"):
            self.command("scancel", "--full", "--user", str(os.getuid()), check=False)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not self.queue(), KILL_WAIT + 30, "the jobs to end")
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -------------------------------------------------------------------------------------------------- queries
    def command(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _controller_up(self) -> bool:
        proc = self.command("scontrol", "ping", check=False)
        return proc.returncode == 0 and "UP" in proc.stdout

    def node_state(self) -> str:
        proc = self.command("sinfo", "-h", "-N", "-o", "%T", check=False)
        return proc.stdout.strip().rstrip("*") if proc.returncode == 0 else ""

    def queue(self, states: str = "PENDING,RUNNING,COMPLETING,REQUEUED,SUSPENDED") -> dict[str, str]:
        """{job id: state} of the jobs in those states (array tasks one by one: 12_0, 12_1)."""
        proc = self.command("squeue", "-h", "-r", f"--states={states}", "-o", "%i|%T", check=False)
        return dict(line.split("|", 1) for line in proc.stdout.split() if "|" in line)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields of one job (JobState, Restarts, ArrayTaskThrottle, ...)."""
        out = self.command("scontrol", "-o", "show", "job", job_id).stdout
        fields = {}
        for token in out.split():
            key, eq, value = token.partition("=")
            if eq and key not in fields:
                fields[key] = value
        return fields

    def finished_jobs(self) -> list[dict[str, str]]:
        """The job completion log: one record per job end (a requeued job's first run too), with JobId, JobState,
        StartTime, EndTime, Name."""
        path = self.root / "log" / "jobcomp.txt"
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            fields = {}
            for token in line.split():
                key, eq, value = token.partition("=")
                if eq:
                    fields[key] = value
            records.append(fields)
        return records


@contextlib.contextmanager
def single_node_slurm(root: Path) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(root)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
