"""The regularised DIP variants against plain DIP at the same iterations: denoise9 quick and one physics preset.

    .venv-physics/bin/python experiments/bench_regularizers.py [--images F16,baboon,hill,kodim01] [--workers 2]
        [--iterations 2000] [--no-physics] [--only self_guided --set regularizer.weight=0.1 --no-record]

Each variant (regularizer=none, tv, self_guided, aseqdip, at their conf/regularizer defaults) runs on denoise9's
quick protocol (experiments/paper/tables.py: sigma=25, 128 px centre crop, net=skip_small, jitter 1/30, averaging
0.99, lr 0.01; backtracking on, except for self_guided and aseqdip, which refuse it as they change z) and on
experiment=physics_ct (sparse-view CT, 128 px), one torch thread per run, seed 0. Prints a table (per image, and the
mean over the images) and records it in experiments/RESULTS.md (section bench_regularizers) with the machine. The
physics rows need deepinv (the .venv-physics that make test builds); --no-physics leaves them out. --only and --set
try other settings of one variant (a tuning run: recorded nowhere unless asked, so the recorded table stays the
defaults').
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import run_config  # noqa: E402
from _record import machine, record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "tv", "self_guided", "aseqdip")
CT = "physics_ct (30 angles, 128 px)"
DENOISE = [
    "task=denoising",
    "task.sigma=25",
    "task.reg_noise_std=0.0333",
    "task.exp_weight=0.99",
    "optimizer.lr=0.01",
    "net=skip_small",
    "data.crop=128",
]


def variant_overrides(variant: str, channels: int, backtracking: bool) -> list[str]:
    out = [f"regularizer={variant}"]
    if variant in ("self_guided", "aseqdip"):
        out += [f"net.input_depth={channels}", "task.backtracking=false"]
    elif backtracking:
        out += ["task.backtracking=true"]
    return out


def one_run(job: tuple[str, str, list[str]]) -> tuple[str, str, dict]:
    """One run in a worker process (one torch thread): its case, variant and metrics (seconds: the whole run)."""
    import torch

    torch.set_num_threads(1)
    case, variant, overrides = job
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        m = run_config([*overrides, "logger=none", "callbacks=none", "cpu_threads=1"], Path(tmp) / "run")
        m["seconds"] = time.perf_counter() - start
    return case, variant, m


def jobs(args) -> list[tuple[str, str, list[str]]]:
    variants = [v for v in VARIANTS if not args.only or v in args.only.split(",")]
    out = []
    folder = Path(args.data) / "denoise9"
    for stem in filter(None, args.images.split(",")):
        data = [
            f"data.image={folder / f'{stem}_GT.png'}",
            f"data.observed={folder / 'noisy_sigma25' / f'{stem}_noisy.png'}",
        ]
        for v in variants:
            extra = args.set if v != "none" else []
            overrides = [*DENOISE, *data, *variant_overrides(v, 3, True), f"iterations={args.iterations}", *extra]
            out.append((f"denoise9 quick, {stem}", v, overrides))
    if not args.no_physics:
        for v in variants:
            extra = args.set if v != "none" else []
            overrides = ["experiment=physics_ct", *variant_overrides(v, 1, False), f"iterations={args.iterations}"]
            out.append((CT, v, [*overrides, *extra]))
    return out


def vs(m: dict, plain: float | None) -> str:
    return "" if plain is None else f"{m['psnr_final'] - plain:+.2f}"


def table(rows: list[tuple[str, str, dict]], args) -> str:
    plain = {case: m["psnr_final"] for case, v, m in rows if v == "none"}
    lines = [
        "| case | regularizer | PSNR result (dB) | PSNR best (dB) | vs plain DIP (result) | baseline (dB) | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, v, m in rows:
        base = m.get("psnr_baseline")
        lines.append(
            f"| {case} | {v} | {m['psnr_final']:.2f} | {m['psnr_best']:.2f} | {vs(m, plain.get(case))} | "
            f"{'' if base is None else f'{base:.2f}'} | {m['seconds']:.0f} |"
        )
    denoise = [(c, v, m) for c, v, m in rows if c.startswith("denoise9")]
    stems = {c for c, _, _ in denoise}
    if len(stems) > 1:
        for v in dict.fromkeys(v for _, v, _ in denoise):
            mine = [(c, m) for c, w, m in denoise if w == v]
            final = statistics.mean(m["psnr_final"] for _, m in mine)
            best = statistics.mean(m["psnr_best"] for _, m in mine)
            if not all(c in plain for c, _ in mine):
                continue  # a tuning run without plain DIP: the per-image rows say it all
            gain = statistics.mean(m["psnr_final"] - plain[c] for c, m in mine)
            wins = sum(m["psnr_final"] > plain[c] for c, m in mine)
            seconds = statistics.mean(m["seconds"] for _, m in mine)
            lines.append(
                f"| **denoise9 quick, mean of {len(mine)}** | {v} | {final:.2f} | {best:.2f} | {gain:+.2f}"
                f"{f' (ahead on {wins}/{len(mine)})' if v != 'none' else ''} |  | {seconds:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--images", default="F16,baboon,hill,kodim01", help="denoise9 stems, comma-separated")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one torch thread each")
    parser.add_argument("--only", default="", help="the variants to run (default: all), comma-separated")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the variants (not for plain DIP)")
    parser.add_argument("--no-physics", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    todo = jobs(args)
    order = {(case, v): i for i, (case, v, _) in enumerate(todo)}
    rows = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for case, v, m in pool.map(one_run, todo):
            if "error" in m:
                raise SystemExit(f"{case} {v}: {m['error']}")
            rows.append((case, v, m))
            base = m.get("psnr_baseline")
            print(
                f"{case:32s} {v:12s} final {m['psnr_final']:.2f} best {m['psnr_best']:.2f}"
                f"{'' if base is None else f' baseline {base:.2f}'} ({m['seconds']:.0f} s)",
                flush=True,
            )
    rows.sort(key=lambda r: order[(r[0], r[1])])
    settings = " ".join(args.set) if args.set else "their conf/regularizer defaults"
    intro = (
        f"Regularised DIP variants against plain DIP, {args.iterations} iterations each, seed 0, the variants at "
        f"{settings}. denoise9 quick: sigma=25, 128 px crop, net=skip_small, jitter 1/30, averaging 0.99, "
        "backtracking on (off for self_guided and aseqdip, which refuse it); physics_ct as the preset. Images: "
        f"{args.images}. `python experiments/bench_regularizers.py`, {machine()}, {args.workers} runs at once."
    )
    text = intro + "\n\n" + table(rows, args)
    print(text)
    if not args.no_record:
        record("bench_regularizers", "## Regularised DIP variants (bench_regularizers.py)\n\n" + text)


if __name__ == "__main__":
    main()
