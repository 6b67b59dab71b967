"""Collect a table's DIP sweep: run it (`dip-run -m`, one job per image) or take a finished one, gather it with
`dip-gather`, and read each job through dip-gather's readers: its metrics.json, curves.csv and composed config.

A sweep that lacks what the current code writes (command.json beside it; curves.csv, restored.png and
observed.png in a finished job) is refused with the sweep folder named: rerun it rather than score half of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _harness import compose  # experiments/ is on sys.path: reproduce.py puts it there

from dip_lightning.errors import DIPError
from dip_lightning.history import read_curves
from dip_lightning.sweeps import gather

from .tables import Table

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNS_DIR = HERE / "runs"
# Measured here (experiments/bench_speed.py): glibc returns DIP's big activations to the kernel every step unless
# told not to; this keeps them, faster at no change in results.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
JOB_METRICS = ("psnr_final", "psnr_best", "best_step", "iterations", "seconds", "device")  # what the table shows
JOB_FILES = ("curves.csv", "restored.png", "observed.png")  # what it reads beside metrics.json
COMMAND_KEYS = ("command", "wall_seconds", "rc", "code")  # command.json, written by run_sweep


@dataclass
class Protocol:
    """What the jobs' composed config says about their inputs: the baselines are given the same."""

    crop: int | list[int] | None  # data.crop
    size_multiple: int  # the net's: H and W are cropped to multiples of it (2^scales)
    min_size: int | None  # the net's smallest output
    shave: int | None  # task.shave (SR: border pixels left out of every PSNR)


@dataclass
class Job:
    stem: str
    dir: Path
    seed: int = 0
    metrics: dict | None = None  # a finished job's metrics.json
    curves: dict[str, list[float]] | None = None  # and its curves.csv
    error: str | None = None  # why it did not finish (dip-gather's words)


@dataclass
class Sweep:
    dir: Path
    command: list[str]
    wall_seconds: float | None
    code: str  # the code commit the sweep ran at
    gather_note: str
    protocol: Protocol
    jobs: dict[str, list[Job]] = field(default_factory=dict)  # by image stem: one job per seed, in seed order


def stale(sweep_dir: Path, table: Table, what: str) -> DIPError:
    return DIPError(
        f"sweep {str(sweep_dir)!r}: {what}, which the current code writes: the sweep was made by older code or "
        f"did not finish. Rerun it (make reproduce TABLE={table.name} MODE=...) rather than --sweep-dir on it."
    )


# ------------------------------------------------------------------------------------------------------- run it
def dip_command(
    table: Table,
    mode: str,
    data: Path,
    stems: list[str],
    sweep_dir: Path,
    iterations: int,
    device: str,
    extra: list[str],
    seeds: list[int] = (0,),
) -> list[str]:
    """The `dip-run -m` command line: one job per image and seed, swept natively by Hydra over `+stem`."""
    overrides = table.overrides(mode)
    overrides += [
        f"iterations={iterations}",
        f"data.root={data}",
        "logger=none",
        "callbacks=none",
        "seed=" + ",".join(str(s) for s in seeds),
        f"trainer.accelerator={device}",
    ]
    if table.observed:
        # pairs (ground truth, the paper's corrupted input): sweep the image name and build both paths from it
        # (a folder/glob sweep of data.image cannot pair each image with its own input)
        overrides += [
            f"+stem={','.join(stems)}",
            f"data.image={table.folder}/{table.gt.format(stem='${stem}')}",
            f"data.observed={table.folder}/{table.observed.format(stem='${stem}')}",
        ]
    elif stems == table.stems(data):  # every image of the folder: the sweeper's glob form
        overrides.append(f"data.image={data / table.folder / table.gt.format(stem='*')}")
    else:
        overrides.append("data.image=" + ",".join(str(data / table.folder / table.gt.format(stem=s)) for s in stems))
    if table.kind == "inpaint":  # the paper's inputs mark missing pixels with 0: mask = input != 0
        overrides.append(f"data.mask={sweep_dir / 'masks'}/${{stem}}_mask.png")
    if mode == "full" and device == "gpu" and not any(o.split("=")[0].lstrip("+~") == "launcher" for o in extra):
        # one job leaves most of a big GPU idle: the images of one size train as packs, as many as its memory holds
        overrides += ["launcher=packed", "hydra.launcher.pack=auto"]
    overrides += extra
    overrides += [f"hydra.sweep.dir={sweep_dir}"]
    # `python -m` rather than the dip-run script: also works where the package is on PYTHONPATH, not installed
    return [sys.executable, "-m", "dip_lightning.train", "-m", *overrides]


def write_masks(table: Table, data: Path, stems: list[str], out: Path) -> None:
    """Mask files derived from the paper's inputs (known = input != 0), beside the sweep (not in the repo)."""
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        arr = np.asarray(Image.open(data / table.folder / table.observed.format(stem=stem)).convert("L"))
        Image.fromarray(((arr != 0) * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")


def code_version() -> str:
    """The commit of the code that runs (and whether the working tree had uncommitted changes)."""
    if os.environ.get("DIP_COMMIT"):  # given by the caller where the working tree travelled without its history
        return f"`{os.environ['DIP_COMMIT']}`"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src", "conf"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"`{sha}`" + (" (with uncommitted changes in src/ or conf/)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_sweep(
    table: Table,
    mode: str,
    data: Path,
    stems: list[str],
    iterations: int,
    device: str,
    extra: list[str],
    seeds: list[int] = (0,),
    runs_dir: Path = RUNS_DIR,
) -> Path:
    """Run the table's sweep under `runs_dir` (experiments/paper/runs/); its command, wall time and code go to
    command.json."""
    sweep_dir = Path(runs_dir) / f"{table.name}-{mode}" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if table.kind == "inpaint":
        write_masks(table, data, stems, sweep_dir / "masks")
    cmd = dip_command(table, mode, data, stems, sweep_dir, iterations, device, extra, seeds)
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES, HYDRA_FULL_ERROR="1")
    print("+", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    with open(sweep_dir / "log.txt", "a") as log:
        log.write("+ " + shlex.join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    info = {"command": cmd, "wall_seconds": wall, "rc": rc, "code": code_version()}
    (sweep_dir / "command.json").write_text(json.dumps(info))
    if rc != 0:
        print(f"warning: dip-run -m exited with {rc}; see {sweep_dir / 'log.txt'}", file=sys.stderr)
    return sweep_dir


# ------------------------------------------------------------------------------------------------------ read it
def job_stem(table: Table, overrides: dict[str, str]) -> str:
    """The image a job ran on: its +stem override, or the stem of its data.image file (dip-gather's pairs)."""
    if "stem" in overrides:
        return overrides["stem"]
    return table.stem_of(Path(overrides["data.image"].strip("'\"")).name)


def read_protocol(job: Path) -> Protocol:
    """Crop, size multiple and shave from the job's composed config (.hydra/config.yaml), the net built from it."""
    from omegaconf import OmegaConf

    return protocol_of(OmegaConf.load(job / ".hydra" / "config.yaml"))


def mode_protocol(table: Table, mode: str, extra: list[str] = ()) -> Protocol:
    """The protocol a sweep of this table and mode would run, composed from conf/ without running it: what the
    baselines alone are given (reproduce.py --baselines-only)."""
    return protocol_of(compose([*table.overrides(mode), *extra]))


def protocol_of(cfg) -> Protocol:
    """Crop, size multiple and shave of a composed config, the net built from it."""
    from omegaconf import OmegaConf

    from dip_lightning.config.compose import build

    follow = cfg.net.get("output_channels", 0) is None  # as dip-run: null follows the image; any count will do here
    net = build(cfg.net, **({"output_channels": 3} if follow else {}))
    crop = cfg.data.crop
    return Protocol(
        crop=OmegaConf.to_container(crop) if OmegaConf.is_list(crop) else crop,
        size_multiple=net.size_multiple,
        min_size=getattr(net, "min_size", None),
        shave=cfg.task.get("shave"),
    )


def read_job(table: Table, sweep_dir: Path, row: dict) -> Job:
    """One job from its dip-gather row; a finished job's metrics.json and curves.csv, which must be complete."""
    job = sweep_dir / row["job"]
    overrides = gather.read_overrides(job)
    if overrides is None:
        raise stale(sweep_dir, table, f"job {row['job']} has no readable .hydra/overrides.yaml")
    out = Job(job_stem(table, overrides), job, int(overrides.get("seed", 0)))
    if row["status"] != "ok":
        out.error = row["error"]
        return out
    out.metrics = gather.read_json(job / "metrics.json")
    missing = [k for k in JOB_METRICS if k not in out.metrics] + [f for f in JOB_FILES if not (job / f).is_file()]
    if missing:
        raise stale(sweep_dir, table, f"job {row['job']} finished without {', '.join(missing)}")
    out.curves = read_curves(job / "curves.csv")
    return out


def read_sweep(table: Table, sweep_dir: Path) -> Sweep:
    """Gather a finished sweep (dip-gather's results.* in it) and read every job of it."""
    info = gather.read_json(sweep_dir / "command.json")
    if info is None or any(k not in info for k in COMMAND_KEYS):
        raise stale(sweep_dir, table, f"no command.json with {', '.join(COMMAND_KEYS)} (reproduce.py writes it)")
    try:
        rows, _ = gather.gather(sweep_dir)
    except DIPError as err:
        raise DIPError(f"{err} The sweep's log: {sweep_dir / 'log.txt'}.") from None
    made = [p.name for p in sorted(sweep_dir.glob("results.*"))]
    jobs = [read_job(table, sweep_dir, row) for row in rows]
    config = jobs[0].dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise stale(sweep_dir, table, f"job {jobs[0].dir.name} has no .hydra/config.yaml")
    return Sweep(
        dir=sweep_dir,
        command=info["command"],
        wall_seconds=info["wall_seconds"],
        code=info["code"],
        gather_note=f"`dip-gather` wrote {', '.join(made)} in the sweep folder.",
        protocol=read_protocol(jobs[0].dir),
        jobs=by_stem(jobs),
    )


def by_stem(jobs: list[Job]) -> dict[str, list[Job]]:
    """The jobs of each image, in seed order."""
    out: dict[str, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.seed):
        out.setdefault(job.stem, []).append(job)
    return out
