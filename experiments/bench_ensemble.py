"""Is a seed ensemble worth its time without ground truth? One run against `ensemble=N` on denoise9.

Per image of denoise9 (the paper's noisy input given as data.observed, its ground truth used only to score), the
discrepancy rule chooses each result, as a GT-free run's default rule does:
- one run (seed 0), timed alone;
- `ensemble=N` (seeds 0..N-1 in one pack; restored.png = the mean of the members' choices), timed as one job.
Member seed 0 of the ensemble is the single run (the same bits), so the gain is the ensemble's own. The oracle
column is the single run's psnr_best (the best iterate, found with the ground truth): what no GT-free rule can beat
on one run.

Runs are kept under --out (a folder with metrics.json is not run again), so the script can be stopped and continued.

    python experiments/bench_ensemble.py [--data ../shared/data] [--images 9] [--members 4]
    python experiments/bench_ensemble.py --device cuda --net skip --crop 0 --iterations 1800   # a GPU, whole images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=os.environ.get("DIP_DATA_ROOT", str(HERE.parent.parent / "shared" / "data")),
        help="folder holding denoise9/ (default: ../shared/data)",
    )
    p.add_argument("--out", default=str(HERE / "ensemble_runs"), help="where the runs are kept (git-ignored)")
    p.add_argument("--images", type=int, default=9)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--crop", type=int, default=128, help="centre crop in pixels; 0: whole images")
    p.add_argument("--net", default="skip_small")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--no-record", action="store_true", help="print the table without writing RESULTS.md")
    return p.parse_args(argv)


def overrides(args, image: Path, noisy: Path) -> list[str]:
    return [
        "task=denoising",
        f"net={args.net}",
        f"data.crop={args.crop or 'null'}",
        f"data.image={image}",
        f"data.observed={noisy}",
        f"iterations={args.iterations}",
        "callbacks=discrepancy",  # with a ground truth present the default rule is not added: name it
        "chunk=100",
        "logger=none",
        "cpu_threads=1" if args.device == "cpu" else "cpu_threads=null",
        f"trainer.accelerator={args.device}",
    ]


def run_once(ovr: list[str], folder: Path) -> dict:
    done = folder / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    import logging

    from _harness import compose

    from dip_lightning.run.job import run

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    return run(compose(ovr), folder)


def main(argv: list[str] | None = None) -> list[dict]:
    from _record import machine, record

    args = parse_args(argv)
    d9 = Path(args.data) / "denoise9"
    gts = sorted(d9.glob("*_GT.png"))[: args.images]
    if not gts:
        raise SystemExit(f"no *_GT.png images in {d9}; pass --data <folder holding denoise9/>")
    tag = f"{args.net}-{args.crop or 'full'}-{args.iterations}-{args.device}"
    out = Path(args.out) / tag
    rows = []
    for gt in gts:
        stem = gt.name[: -len("_GT.png")]
        ovr = overrides(args, gt, d9 / "noisy_sigma25" / f"{stem}_noisy.png")
        one = run_once(ovr, out / "single" / stem)
        ens = run_once([*ovr, f"ensemble={args.members}"], out / f"ensemble{args.members}" / stem)
        row = {
            "image": stem,
            "oracle": one["psnr_best"],
            "single": one["psnr_stop"],
            "members_mean": ens["psnr_members_mean"],
            "ensemble": ens["psnr_ensemble"],
            "gain": ens["psnr_ensemble"] - one["psnr_stop"],
            "single_s": one["seconds"],
            "ensemble_s": ens["seconds"],
        }
        row["time_ratio"] = row["ensemble_s"] / row["single_s"]
        rows.append(row)
        print(
            f"{stem}: single {row['single']:.2f} dB, ensemble {row['ensemble']:.2f} dB ({row['gain']:+.2f}), "
            f"{row['time_ratio']:.2f}x the time",
            flush=True,
        )
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0] if k != "image"}
    cols = ["oracle", "single", "members_mean", "ensemble", "gain", "single_s", "ensemble_s", "time_ratio"]
    lines = [
        "## Seed ensembles without ground truth (`experiments/bench_ensemble.py`)",
        "",
        f"Machine: {machine()}, device `{args.device}`. Command: `python experiments/bench_ensemble.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`. denoise9 ({len(rows)} images, the paper's "
        f"sigma=25 noisy inputs), `net={args.net}`, crop {args.crop or 'none'}, {args.iterations} iterations, the "
        "denoising preset; the discrepancy rule picks every result (no ground truth used). single: one run "
        f"(seed 0); ensemble: `ensemble={args.members}`, the mean of its members' choices; members_mean: their "
        "mean PSNR; oracle: the single run's best iterate (chosen with the ground truth). PSNR in dB; seconds of "
        "the DIP loop.",
        "",
        "| image | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
        *(f"| {r['image']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |" for r in rows),
        "| **mean** | " + " | ".join(f"**{mean[c]:.2f}**" for c in cols) + " |",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record(f"bench_ensemble_{args.device}", text)
    return rows


if __name__ == "__main__":
    main()
