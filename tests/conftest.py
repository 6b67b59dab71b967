"""Shared helpers: compose dip-run's config with Hydra's compose API, tiny settings that run in seconds on a CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

import dip_lightning.train  # noqa: F401  (registers the config's resolvers, as dip-run does)
from dip_lightning.config.compose import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
# tests/physics runs task=physics on deepinv, an optional extra: make test runs it in its own .venv-physics (torch
# 2.14.1 + torchvision 0.29.1); an environment without deepinv leaves it out, and says so in the header
HAS_DEEPINV = importlib.util.find_spec("deepinv") is not None
collect_ignore = [] if HAS_DEEPINV else ["physics"]
# tests/slurm starts a single-node SLURM and mostly waits for its scheduler: make test runs it in a process of its
# own beside this suite (DIP_SLURM_TESTS=1, make test-slurm), so that it does not hold one of the suite's workers
SLURM_TESTS = os.environ.get("DIP_SLURM_TESTS") == "1"
if not SLURM_TESTS:
    collect_ignore.append("slurm")


def pytest_report_header(config):
    lines = []
    if not HAS_DEEPINV:
        lines.append("tests/physics: not collected here (no deepinv); make test runs them in .venv-physics")
    if not SLURM_TESTS:
        lines.append("tests/slurm: not collected here; make test runs them in their own process (make test-slurm)")
    return lines


# cuBLAS reads this once, at its start: deterministic matrix products for the GPU resume test (no effect on a CPU)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# A 3-scale, 16-channel skip net: the smallest net that still restores well (tests only).
TINY_NET = [
    "net.num_channels_down=[16,16,16]",
    "net.num_channels_up=[16,16,16]",
    "net.num_channels_skip=[4,4,4]",
]
# ensemble=1 and gt_free_regularizer=null: one plain run, also without ground truth, where the defaults would train
# the task's GT-free seeds of its GT-free variant (the tests of those leave them out)
TINY = TINY_NET + ["data.crop=64", "logger=none", "callbacks=none", "chunk=50", "ensemble=1"]
TINY += ["gt_free_regularizer=null"]


@pytest.fixture(autouse=True, scope="session")
def one_cpu_thread():
    """One torch/OpenMP thread for the whole suite (subprocesses inherit OMP_NUM_THREADS).

    Tests check behaviour, not speed. On a CPU shared with other jobs, OpenMP's spinning threads thrash: one
    net-fitting test took 72.8 s with 2 threads and 8.9 s with 1 while other processes ran; alone on 2 cores,
    the tiny nets of the tests gain little from a second thread.
    """
    threads = torch.get_num_threads()
    env = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    os.environ.pop("OMP_NUM_THREADS", None) if env is None else os.environ.update(OMP_NUM_THREADS=env)


def import_experiment(name: str):
    """A module of experiments/ (scripts, not an installed package): imported with that folder on sys.path."""
    import importlib

    sys.path.insert(0, str(REPO / "experiments"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "experiments"))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture
def run_dip(tmp_path):
    """Run one DIP restoration in-process; returns (metrics, run_dir)."""
    from dip_lightning.run.job import run

    calls = []

    def _run(overrides: list[str], run_dir: Path | None = None):
        cfg = compose_cfg(overrides)
        calls.append(None)  # a folder holds one run: each call gets its own (run, run2, ...)
        out = run_dir or tmp_path / ("run" if len(calls) == 1 else f"run{len(calls)}")
        return run(cfg, out), out

    return _run


def dip_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m dip_lightning.train` as a user would, in its own process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "dip_lightning.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dip_process(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m dip_lightning.train` started as a user would, to signal or read while it runs (text pipes)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dip_lightning.train", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def photo_png(tmp_path) -> Path:
    """A real photo (scikit-image's astronaut, 96x96 crop) as a PNG file."""
    import skimage.data

    return save_png(tmp_path / "photo.png", skimage.data.astronaut()[200:296, 200:296])


def wandb_runs(run_dir: Path) -> list[dict]:
    """Every offline W&B run under `run_dir`/wandb, read back from its transaction log (what `wandb sync`
    uploads): its id, name, group, job_type, tags, config, final summary and history rows. W&B's service writes the
    log on its own time; it is stopped first, as the run's process exit would."""
    import json
    import struct

    import wandb
    from wandb.proto import wandb_internal_pb2 as pb

    wandb.teardown()
    runs = []
    for path in sorted(Path(run_dir, "wandb").glob("offline-run-*/run-*.wandb")):
        data, records, pending, pos, block = path.read_bytes(), [], b"", 7, 32768  # LevelDB log blocks
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a record header is padding
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind == 0 and length == 0:
                break
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):  # full, or the last part of a split record
                record = pb.Record()
                record.ParseFromString(pending)
                records.append(record)
        items = lambda entries: {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}  # noqa: E731
        run = {"config": {}, "summary": {}, "history": []}
        for r in records:
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group, job_type=r.run.job_type)
                run["tags"] = list(r.run.tags)
            elif kind == "config":
                run["config"].update(items(r.config.update))
            elif kind == "summary":
                run["summary"].update(items(r.summary.update))
            elif kind == "history":
                run["history"].append(items(r.history.item))
        runs.append(run)
    return runs
