"""How long dip-run and dip-gather take to answer when they run nothing: --help, --cfg job (with the GT-free rule
a given observation gets resolved: --resolve data.observed=...) and a TAB of tab completion.

Each command is started `--repeats` times as a user starts it (the venv's scripts, from a scratch directory) and the
median wall time is reported, with `import pytorch_lightning` alone for scale: what every one of them paid while the
dip sweeper plugin imported it (4.7 s for --help on a 2-core machine), dip-gather while its module imported the
plots and image files (5.5 s), and `--resolve data.observed=` while the rule was read from the task's class (6.3 s).

    python experiments/bench_cli.py [--repeats 3] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine, record  # noqa: E402

BIN = Path(sys.executable).parent
DIP_RUN = [str(BIN / "dip-run")] if (BIN / "dip-run").exists() else [sys.executable, "-m", "dip_lightning.train"]
GATHER = (
    [str(BIN / "dip-gather")]
    if (BIN / "dip-gather").exists()
    else [sys.executable, "-m", "dip_lightning.sweeps.gather"]
)
COMMANDS = {
    "dip-run --help": ([*DIP_RUN, "--help"], {}),
    "dip-run --cfg job": ([*DIP_RUN, "--cfg", "job"], {}),
    "dip-run --cfg job experiment=denoise_f16": ([*DIP_RUN, "--cfg", "job", "experiment=denoise_f16"], {}),
    # the GT-free rule resolved (gt_free_rule: discrepancy): the x.png need not exist, nothing is read
    "dip-run --cfg job --resolve data.observed=x.png": (
        [*DIP_RUN, "--cfg", "job", "--resolve", "data.observed=x.png"],
        {},
    ),
    "dip-gather --help": ([*GATHER, "--help"], {}),
    "TAB after `dip-run net=` (-sc query=bash)": (
        [*DIP_RUN, "-sc", "query=bash"],
        {"COMP_LINE": "dip-run net=", "COMP_POINT": "12"},
    ),
    "python -c 'import pytorch_lightning' (for scale)": ([sys.executable, "-c", "import pytorch_lightning"], {}),
}
# what rows took before their fixes
BEFORE = (
    "Before the dip sweeper stopped importing Lightning (commit 75b82a8), `dip-run --help` took 4.7 s on an Intel "
    "Xeon, 2 cores (one start). Before dip-gather imported its plots and image files only to gather a sweep, and the "
    "GT-free rule came from the task's config file instead of its class, `dip-gather --help` took 5.52 s and "
    "`dip-run --cfg job --resolve data.observed=x.png` 6.26 s on an AMD EPYC, 2 cores (medians of 5 starts, "
    "alternated with the fixed code's: 0.06 s and 0.46 s)."
)
LIMIT = 2.0  # seconds: what the issues ask of help, --cfg and completion on this machine (dip-run's and dip-gather's)


def timed(argv: list[str], env: dict, cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env={**os.environ, **env}, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print the table, do not write RESULTS.md")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for name, (argv, env) in COMMANDS.items():
            times = [timed(argv, env, cwd) for _ in range(args.repeats)]
            rows.append((name, statistics.median(times), min(times), max(times)))
            print(f"{name}: median {rows[-1][1]:.2f} s", flush=True)
    lines = [
        f"`python experiments/bench_cli.py` — {machine()}; median of {args.repeats} starts each, from a scratch "
        f"directory (the machine shared with other work). Target for dip-run's and dip-gather's rows: under "
        f"{LIMIT:.0f} s. {BEFORE}",
        "",
        "| command | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {med:.2f} | {lo:.2f} | {hi:.2f} |" for n, med, lo, hi in rows),
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record("bench_cli", text)
    slow = [n for n, med, _, _ in rows if n.startswith(("dip-run", "dip-gather", "TAB")) and med >= LIMIT]
    print(f"cli_slowest={max(med for n, med, _, _ in rows if not n.startswith('python')):.2f}")
    if slow:
        raise SystemExit(f"over {LIMIT} s: {', '.join(slow)}")


if __name__ == "__main__":
    main()
