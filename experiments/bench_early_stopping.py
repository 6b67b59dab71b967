"""Early stopping without ground truth (ES-WMV, ES-EMV) on the paper's 9 denoising images at sigma=25.

Every run goes through the framework (dip_lightning.train.run with callbacks=es_wmv plus an ES-EMV callback: both
rules watch the same run). The stoppers run in monitor mode (stop=false): the run goes to the end, so the same run
gives the oracle best iterate over the whole budget (psnr_best), each rule's choice (psnr_stop) and where it would
have stopped (stop_iteration); a stopping run returns the same iterate (the choice is frozen when the rule fires)
and saves `iterations - stop_iteration - 1`.

CPU defaults (stated in the recorded table): 64x64 centre crops of the given noisy images and ground truths, a
3-scale 16-channel skip net, 1000 iterations, window 50 and patience 200 (the paper: window 100, patience 1000 for
thousands of iterations at full size), 1 thread. On a GPU run it at full size: --crop 0 --net skip --iterations 3000
--window 100 --patience 1000.

    python experiments/bench_early_stopping.py [--data ../shared/data] [--iterations 1000] ...
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TINY_NET = ["net.num_channels_down=[16,16,16]", "net.num_channels_up=[16,16,16]", "net.num_channels_skip=[4,4,4]"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"),
                   help="folder holding denoise9/ (default: ../shared/data)")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--crop", type=int, default=64, help="centre crop size; 0 = whole image")
    p.add_argument("--net", default="tiny", help="'tiny' (3 scales x 16 channels) or a conf/net preset name")
    p.add_argument("--window", type=int, default=50, help="ES-WMV window (paper: 100)")
    p.add_argument("--alpha", type=float, default=0.1, help="ES-EMV weight of the newest output (paper: 0.1)")
    p.add_argument("--patience", type=int, default=200, help="both rules (paper: 1000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--images", type=int, default=9, help="use the first N images (for a quick check)")
    p.add_argument("--no-record", action="store_true", help="print the table without writing RESULTS.md")
    return p.parse_args()


def image_pairs(data: Path) -> list[tuple[str, Path, Path]]:
    folder = data / "denoise9"
    gts = sorted(folder.glob("*_GT.png"))
    if not gts:
        raise SystemExit(f"no *_GT.png images in {folder}; pass --data <folder holding denoise9/>")
    pairs = []
    for gt in gts:
        name = gt.name[: -len("_GT.png")]
        noisy = folder / "noisy_sigma25" / f"{name}_noisy.png"
        if not noisy.exists():
            raise SystemExit(f"{noisy} is missing: expected the noisy input beside each ground truth")
        pairs.append((name, gt, noisy))
    return pairs


def run_one(gt: Path, noisy: Path, args, out_dir: Path) -> list[dict]:
    """One DIP run with both stoppers monitoring it (the same trajectory); a row per rule."""
    from hydra import compose, initialize_config_dir

    from dip_lightning.train import CONFIG_DIR, run

    emv = "+callbacks.es_emv"
    overrides = [*(TINY_NET if args.net == "tiny" else [f"net={args.net}"]),
                 f"data.image={gt}", f"data.observed={noisy}", f"data.crop={args.crop or 'null'}",
                 f"iterations={args.iterations}", "chunk=100", "logger=none", "callbacks=es_wmv",
                 "callbacks.progress.log_seconds=1000",
                 "callbacks.early_stopping.stop=false", f"callbacks.early_stopping.patience={args.patience}",
                 f"callbacks.early_stopping.window={args.window}",
                 f"{emv}._target_=dip_lightning.callbacks.early_stopping.ESEMV", f"{emv}.stop=false",
                 f"{emv}.alpha={args.alpha}", f"{emv}.patience={args.patience}", f"{emv}.warmup={args.window}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    m = run(cfg, out_dir)
    keys = ("stop_step", "stop_iteration", "psnr_stop")
    return [{**m, "rule": "es_wmv"}, {**m, "rule": "es_emv", **{k: m[f"es_emv/{k}"] for k in keys}}]


def table(rows: list[dict], args) -> str:
    lines = ["| rule | images | mean psnr_best (dB) | mean psnr_stop (dB) | mean gap best - stop (dB) | max gap (dB) "
             "| fired on | mean stop step | mean iterations saved |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rule in ("es_wmv", "es_emv"):
        rs = [r for r in rows if r["rule"] == rule]
        gaps = [r["psnr_best"] - r["psnr_stop"] for r in rs]
        saved = [args.iterations - (r["stop_iteration"] + 1) if r["stop_iteration"] is not None else 0 for r in rs]
        fired = sum(r["stop_iteration"] is not None for r in rs)
        lines.append(f"| {rule} | {len(rs)} | {statistics.mean(r['psnr_best'] for r in rs):.2f} "
                     f"| {statistics.mean(r['psnr_stop'] for r in rs):.2f} | {statistics.mean(gaps):.2f} "
                     f"| {max(gaps):.2f} | {fired}/{len(rs)} | {statistics.mean(r['stop_step'] for r in rs):.0f} "
                     f"| {statistics.mean(saved):.0f} of {args.iterations} |")
    lines += ["", "| image | rule | psnr_noisy | psnr_best (step) | psnr_stop (step) | gap | fired at |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        fired = r["stop_iteration"] if r["stop_iteration"] is not None else "never"
        lines.append(f"| {r['image']} | {r['rule']} | {r['psnr_observed']:.2f} | {r['psnr_best']:.2f} "
                     f"({r['best_step']}) | {r['psnr_stop']:.2f} ({r['stop_step']}) "
                     f"| {r['psnr_best'] - r['psnr_stop']:.2f} | {fired} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    import torch

    from _record import machine, record

    torch.set_num_threads(args.threads)
    pairs = image_pairs(Path(args.data))[: args.images]
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dip_es_bench_") as tmp:
        for name, gt, noisy in pairs:
            for row in run_one(gt, noisy, args, Path(tmp) / name):
                rows.append({**row, "image": name})
                print(json.dumps({k: rows[-1][k] for k in ("image", "rule", "psnr_best", "best_step", "psnr_stop",
                                                          "stop_step", "stop_iteration")}), flush=True)
    minutes = (time.perf_counter() - start) / 60
    settings = (f"{len(pairs)} images of denoise9 (the paper's noisy inputs, sigma=25), "
                f"{'whole images' if not args.crop else f'{args.crop}x{args.crop} centre crops'}, "
                f"net {'skip 3x16 channels' if args.net == 'tiny' else args.net}, {args.iterations} iterations, "
                f"output averaging 0.99 and backtracking (the denoising defaults), both rules on one run per image, ES-WMV window {args.window}, "
                f"ES-EMV alpha {args.alpha} (scored after {args.window} steps), patience {args.patience}, seed 0; "
                f"stoppers in monitor mode (psnr_best is the oracle over all {args.iterations} iterations; "
                f"iterations saved = iterations - stop iteration - 1, 0 when the rule never fired).")
    markdown = (f"## Early stopping without ground truth (experiments/bench_early_stopping.py)\n\n"
                f"Machine: {machine()}. Run time {minutes:.1f} min.\n\nSettings: {settings}\n\n{table(rows, args)}\n")
    print(markdown)
    if not args.no_record and not any(math.isnan(r["psnr_stop"]) for r in rows):
        print("recorded in", record("bench_early_stopping", markdown))


if __name__ == "__main__":
    main()
