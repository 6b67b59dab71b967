"""Framework overhead: dip-run's training loop against a plain PyTorch loop of the same net, image and iterations.

Both run side by side in this one process, alternating, several rounds; the ratio of medians is reported.
Settings are the same for both: input jitter on, output averaging and backtracking off, no logger.
The last line printed is `overhead_ratio=<tiny-net framework time / plain-loop time>`.

    python experiments/bench_overhead.py [--iterations 600] [--rounds 7] [--threads 1] [--skip-big] [--device cpu|cuda]

This machine is shared and noisy (single runs of the same loop vary by +-15%), hence many short alternating
rounds and one CPU thread by default: the overhead is per-iteration host work, which threads do not change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import TINY_NET, compose  # noqa: E402
from _plain_loop import PLAIN_SETTINGS, plain_dip_loop  # noqa: E402
from _record import machine, record  # noqa: E402

from dip_lightning.run.job import run  # noqa: E402

CASES = {
    "tiny (skip 3x16, 64x64)": ([*TINY_NET, "data.crop=64"], 1.0),
    "skip128x5, 128x128": (["net=skip", "data.crop=128"], 0.05),
}


def framework_run(overrides: list[str], iterations: int, device: str):
    cfg = compose([*overrides, f"iterations={iterations}", *PLAIN_SETTINGS, f"trainer.accelerator={device}"])
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run(cfg, tmp)
    return metrics, cfg


def plain_run(cfg, iterations: int, device: str) -> dict:
    """Build the same net (same seed), image and observation as dip-run, then run the plain loop."""
    from dip_lightning.run.prepare import build_run

    net, _, task, data = build_run(cfg)  # the same seed, net, image and observation as dip-run
    task.prepare(data)
    dev = torch.device(device)
    net.to(dev)
    return plain_dip_loop(
        net,
        task.z.to(dev),
        task.observed.to(dev),
        task.clean.to(dev),
        iterations,
        lr=float(cfg.optimizer.lr),
        reg_noise_std=float(cfg.task.reg_noise_std),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=600, help="DIP iterations for the tiny net")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-big", action="store_true", help="only the tiny net")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-record", action="store_true", help="print only, do not rewrite RESULTS.md")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    rows, tiny_ratio = [], None
    for name, (overrides, scale) in CASES.items():
        if args.skip_big and scale < 1:
            continue
        iterations = max(int(args.iterations * scale), 20)
        framework_run(overrides, 10, args.device)  # warm-up: imports, allocator, thread pool
        fw, pl = [], []
        for _ in range(args.rounds):
            metrics, cfg = framework_run(overrides, iterations, args.device)
            fw.append(metrics["seconds"])
            pl.append(plain_run(cfg, iterations, args.device)["seconds"])
        ratio = statistics.median(fw) / statistics.median(pl)
        per_round = [f / p for f, p in zip(fw, pl)]
        if tiny_ratio is None:
            tiny_ratio = ratio
        rows.append(
            (
                name,
                iterations,
                iterations / statistics.median(pl),
                iterations / statistics.median(fw),
                ratio,
                min(per_round),
                max(per_round),
            )
        )
        print(
            f"{name}: plain {iterations / statistics.median(pl):.1f} it/s, framework "
            f"{iterations / statistics.median(fw):.1f} it/s, ratio {ratio:.3f}",
            flush=True,
        )

    table = [
        "| case | iterations | plain loop it/s | dip-run loop it/s | time ratio (median) | per-round range |",
        "|---|---|---|---|---|---|",
    ]
    table += [f"| {n} | {it} | {p:.1f} | {f:.1f} | {r:.3f} | {lo:.3f}-{hi:.3f} |" for n, it, p, f, r, lo, hi in rows]
    text = "\n".join(
        [
            "## Framework overhead (`experiments/bench_overhead.py`)",
            "",
            f"Machine: {machine()}, device `{args.device}`. Command: `python experiments/bench_overhead.py "
            f"--iterations {args.iterations} --rounds {args.rounds} --threads {args.threads}`. {args.rounds} "
            "alternating rounds per case in one process;",
            "ratio = median dip-run training-loop time / median plain PyTorch loop time (same net, seed, image,",
            "iterations; jitter on, averaging and backtracking off). Target for the tiny net: <= 1.03.",
            "",
            *table,
            "",
            "Read the per-round range before the median: on this shared VM, rounds of the same loop differ by up to",
            "+-20%, so a median below 1 means the framework's cost is inside the noise, not that it is faster.",
        ]
    )
    print(text)
    if not args.no_record:
        record("bench_overhead", text)
    print(f"overhead_ratio={tiny_ratio:.4f}")


if __name__ == "__main__":
    main()
