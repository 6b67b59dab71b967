"""The GPU check's CPU mode (experiments/gpu_check.sh --tiny) and `make gpu-wheels`: run here so that the one
command prepared for a borrowed GPU machine cannot rot between GPU runs."""

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, import_experiment

SECTIONS = (
    "## 1. GPU tests",
    "## 2. Speed",
    "## 2b. Packed runs",
    "## 2c. Anatomy of an iteration",
    "## 3. The paper's tables",
    "## 4. torch.compile",
)


def gpu_check(args, timeout=1500):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_check_runs_every_step_in_cpu_mode(tmp_path):
    # the table's images two at a time (the joblib launcher, as on a GPU), each with two seeds
    table_options = ["--table-options", "launcher=joblib hydra.launcher.n_jobs=2", "--table-seeds", "0,1"]
    proc = gpu_check(["--tiny", "--budget", "1200", "--out", str(tmp_path), *table_options])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / "gpu_report.md").read_text()
    assert all(s in report for s in SECTIONS) and "TINY CPU MODE" in report and "skipped (--skip)" not in report
    assert "Failed" not in report and "failed" not in report.split("## 3.")[1], report
    speed = json.loads((tmp_path / "speed.json").read_text())
    assert speed["cells"] and all(c.get("seconds_per_step", 0) > 0 for c in speed["cells"]), speed["cells"]
    assert len(speed["numerics"]) == 2 and all(r["psnr_final"] > 0 for r in speed["numerics"])
    table = (tmp_path / "denoise9-full.md").read_text()  # tiny mode runs one table
    assert "| **mean** |" in table and "x 2 seeds (0, 1;" in table and "DIP, 2 runs averaged" in table
    assert "launcher=joblib" in table
    assert (tmp_path / "denoise9-full.png").stat().st_size > 0
    packing = json.loads((tmp_path / "packing.json").read_text())
    assert [c["k"] for c in packing["cells"]] == [1, 2] and all(c["ratio"] > 0 for c in packing["cells"])
    anatomy = json.loads((tmp_path / "anatomy.json").read_text())
    assert "| convolution | 52 |" in anatomy["markdown"] and anatomy["sizes"]["64"]["measured"]
    compiled = json.loads((tmp_path / "compile.json").read_text())
    assert any("compile=default" in c["name"] and c.get("seconds_per_step", 0) > 0 for c in compiled["cells"])


def test_a_budget_too_small_skips_steps_and_says_so(tmp_path):
    proc = gpu_check(["--tiny", "--budget", "1", "--out", str(tmp_path), "--skip", "tests"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "gpu_report.md").read_text()
    assert all(s in report for s in SECTIONS)
    assert "Skipped: 0 s left" in report or "Skipped: -" in report
    assert "## 4. torch.compile (`experiments/bench_gpu.py --compile`)\n\nSkipped" in report


def test_without_hydra_or_wheels_the_check_says_what_to_run(tmp_path):
    if (REPO / ".whl").is_dir():
        pytest.skip("this checkout has .whl/ (make gpu-wheels): the script would install from it")
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")  # a Python that cannot import hydra
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake)}
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "make gpu-wheels" in proc.stderr


def test_gpu_wheels_holds_what_hydra_needs_offline(tmp_path):
    whl, data = tmp_path / "whl", tmp_path / "data"
    env = {
        **os.environ,
        "WHL": str(whl),
        "GPU_DATA": str(data),
        "PYTHON": os.environ.get("PYTHON", "") or str(Path(os.sys.executable)),
    }
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_wheels.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = sorted(p.name.split("-")[0] for p in whl.glob("*.whl"))
    assert wheels == ["antlr4_python3_runtime", "hydra_core", "hydra_joblib_launcher", "omegaconf"]
    assert all(p.name.endswith("py3-none-any.whl") for p in whl.glob("*.whl"))  # pure Python: any GPU image
    assert sum(p.stat().st_size for p in whl.glob("*.whl")) < 20 * 2**20
    with zipfile.ZipFile(next(whl.glob("antlr4*.whl"))) as z:  # built here from the source archive
        assert any(n.startswith("antlr4/") for n in z.namelist())
    if (REPO.parent / "shared" / "data" / "denoise9").is_dir():
        assert len(list((data / "denoise9").glob("*_GT.png"))) == 9
        assert len(list((data / "set5" / "dip_gt_x4").glob("*_GT.png"))) == 5


@pytest.fixture
def gpu_check_module():
    return import_experiment("gpu_check")


def speed_cell(name, options, ms, wall):
    return {
        "size": 512,
        "loop": "dip",
        "name": name,
        "options": options,
        "seconds_per_step": ms / 1e3,
        "iterations": 150,
        "wall": wall,
    }


def test_a_compiled_variant_is_picked_only_where_its_iterations_repay_its_compilation(gpu_check_module):
    graph = ["precision=tf32", "channels_last=true", "cuda_graph=true"]
    speed = {
        "sizes": [256, 512],
        "cells": [
            speed_cell("dip-run, fp32", ["precision=fp32"], 22.0, 150 * 0.022 + 3),
            speed_cell("graph", graph, 13.0, 150 * 0.013 + 3),  # 3 s to start
            speed_cell("compiled graph", [*graph, "compile=default"], 8.0, 150 * 0.008 + 20),  # 20 s to compile
        ],
        "numerics": [
            {"name": "fp32", "psnr_final": 29.00, "options": ["precision=fp32"]},
            {"name": "tf32 + channels_last", "psnr_final": 29.05, "options": ["precision=tf32", "channels_last=true"]},
        ],
    }
    long = {"iterations": 1800, "area": 10.25, "sizes": 3}  # 18450 512 px iterations: 5 ms less each repay 20 s x 3
    short = {"iterations": 200, "area": 1.0, "sizes": 5}
    options, seconds, name = gpu_check_module.pick_options(speed, long)
    assert name == "compiled graph" and seconds == pytest.approx(0.008 * 1800 * 10.25 + 20 * 3)
    assert gpu_check_module.pick_options(speed, short)[2] == "graph"
    speed["numerics"][1]["psnr_final"] = 28.5  # tf32 moved the PSNR by 0.5 dB: only fp32 is left
    assert gpu_check_module.pick_options(speed, long)[2] == "dip-run, fp32"
    assert gpu_check_module.pick_options(None, short) == ([], 0.05 * 200, "none (no speed table)")


def test_exec_runs_a_project_script_with_the_checks_set_up(tmp_path):
    """`gpu_check.sh --exec SCRIPT ARGS`: what a second call on a lent GPU machine runs (e.g. one paper table)."""
    env = {**os.environ, "PYTHONPATH": ""}
    script = "import hydra, omegaconf, dip_lightning.errors as e, sys; print(e.__file__); sys.exit(3)"
    proc = subprocess.run(
        ["bash", str(REPO / "experiments" / "gpu_check.sh"), "--exec", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]  # the script's own exit status comes back
    assert proc.stdout.strip() == str(REPO / "src" / "dip_lightning" / "errors.py")
