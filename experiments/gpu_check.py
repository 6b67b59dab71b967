"""The GPU check: every GPU path run and measured by one command, within a time budget (`make gpu-check`).

    bash experiments/gpu_check.sh [--budget 480] [--out DIR] [--data DIR]      # on a GPU machine
    bash experiments/gpu_check.sh --tiny --budget 600 --out /tmp/check         # the CPU mode that CI runs

gpu_check.sh installs the carried wheels (.whl/, from `make gpu-wheels`) into a temporary folder when Hydra is not
importable and puts src/ on PYTHONPATH; then this script runs, in order, each step in its own process with its own
share of the budget, and appends to one markdown report (`gpu_report.md` in --out: $OUT when set, else
experiments/gpu_check/):

1. GPU tests: `pytest -m gpu` (tests/test_gpu.py).
2. Speed: experiments/bench_gpu.py at 256 and 512 px (precision, channels_last, cudnn.benchmark, cuda_graph;
   numerics); 2b. packed runs: experiments/bench_packing.py, K=1 and 8 skip128x5 runs at 256 px; 2c. where a
   512 px iteration's GPU time goes, per kind of operation, beside its roofline floor (experiments/step_anatomy.py).
3. The paper's tables in full protocol (experiments/paper/reproduce.py --mode full): denoise9, then sr_set5_x4,
   each with the options of step 2 whose PSNR stays within 0.1 dB of fp32 and whose estimated table time
   (compilation included) is the shortest, each only if that estimate fits what is left.
4. torch.compile cells (bench_gpu.py --compile) with the remaining time: compilation takes the longest and
   matters least to the other steps, so it comes last.

A step that would not fit the remaining budget is skipped and the report says so; a step that overruns its share
is stopped and reported as such. --tiny runs the same steps on the CPU at toy sizes (a 3-scale net, 64 px, stand-in
images made here), so that the script is tested in CI and cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _harness import TINY_NET  # this script's folder is on sys.path (run as a script, or by the tests)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Per-step caps in seconds (the budget may cut them shorter): the tests, the speed table, packed runs, anatomy.
TESTS_CAP, SPEED_CAP, PACKING_CAP, ANATOMY_CAP = 150, 150, 90, 60
# The paper tables: iterations of each (reproduce.py's full mode), their images' total pixels relative to one
# 512x512 image, and how many image sizes they have (a compiled net compiles once per size). denoise9: 4 of 512x512,
# hill 256x256, 4 Kodak of 768x512; set5 x4 HR crops: ~3 of 512x512 in all, five sizes.
PAPER = {
    "denoise9": {"iterations": 1800, "images": 9, "area": 10.25, "sizes": 3},
    "sr_set5_x4": {"iterations": 2000, "images": 5, "area": 3.0, "sizes": 5},
}
JOB_OVERHEAD = 4.0  # seconds per DIP job besides its iterations: Trainer set-up, reading, writing outputs


class Report:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def add(self, *lines: str) -> None:
        with open(self.path, "a") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)


def run_step(name: str, cmd: list[str], timeout: float, log: Path, env: dict) -> tuple[int | None, float, str]:
    """Run `cmd` in its own process group, output appended to `log`; (exit code or None if stopped, seconds,
    the last lines of its output)."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n===== {name}: {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.perf_counter() - start
    tail = log.read_text(errors="replace").split(f"===== {name}:")[-1].splitlines()[-25:]
    return rc, seconds, "\n".join(tail)


def machine_lines() -> list[str]:
    import torch

    lines = [f"- Date: {dt.datetime.now().isoformat(timespec='seconds')}"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            lines[-1] += f", driver {driver}"
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        lines.append(f"- No GPU: CPU mode, {os.cpu_count()} cores")
    versions = []
    for pkg in ("torch", "pytorch-lightning", "hydra-core", "omegaconf", "torchmetrics"):
        try:
            from importlib.metadata import version

            versions.append(f"{pkg} {version(pkg)}")
        except Exception:
            versions.append(f"{pkg} ?")
    lines.append(f"- Python {sys.version.split()[0]}; " + ", ".join(versions))
    lines.append(f"- Code: {code_version()}")
    return lines


def code_version() -> str:
    if os.environ.get("DIP_COMMIT"):  # given by the caller where the working tree travelled without .git
        return os.environ["DIP_COMMIT"]
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git; set DIP_COMMIT)"


def skipped(report: Report, step: str, skip: set[str], left: float, need: float) -> bool:
    """Whether a step is left out (--skip) or needs more than the `left` seconds; the report says which."""
    if step in skip:
        report.add("Skipped (--skip).", "")
    elif left < need:
        report.add(f"Skipped: {left:.0f} s left.", "")
    else:
        return False
    return True


def table_result(report: Report, rc: int | None, secs: float, tail: str, path: Path) -> None:
    """Report a step whose script writes {"markdown": ...} to `path`: its table (without the title), or the
    failure with the end of its output."""
    if rc == 0 and path.exists():
        report.add(f"{secs:.0f} s.", "", json.loads(path.read_text())["markdown"].split("\n", 2)[2], "")
    else:
        report.add(f"Failed ({'stopped at its cap' if rc is None else f'exit {rc}'}, {secs:.0f} s):")
        report.add("```", tail, "```", "")


def bench_result(report: Report, rc: int | None, secs: float, tail: str, path: Path) -> dict | None:
    """Report a bench_gpu.py run: its table, or the cells it finished before it failed or was stopped."""
    result = json.loads(path.read_text()) if path.exists() else None
    if rc == 0 and result and "markdown" in result:
        report.add(f"{secs:.0f} s.", "", result["markdown"].split("\n", 2)[2], "")
        return result
    report.add(
        f"{'Stopped at its time limit' if rc is None else f'Failed (exit {rc})'} after {secs:.0f} s; the "
        "cells it finished:"
        if result
        else f"Failed ({rc}) after {secs:.0f} s:",
        "",
    )
    if result:
        from bench_gpu import speed_table

        report.add(*speed_table(result["cells"], result["sizes"]), "")
    report.add("```", tail, "```", "")
    return result if result and result.get("numerics") is not None else None


# ------------------------------------------------------------------------------------ step 3: picking options
def numerics_ok(speed: dict, variant: dict, tolerance: float = 0.1) -> bool:
    """Whether a variant's precision (and layout) kept the 1800-iteration PSNR within `tolerance` dB of fp32,
    beyond the spread of two fp32 runs."""
    precision = next((o.split("=", 1)[1] for o in variant["options"] if o.startswith("precision=")), "fp32")
    rows = {r["name"]: r for r in speed.get("numerics", []) if "psnr_final" in r}
    if "fp32" not in rows:
        return precision == "fp32"
    floor = (
        abs(rows["fp32, second run"]["psnr_final"] - rows["fp32"]["psnr_final"]) if "fp32, second run" in rows else 0.0
    )
    # the row run with these very options (cuda_graph included) first, else the same precision, the same layout
    # first (a layout changes the summation order, not the math); plain fp32 needs no row
    row = next((r for r in rows.values() if sorted(r.get("options", [])) == sorted(variant["options"])), None)
    if row is None and precision == "fp32":
        return True
    names = [f"{precision} + channels_last", precision]
    if "channels_last=true" not in variant["options"]:
        names.reverse()
    row = row or next((rows[n] for n in names if n in rows), None)
    return row is not None and abs(row["psnr_final"] - rows["fp32"]["psnr_final"]) <= tolerance + floor


def start_up_seconds(cell: dict) -> float:
    """A speed cell's time beyond its iterations at the steady rate: building the run, cuDNN's autotuning, and
    compilation where the cell compiles (what each image size of a table pays again)."""
    return max(0.0, cell.get("wall", 0.0) - cell["iterations"] * cell["seconds_per_step"])


def table_seconds(cell: dict, spec: dict, size: int) -> float:
    """A paper table's estimated time with a cell's options, its images one after another."""
    per_it = cell["seconds_per_step"] * (512 / size) ** 2
    return per_it * spec["iterations"] * spec["area"] + start_up_seconds(cell) * spec["sizes"]


def pick_options(speed: dict | None, spec: dict) -> tuple[list[str], float, str]:
    """The dip-run variant at the largest size whose numerics pass and whose estimated time for the paper table
    `spec` is the shortest (so a compiled variant wins only where its iterations repay its compilation):
    (overrides, estimated seconds for the table, its name). Without a speed table: the defaults, estimated at
    50 ms per 512 px iteration."""
    default = ([], 0.05 * spec["iterations"] * spec["area"])
    if not speed:
        return *default, "none (no speed table)"
    size = max(speed["sizes"])
    cells = [c for c in speed["cells"] if c["size"] == size and c["loop"] == "dip" and "seconds_per_step" in c]
    good = [c for c in cells if numerics_ok(speed, c)]
    if not good:
        return *default, "none measured"
    best = min(good, key=lambda c: table_seconds(c, spec, size))
    return best["options"], table_seconds(best, spec, size), best["name"]


def tiny_data(root: Path) -> Path:
    """Stand-ins in the layout of ../shared/data for the CPU mode: 2 denoise9 pairs, 2 set5 x4 images, 64 px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "denoise9" / "noisy_sigma25").mkdir(parents=True, exist_ok=True)
    (root / "set5" / "dip_gt_x4").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:64]
    for i, stem in enumerate(("a", "b")):
        clean = np.stack([xx * 3 + i * 40, yy * 3, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
        noisy = (clean + rng.normal(0, 25, clean.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(clean).save(root / "denoise9" / f"{stem}_GT.png")
        Image.fromarray(noisy).save(root / "denoise9" / "noisy_sigma25" / f"{stem}_noisy.png")
        Image.fromarray(clean).save(root / "set5" / "dip_gt_x4" / f"{stem}_GT.png")
    return root


# ------------------------------------------------------------------------------------------------------- main
@dataclass
class Check:
    """What every step reads: the parsed arguments, where it writes, and the time left."""

    args: argparse.Namespace
    out: Path
    log: Path
    env: dict
    report: Report
    gpu: bool
    deadline: float
    speed: dict | None = None  # step 2's cells, which step 3 picks its options from
    options: list[str] = field(default_factory=list)  # the options of the last table step 3 ran (step 4 compiles them)

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, name: str, cmd: list[str], timeout: float) -> tuple[int | None, float, str]:
        return run_step(name, cmd, timeout, self.log, self.env)


def step_tests(c: Check) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider", "tests/test_gpu.py"]
    rc, secs, tail = c.run("tests", cmd, min(TESTS_CAP, c.left()))
    summary = next(
        (
            line
            for line in reversed(tail.splitlines())
            if " in " in line and ("passed" in line or "failed" in line or "skipped" in line or "error" in line)
        ),
        "",
    )
    state = "stopped at its time cap" if rc is None else ("all passed" if rc == 0 else f"exit {rc}")
    c.report.add(f"{state}, {secs:.0f} s: `{summary.strip('= ')}`", "", "```", tail, "```", "")


def step_speed(c: Check) -> None:
    args, speed_json = c.args, c.out / "speed.json"
    share = min(SPEED_CAP, c.left() * 0.45)
    cmd = [sys.executable, str(HERE / "bench_gpu.py"), "--no-record", "--json", str(speed_json)]
    cmd += ["--budget", f"{share:.0f}", "--device", c.device]
    cmd += ["--tiny", "--rounds", "1"] if args.tiny else []
    cmd += ["--variants", args.speed_variants] if args.speed_variants else []
    cmd += ["--sizes", args.speed_sizes] if args.speed_sizes else []
    cmd += ["--numerics", args.numerics] if args.numerics else []
    if args.reuse_speed:
        cmd += ["--cells-from", str(Path(args.reuse_speed).resolve())]
        c.report.add(f"Speed cells from the earlier run's `{args.reuse_speed}`; this run measured the numerics.")
    rc, secs, tail = c.run("speed", cmd, share + 60)
    c.speed = bench_result(c.report, rc, secs, tail, speed_json)


def step_packing(c: Check) -> None:
    packing_json = c.out / "packing.json"
    share = min(PACKING_CAP, c.left() * 0.3)
    cmd = [sys.executable, str(HERE / "bench_packing.py"), "--no-record", "--json", str(packing_json)]
    cmd += ["--budget", f"{share:.0f}", "--device", c.device]
    cmd += ["--tiny", "--ks", "1,2"] if c.args.tiny else ["--nets", "skip", "--sizes", "256", "--ks", "1,8"]
    rc, secs, tail = c.run("packing", cmd, share + 60)
    table_result(c.report, rc, secs, tail, packing_json)


def step_anatomy(c: Check) -> None:
    anatomy_json = c.out / "anatomy.json"
    cmd = [sys.executable, str(HERE / "step_anatomy.py"), "--no-record", "--json", str(anatomy_json)]
    cmd += ["--sizes", "64", "--profile", "cpu"] if c.args.tiny else ["--sizes", "512", "--profile", "cuda"]
    cmd += ["--precision", "tf32", "--channels-last"] if c.gpu else []
    rc, secs, tail = c.run("anatomy", cmd, min(ANATOMY_CAP, c.left() - 5))
    table_result(c.report, rc, secs, tail, anatomy_json)


def step_paper(c: Check) -> int | None:
    args, report = c.args, c.report
    data = Path(args.data) if args.data else REPO / ".gpu_data"
    if args.tiny:
        data = tiny_data(c.out / "tiny_data")
    elif not data.is_dir():
        data = REPO.parent / "shared" / "data"
    table_extra = shlex.split(args.table_options)
    report.add(
        "Options per table from step 2: of the variants whose PSNR after 1800 iterations stayed within 0.1 dB of "
        "fp32 (beyond the spread of two fp32 runs), the one with the shortest estimated table time (iterations "
        "at its rate, plus its start-up, compilation included, once per image size)."
        + (
            f" Extra overrides for every table's sweep (--table-options): `{args.table_options}`."
            if table_extra
            else ""
        ),
        "",
    )
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = sorted(set(tables) - set(PAPER))
    if unknown:
        report.add(f"error: --tables {unknown} not known; expected some of {list(PAPER)}.")
        return 2
    for table, spec in PAPER.items():
        if table not in tables:
            report.add(f"- {table}: not asked for (--tables).")
            continue
        if args.tiny and table != "denoise9":  # CI: one table runs the step's code; the others add only time
            continue
        if "paper" in c.args.skip.split(","):
            report.add(f"- {table}: skipped (--skip).")
            continue
        if not (data / ("denoise9" if table == "denoise9" else "set5")).is_dir():
            report.add(
                f"- {table}: skipped: no benchmark images under {data} (run `make gpu-wheels` and carry "
                ".gpu_data, or pass --data)."
            )
            continue
        options, seconds, picked = pick_options(c.speed, spec)
        c.options = options
        report.add(f"- {table}: options `{' '.join(options) or 'the defaults (fp32)'}` ({picked}).")
        iterations = 5 if args.tiny else spec["iterations"]
        runs = len(args.table_seeds.split(","))
        estimate = (seconds + JOB_OVERHEAD * spec["images"]) * runs + 15
        if not args.tiny and estimate > c.left() - 10:
            report.add(
                f"- {table}: skipped: estimated {estimate:.0f} s ({spec['images']} images x {runs} seed(s) x "
                f"{iterations} iterations, one after another), {c.left():.0f} s left."
            )
            continue
        cmd = [sys.executable, str(HERE / "paper" / "reproduce.py"), "--table", table, "--mode", "full"]
        cmd += ["--data", str(data), "--out", str(c.out), "--no-baselines", "--iterations", str(iterations)]
        cmd += ["--device", "gpu" if c.gpu else "cpu", "--seeds", args.table_seeds]
        cmd += ["--runs-dir", str(c.out / "runs")]  # the sweep (each job's metrics, curves, images) comes back
        cmd += [*options, *table_extra, *(TINY_NET if args.tiny else [])]
        rc, secs, tail = c.run(table, cmd, c.left() - 5)
        md = c.out / f"{table}-full.md"
        if rc == 0 and md.exists():
            text = md.read_text()
            mean_line = next((line for line in text.splitlines() if line.startswith("| **mean**")), "")
            gap = next((line for line in text.splitlines() if line.startswith("- Mean gap")), "")
            report.add(
                f"- {table}: {secs:.0f} s for {spec['images'] if not args.tiny else 2} images x {iterations} "
                f"iterations (estimate {estimate:.0f} s); table in `{md.name}`.",
                f"  {mean_line}",
                f"  {gap}",
            )
        else:
            report.add(
                f"- {table}: failed ({'stopped: out of budget' if rc is None else f'exit {rc}'}, {secs:.0f} s):",
                "```",
                tail,
                "```",
            )
    report.add("")
    return None


def step_compile(c: Check) -> None:
    compile_json = c.out / "compile.json"
    cmd = [sys.executable, str(HERE / "bench_gpu.py"), "--compile", "--options", shlex.join(c.options)]
    cmd += ["--no-record", "--json", str(compile_json), "--budget", f"{max(c.left() - 75, 10):.0f}"]
    cmd += ["--device", c.device, "--sizes", "64" if c.args.tiny else "256,512"]
    cmd += ["--tiny", "--rounds", "1"] if c.args.tiny else ["--rounds", "1"]
    rc, secs, tail = c.run("compile", cmd, c.left() - 3)
    bench_result(c.report, rc, secs, tail, compile_json)


# The steps in order: (--skip name, heading, seconds it needs to start (tiny mode, GPU), what it does). The paper
# step decides per table (its estimate); compiling skip128x5 takes about a minute on a GPU.
STEPS = (
    ("tests", "## 1. GPU tests (`pytest -m gpu`)", (0, 0), step_tests),
    ("speed", "## 2. Speed (`experiments/bench_gpu.py`)", (30, 30), step_speed),
    ("packing", "## 2b. Packed runs (`experiments/bench_packing.py`)", (60, 60), step_packing),
    ("anatomy", "## 2c. Anatomy of an iteration (`experiments/step_anatomy.py`)", (40, 40), step_anatomy),
    (
        "paper",
        "## 3. The paper's tables, full protocol (`experiments/paper/reproduce.py --mode full`)",
        None,
        step_paper,
    ),
    ("compile", "## 4. torch.compile (`experiments/bench_gpu.py --compile`)", (20, 90), step_compile),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps (default 8 minutes)")
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(HERE / "gpu_check"),
        help="report folder (default $OUT, else experiments/gpu_check/)",
    )
    parser.add_argument(
        "--data", default=None, help="benchmark images (default .gpu_data/ from make gpu-wheels, else ../shared/data)"
    )
    parser.add_argument("--tiny", action="store_true", help="CPU mode at toy sizes (what CI runs)")
    parser.add_argument(
        "--skip", default="", help="comma-separated steps to leave out: tests,speed,packing,anatomy,paper,compile"
    )
    parser.add_argument(
        "--speed-variants", default=None, help="bench_gpu.py --variants: only the speed cells named so (and references)"
    )
    parser.add_argument("--numerics", default=None, help="bench_gpu.py --numerics: only these numerics runs")
    parser.add_argument(
        "--tables", default=",".join(PAPER), help=f"comma-separated paper tables of step 3 (default {','.join(PAPER)})"
    )
    parser.add_argument(
        "--speed-sizes", default=None, help="bench_gpu.py --sizes: the image sizes of the speed cells (default 256,512)"
    )
    parser.add_argument(
        "--table-options",
        default="",
        help="extra dip-run overrides for step 3's sweeps, e.g. 'launcher=joblib_gpus gpu_lease.jobs_per_gpu=3 "
        "hydra.launcher.n_jobs=3' (three images at a time on the GPU)",
    )
    parser.add_argument(
        "--table-seeds",
        default="0",
        help="reproduce.py --seeds for step 3: '0,1' adds the paper's 'averaged over 2 runs' (twice the time)",
    )
    parser.add_argument(
        "--reuse-speed",
        default=None,
        help="the speed cells of an earlier run's speed.json: step 2 then runs only the numerics",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    report = Report(out / "gpu_report.md")
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="1")
    skip = set(filter(None, args.skip.split(",")))

    import torch

    gpu = torch.cuda.is_available() and not args.tiny
    report.add(
        "# GPU check report",
        "",
        *machine_lines(),
        f"- Command: `bash experiments/gpu_check.sh {shlex.join(argv if argv is not None else sys.argv[1:])}`"
        f"; budget {args.budget:.0f} s"
        + ("; TINY CPU MODE (toy sizes: checks the script, measures nothing)" if args.tiny else ""),
        "",
    )
    if not gpu and not args.tiny:
        report.add(
            "**torch sees no GPU**: the GPU tests skip and the speed table runs on the CPU only with --tiny. "
            "Run this on a CUDA machine, or add --tiny for the CPU smoke mode.",
            "",
        )
        return 2

    check = Check(args, out, log, env, report, gpu, deadline)
    for name, heading, need, step in STEPS:
        report.add(heading, "")
        if need is not None and skipped(report, name, skip, check.left(), need[0 if args.tiny else 1]):
            continue
        code = step(check)
        if code is not None:
            return code
    report.add(f"Total: {time.perf_counter() - start:.0f} s of the {args.budget:.0f} s budget.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
