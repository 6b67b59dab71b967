"""The 2017 denoising protocol's differences from today's, each an option and a measured row on denoise9.

The paper's denoising figure was made with the PyTorch of 2017. Each known difference from a run today is one
override, and each gets a row:
- `reference`: today's defaults: the nine 8-bit noisy files (sigma 25) as data.observed, bilinear upsampling with
  align_corners=False, fp32 (on a GPU: strict fp32, no TF32);
- `align_corners`: net.align_corners=true, bilinear upsampling as PyTorch computed it before 0.4;
- `float noise`: no noisy file: the noisy input simulated from the ground truth in float32 as the reference
  notebook does (clip(x + N(0, sigma^2)), no 8-bit rounding), a fresh draw per seed;
- `tf32` (GPU only): TF32 convolutions and matmuls (precision=tf32);
- `2017`: align_corners and float noise together;
- `ensemble=2` (full mode): two seeds trained on one noisy input, their outputs averaged (the paper's "averaged over
  two runs").
Every run goes to the largest of --iterations and the table reads each shorter count off its curves.csv (the same
trajectory: a run of 1800 iterations is the first 1800 of a run of 3000), so the paper's 1800 and the notebook's
3000 iterations come from one run; ensembles run to the first count only. The mean averaged-PSNR curve per row is
plotted beside the table.

    python experiments/bench_protocol.py --mode quick [--workers 2] [--images 9]      # CPU: crops, skip_small
    python experiments/bench_protocol.py --mode full --variants reference,tf32,align_corners,float_noise  # GPU

Runs are kept under --out (a folder with metrics.json is not run again) and the tables are rebuilt from what has
finished (--tables-only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODES = {  # each mode's protocol: the paper's (full) and the CPU table's (quick: experiments/paper, MODE=quick)
    "quick": dict(
        overrides=["net=skip_small", "data.crop=128", "cpu_threads=1"], iterations="1000,2000", variants="cpu"
    ),
    "full": dict(overrides=["net=skip"], iterations="1800,3000", variants="gpu"),
}
FLOAT_NOISE = "data.observed=null"  # no noisy file: the denoising task adds float32 noise to data.image itself
VARIANTS = {  # name -> (overrides, what it changes)
    "reference": ([], "8-bit noisy files, align_corners=False, fp32"),
    "align_corners": (["net.align_corners=true"], "bilinear upsampling as before PyTorch 0.4"),
    "float_noise": ([FLOAT_NOISE], "noise simulated in float32, no 8-bit file"),
    "2017": (["net.align_corners=true", FLOAT_NOISE], "align_corners and float noise"),
    "tf32": (["precision=tf32"], "TF32 convolutions (GPU)"),
    "ensemble2": (["ensemble=2"], "two seeds of one noisy input, averaged"),
}
DEFAULT_VARIANTS = {
    "cpu": "reference,align_corners,float_noise,2017",
    "gpu": "reference,tf32,align_corners,float_noise,2017,ensemble2",
}
PROTOCOL = [  # the denoising preset's settings, as the paper's table uses them
    "task=denoising",
    "task.sigma=25",
    "task.reg_noise_std=0.0333",
    "task.exp_weight=0.99",
    "task.backtracking=true",
    "optimizer.lr=0.01",
    "precision=fp32",
    "logger=none",
    "callbacks=none",
    "chunk=100",
    "seed=0",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=os.environ.get("DIP_DATA_ROOT", str(HERE.parent.parent / "shared" / "data")),
        help="folder holding denoise9/ (default: ../shared/data)",
    )
    p.add_argument("--mode", choices=sorted(MODES), default="quick")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--iterations", default=None, help="comma-separated counts to report (quick: 1000,2000)")
    p.add_argument("--images", type=int, default=9, help="the first N denoise9 images")
    p.add_argument("--workers", type=int, default=1, help="runs at a time")
    p.add_argument("--out", default=None, help="where the runs are kept (default: protocol_runs/<mode>, git-ignored)")
    p.add_argument("--tables-only", action="store_true", help="only rebuild the tables from the finished runs")
    p.add_argument("--no-record", action="store_true", help="print the tables without writing RESULTS.md")
    args = p.parse_args()
    mode = MODES[args.mode]
    args.variants = args.variants or DEFAULT_VARIANTS[mode["variants"]]
    args.counts = sorted(int(n) for n in (args.iterations or mode["iterations"]).split(","))
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"--variants {unknown} not known; expected some of {', '.join(VARIANTS)}")
    args.out = Path(args.out or HERE / "protocol_runs" / args.mode)
    return args


def jobs(args) -> list[dict]:
    d9 = Path(args.data) / "denoise9"
    gts = sorted(d9.glob("*_GT.png"))[: args.images]
    if not gts:
        raise SystemExit(f"no *_GT.png images in {d9}; pass --data <folder holding denoise9/>")
    out = []
    for variant in args.variants.split(","):
        extra, _ = VARIANTS[variant]
        iterations = args.counts[0] if variant == "ensemble2" else args.counts[-1]
        for gt in gts:
            stem = gt.name[: -len("_GT.png")]
            data = [f"data.image={gt}"]
            if FLOAT_NOISE not in extra:  # the 8-bit noisy file; else the task simulates the noise (task.sigma)
                data.append(f"data.observed={d9 / 'noisy_sigma25' / (stem + '_noisy.png')}")
            options = [o for o in extra if o != FLOAT_NOISE]
            # resume=auto: a run cut short (a killed benchmark) continues from its checkpoint instead of failing
            ovr = [
                *PROTOCOL,
                *MODES[args.mode]["overrides"],
                *data,
                f"iterations={iterations}",
                *options,
                "resume=auto",
            ]
            out.append(dict(variant=variant, image=stem, overrides=ovr, dir=str(args.out / variant / stem)))
    return out


def run_job(job: dict) -> dict:
    from _harness import run_config

    return run_config(job["overrides"], job["dir"])


def read_run(job: dict) -> tuple[dict, dict] | None:
    """(metrics, curves) of a finished run; an ensemble's curves are its first member's."""
    d = Path(job["dir"])
    if not (d / "metrics.json").is_file():
        return None
    from dip_lightning.history import read_curves

    metrics = json.loads((d / "metrics.json").read_text())
    curves = d / "curves.csv"
    if not curves.is_file():
        members = sorted((d / "members").glob("seed_*/curves.csv"))
        curves = members[0] if members else None
    return metrics, (read_curves(curves) if curves else {})


def at(curves: dict, column: str, count: int) -> float | None:
    """The column's value after `count` iterations (row count - 1), None where the run is shorter."""
    values = curves.get(column) or []
    return values[count - 1] if len(values) >= count else None


def tables(args, done: dict) -> str:
    variants = [v for v in args.variants.split(",") if any(k[0] == v for k in done)]
    if not variants:
        return ""
    images = sorted({k[1] for k in done})
    lines = [
        "| variant | what it changes | images | iterations | final iterate | averaged | oracle (best, uses the ground "
        "truth) | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_image = {}
    for v in variants:
        runs = {n: done[(v, n)] for n in images if (v, n) in done}
        counts = args.counts[:1] if v == "ensemble2" else args.counts
        for count in counts:
            if v == "ensemble2":
                avg = [m.get("psnr_ensemble") for m, _ in runs.values()]
                raw, best = [None], [m.get("psnr_ensemble_best") for m, _ in runs.values()]
            else:
                avg = [at(c, "psnr_gt_avg", count) for _, c in runs.values()]
                raw = [at(c, "psnr_gt", count) for _, c in runs.values()]
                best = [max(max(c["psnr_gt"][:count]), max(c["psnr_gt_avg"][:count])) for _, c in runs.values()]
            secs = [m.get("wall_seconds") or m.get("seconds") or 0 for m, _ in runs.values()]

            def mean(xs):
                xs = [x for x in xs if x is not None]
                return f"{statistics.mean(xs):.2f}" if xs else ""

            lines.append(
                f"| {v} | {VARIANTS[v][1]} | {len(runs)} | {count} | {mean(raw)} | **{mean(avg)}** | {mean(best)} "
                f"| {statistics.mean(secs):.0f} |"
            )
            if count == args.counts[-1] or v == "ensemble2":
                per_image[v] = dict(zip(runs, avg))
    head = "| image | " + " | ".join(per_image) + " |"
    lines += [
        "",
        f"Per image: the averaged output's PSNR at {args.counts[-1]} iterations (ensemble2: at {args.counts[0]}).",
        "",
        head,
        "|" + "---|" * (1 + len(per_image)),
    ]
    for n in images:
        cells = [f"{per_image[v][n]:.2f}" if per_image[v].get(n) is not None else "" for v in per_image]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(args, done: dict) -> Path | None:
    """The mean averaged-PSNR curve of each variant (images that finished), saved beside the runs' folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for v in args.variants.split(","):
        curves = [c["psnr_gt_avg"] for (vv, _), (_, c) in done.items() if vv == v and c.get("psnr_gt_avg")]
        if not curves or v == "ensemble2":
            continue
        n = min(len(c) for c in curves)
        ax.plot(range(1, n + 1), [statistics.mean(c[i] for c in curves) for i in range(n)], label=v)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for count in args.counts:
        ax.axvline(count, color="0.8", lw=0.8)
    ax.set(xlabel="iteration", ylabel="PSNR of the averaged output (dB), mean over images", ylim=(20, None))
    ax.set_title(f"denoise9 ({args.mode} mode): mean PSNR of the averaged output per variant")
    ax.legend()
    path = HERE / "protocol_results" / f"denoise9-{args.mode}.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    args = parse_args()
    todo = jobs(args)
    pending = [j for j in todo if read_run(j) is None]
    if pending and not args.tables_only:
        print(f"{len(pending)} runs to do ({len(todo) - len(pending)} done before)", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_job, j): j for j in pending}
            for f in as_completed(futures):
                j, m = futures[f], f.result()
                print(
                    json.dumps(
                        {
                            "variant": j["variant"],
                            "image": j["image"],
                            "psnr_final": m.get("psnr_final"),
                            "error": m.get("error"),
                        }
                    ),
                    flush=True,
                )
    done = {(j["variant"], j["image"]): r for j in todo if (r := read_run(j)) is not None and "error" not in r[0]}
    from _record import machine

    table = tables(args, done)
    figure = plot(args, done)
    mode = MODES[args.mode]
    markdown = (
        f"## The 2017 denoising protocol, {args.mode} mode (experiments/bench_protocol.py)\n\n"
        f"Machine: {machine()}; {args.workers} run(s) at a time. {len(done)} of {len(todo)} runs finished.\n\n"
        f"Command: `python experiments/bench_protocol.py --mode {args.mode} --variants {args.variants} --images "
        f"{args.images} --iterations {','.join(map(str, args.counts))}`. Protocol: the denoising preset (sigma 25, "
        f"jitter 1/30, averaging 0.99, backtracking, Adam lr 0.01, seed 0), {' '.join(mode['overrides'])}; "
        "`final iterate` is the net's raw output, `averaged` its exponential average (what the run returns), the "
        "oracle the best of both over the run, chosen with the ground truth. Each count is read off one run's "
        "curves.csv."
        + (f" The mean curves: experiments/{figure.relative_to(HERE)}." if figure else "")
        + f"\n\n{table}\n"
    )
    print(markdown)
    if not args.no_record and done:
        from _record import record

        print("recorded in", record(f"bench_protocol_{args.mode}", markdown))


if __name__ == "__main__":
    main()
