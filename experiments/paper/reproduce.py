"""Reproduce one of the paper's tables through the framework: `dip-run -m` over the images, `dip-gather` on the
sweep, the classical baselines on the same inputs and crops, then a result file and a figure.

    python experiments/paper/reproduce.py --table denoise9 --mode quick [--data ../shared/data]
    make reproduce TABLE=denoise9 MODE=quick [DATA=../shared/data]

Tables: denoise9, sr_set5_x4, sr_set14_x4, sr_set5_x8, sr_set14_x8, inpaint11. Modes:
- full: the paper's protocol (whole images, skip128x5, the paper's iterations): GPU work;
- quick: centre crops, a narrower net and fewer iterations, one CPU thread per job, so a table runs on a small
  CPU in minutes. Quick numbers check the pipeline and compare DIP with the baselines on the same crops; they are
  not the paper's numbers.

Extra dip-run overrides go after the options, e.g. several jobs packed on one GPU (DIP at 512 px leaves most of a
big GPU idle): `... --mode full launcher=joblib hydra.launcher.n_jobs=3` (make: ARGS='launcher=joblib ...').

Writes experiments/paper/results/<table>-<mode>.md and .png; the raw sweep goes to experiments/paper/runs/ (not
tracked). `--sweep-dir <existing sweep>` re-scores a finished sweep without running DIP again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dip_lightning import history
from dip_lightning.history import read_curves

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS_DIR = HERE / "results"
RUNS_DIR = HERE / "runs"
DEFAULT_DATA = REPO.parent / "shared" / "data"
SR_SHAVE = 4  # border pixels left out of SR scores: the paper's script, at x4 and x8 (REFERENCE.md; task.shave)
# Measured here (experiments/bench_speed.py): glibc returns DIP's big activations to the kernel every step unless
# told not to; this keeps them, faster at no change in results.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"

INPAINT_NAMES = {  # the paper's column names -> file stems in inpainting11/
    "Barbara": "barbara",
    "Boat": "boat",
    "House": "house",
    "Lena": "Lena512",
    "Peppers": "peppers256",
    "C.man": "Cameraman256",
    "Couple": "couple",
    "Finger": "fingerprint",
    "Hill": "hill",
    "Man": "man",
    "Montage": "montage",
}
INPAINT_PAPER = {  # REFERENCE.md: 50% missing pixels, PSNR dB
    "Papyan et al. (CSC)": [28.14, 31.44, 34.58, 35.04, 31.11, 27.90, 31.18, 31.34, 32.35, 31.92, 28.05],
    "DIP (paper)": [32.22, 33.06, 39.16, 36.16, 33.05, 29.8, 32.52, 32.84, 32.77, 32.20, 34.54],
}


@dataclass
class Table:
    name: str
    kind: str  # denoise | sr | inpaint
    folder: str  # under --data
    gt: str  # ground-truth file, {stem} filled in
    observed: str | None  # the paper's corrupted input, {stem} filled in
    factor: int = 1
    paper: dict[str, float] = field(default_factory=dict)  # mean numbers the paper reports
    full: list[str] = field(default_factory=list)  # dip-run overrides for MODE=full
    quick: list[str] = field(default_factory=list)  # for MODE=quick
    full_iterations: int = 0
    quick_iterations: int = 0

    def stems(self, data: Path) -> list[str]:
        folder, _, prefix = self.gt.partition("{stem}")[0].rpartition("/")
        suffix = self.gt.partition("{stem}")[2]
        return sorted(
            p.name[len(prefix) : len(p.name) - len(suffix)]
            for p in (data / self.folder / folder).glob(f"{prefix}*{suffix}")
        )


# Quick mode: 128x128 centre crops, skip with 32 channels per scale (net=skip_small), one thread per job.
QUICK_COMMON = ["net=skip_small", "data.crop=128", "cpu_threads=1"]
TABLES = {
    "denoise9": Table(
        "denoise9",
        "denoise",
        "denoise9",
        "{stem}_GT.png",
        "noisy_sigma25/{stem}_noisy.png",
        paper={
            "DIP": 29.22,
            "DIP, averaged output": 30.43,
            "DIP, averaged over 2 runs": 31.00,
            "CBM3D": 31.42,
            "NLM": 30.26,
        },
        full=[
            "task=denoising",
            "net=skip",
            "data.crop=null",
            "task.sigma=25",
            "task.reg_noise_std=0.0333",
            "task.exp_weight=0.99",
            "task.backtracking=true",
            "optimizer.lr=0.01",
        ],
        quick=[
            "task=denoising",
            "task.sigma=25",
            "task.reg_noise_std=0.0333",
            "task.exp_weight=0.99",
            "task.backtracking=true",
            "optimizer.lr=0.01",
            *QUICK_COMMON,
        ],
        full_iterations=1800,
        quick_iterations=1000,
    ),
    **{
        f"sr_{s}_x{f}": Table(
            f"sr_{s}_x{f}",
            "sr",
            s,
            f"dip_gt_x{f}/{{stem}}_GT.png",
            None,
            factor=f,
            paper={
                ("set5", 4): {"DIP": 29.90, "Bicubic": 28.43, "SRResNet": 32.10},
                ("set14", 4): {"DIP": 27.00, "Bicubic": 26.05, "SRResNet": 28.53},
            }.get((s, f), {}),
            full=[
                "task=super_resolution",
                f"task.factor={f}",
                "net=skip",
                "data.crop=null",
                "task.kernel=lanczos2",
                f"task.reg_noise_std={0.03 if f == 4 else 0.05}",
                "optimizer.lr=0.01",
            ],
            quick=[
                "task=super_resolution",
                f"task.factor={f}",
                "task.kernel=lanczos2",
                f"task.reg_noise_std={0.03 if f == 4 else 0.05}",
                "optimizer.lr=0.01",
                *QUICK_COMMON,
            ],
            full_iterations=2000 if f == 4 else 4000,
            quick_iterations=1000 if f == 4 else 1500,
        )
        for s in ("set5", "set14")
        for f in (4, 8)
    },
    "inpaint11": Table(
        "inpaint11",
        "inpaint",
        "inpainting11",
        "{stem}_GT.png",
        "masked_50p/{stem}_masked.png",
        paper={"DIP": 33.48, "Papyan et al. (CSC)": 31.18},
        # the reference's "restoration, 50% of pixels kept" settings (barbara): skip128x5, 1 channel, lr 0.001
        full=[
            "task=inpainting",
            "net=skip",
            "net.output_channels=1",
            "data.crop=null",
            "task.reg_noise_std=0.03",
            "optimizer.lr=0.001",
        ],
        quick=[
            "task=inpainting",
            "net.output_channels=1",
            "task.reg_noise_std=0.03",
            "optimizer.lr=0.01",
            *QUICK_COMMON,
        ],
        full_iterations=11000,
        quick_iterations=700,
    ),
}
MODES = ("quick", "full")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --------------------------------------------------------------------------------------------------- DIP sweep
def dip_command(
    table: Table,
    mode: str,
    data: Path,
    stems: list[str],
    sweep_dir: Path,
    iterations: int,
    device: str,
    extra: list[str],
) -> list[str]:
    """The `dip-run -m` command line: one job per image, swept natively by Hydra over `+stem`."""
    overrides = list(table.full if mode == "full" else table.quick)
    overrides += [
        f"iterations={iterations}",
        f"data.root={data}",
        "logger=none",
        "callbacks=none",
        "seed=0",
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
    overrides += extra
    overrides += [f"hydra.sweep.dir={sweep_dir}"]
    # `python -m` rather than the dip-run script: also works where the package is on PYTHONPATH, not installed
    return [sys.executable, "-m", "dip_lightning.train", "-m", *overrides]


def write_masks(table: Table, data: Path, stems: list[str], out: Path) -> None:
    """Mask files derived from the paper's inputs (known = input != 0), beside the sweep (not in the repo)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        arr = np.asarray(Image.open(data / table.folder / table.observed.format(stem=stem)).convert("L"))
        Image.fromarray(((arr != 0) * 255).astype(np.uint8)).save(out / f"{stem}_mask.png")


def run_logged(cmd: list[str], log_path: Path, env: dict) -> int:
    print("+", shlex.join(cmd), flush=True)
    with open(log_path, "a") as log:
        log.write("+ " + shlex.join(cmd) + "\n")
        log.flush()
        return subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def gather(sweep_dir: Path, log_path: Path, env: dict) -> str:
    """`dip-gather` on the sweep dir when this checkout has it; returns a note for the result file."""
    import importlib.util

    try:
        found = importlib.util.find_spec("dip_lightning.sweeps.gather") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return "`dip-gather` is not in this checkout yet; the table below is read from each job's metrics.json."
    rc = run_logged([sys.executable, "-m", "dip_lightning.sweeps.gather", str(sweep_dir)], log_path, env)
    made = [p.name for p in sorted(sweep_dir.glob("results.*"))]
    if rc != 0:
        return f"`dip-gather {sweep_dir.name}` failed (exit {rc}, see log.txt); the table is read from metrics.json."
    return f"`dip-gather` wrote {', '.join(made) or 'nothing'} in the sweep folder."


def job_stem(table: Table, overrides: list[str]) -> str:
    """The image a job ran on: its +stem override, or the stem of its data.image file."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    if "+stem" in values:
        return values["+stem"]
    name = Path(values["data.image"].strip("'\"")).name
    prefix, _, suffix = table.gt.rpartition("/")[2].partition("{stem}")
    return name[len(prefix) : len(name) - len(suffix)]


def read_jobs(table: Table, sweep_dir: Path) -> dict[str, dict]:
    """stem -> {'dir', 'metrics' or 'error', 'curves'} for every job of the sweep."""
    import yaml

    jobs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        stem = job_stem(table, overrides)
        entry: dict = {"dir": job}
        if (job / "metrics.json").exists():
            entry["metrics"] = json.loads((job / "metrics.json").read_text())
            entry["curves"] = read_curves(job / "curves.csv") if (job / "curves.csv").exists() else None
        else:
            err = job / "error.json"
            entry["error"] = json.loads(err.read_text())["error"] if err.exists() else "no metrics.json (crashed?)"
        jobs[stem] = entry
    return jobs


# --------------------------------------------------------------------------------------------------- baselines
def load_inputs(table: Table, mode: str, data: Path, stem: str, job_dir: Path | None) -> dict[str, np.ndarray]:
    """The ground truth and the observation exactly as the DIP job saw them (the framework's loader and crop)."""
    from dip_lightning.data.datamodule import SingleImageDataModule
    from dip_lightning.data.io import read_image

    crop = 128 if mode == "quick" else None
    dm = SingleImageDataModule(
        image=f"{table.folder}/{table.gt.format(stem=stem)}",
        observed=f"{table.folder}/{table.observed.format(stem=stem)}" if table.observed else None,
        root=str(data),
        crop=crop,
    )
    loaded = dm.load(32, table.factor if table.kind == "sr" else 1)

    def np_img(t):
        a = t[0].permute(1, 2, 0).double().numpy()
        return a[..., 0] if a.shape[-1] == 1 else a

    out = {"clean": np_img(loaded.clean)}
    if table.kind == "sr":
        from dip_lightning import baselines as B

        lr = B.make_lr(out["clean"], table.factor)
        if job_dir is not None and (job_dir / "observed.png").exists():  # the LR image the DIP job fitted
            saved = np_img(read_image(job_dir / "observed.png"))
            if saved.shape == lr.shape:
                lr = saved
        out["observed"] = lr
    else:
        out["observed"] = np_img(loaded.observed)
    return out


def run_baselines(
    table: Table, inputs: dict[str, np.ndarray], slow: bool = True
) -> list[tuple[str, float, float, np.ndarray]]:
    """(name, PSNR, seconds, image) of each classical baseline on the same input; `slow=False` leaves out those
    that take seconds per image (BM3D, NLM, biharmonic), e.g. on a GPU machine whose time is counted."""
    from dip_lightning import baselines as B

    clean, observed = inputs["clean"], inputs["observed"]
    if not slow and table.kind != "sr":
        return []
    if table.kind == "denoise":
        results = [B.bm3d_denoise(observed, 25), B.nlm_denoise(observed, 25), B.nlm_denoise(observed)]
        return [(r.name, B.psnr(r.image, clean), r.seconds, r.image) for r in results]
    if table.kind == "sr":
        results = [B.upsample(observed, table.factor, "bicubic"), B.upsample(observed, table.factor, "nearest")]
        return [(r.name, B.psnr_y_shaved(r.image, clean, SR_SHAVE), r.seconds, r.image) for r in results]
    r = B.biharmonic_inpaint(observed)
    return [(r.name, B.psnr(r.image, clean), r.seconds, r.image)]


# ------------------------------------------------------------------------------------------------------ report
def code_version() -> str:
    """The commit of the code that ran (and whether the working tree had uncommitted changes)."""
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


def fmt(v, digits=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


def dip_scores(table: Table, metrics: dict, curves: dict) -> dict[str, float | None]:
    """The DIP columns: for denoising the final raw iterate, the averaged output and the best; else final, best."""
    if table.kind == "denoise":
        # curves.csv (per-iteration PSNRs) exists from commit 16f26c5 on; older sweeps lack the raw final iterate
        return {
            "DIP final iterate": curves[history.PSNR_GT][-1] if curves else None,
            "DIP averaged": metrics["psnr_final"],
            "DIP best": metrics["psnr_best"],
        }
    return {"DIP": metrics["psnr_final"], "DIP best": metrics["psnr_best"]}


def write_figure(path: Path, table: Table, rows: list[dict], max_rows: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dip_lightning import baselines as B

    rows = [r for r in rows if r.get("restored") is not None][:max_rows]
    if not rows:
        return
    cols = ["input", "DIP", rows[0]["baseline_name"], "ground truth"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        clean = r["clean"]
        h, w = clean.shape[:2]
        s = min(h, w, 128)
        top, left = (h - s) // 2, (w - s) // 2
        inp = r["observed"]
        if table.kind == "sr":  # show the LR image at the HR size
            inp = B.upsample(inp, table.factor, "nearest").image
        images = [inp, r["restored"], r["baseline_image"], clean]
        titles = [
            f"LR input (x{table.factor}, nearest)" if table.kind == "sr" else f"input {fmt(r['input_psnr'])}",
            f"DIP {fmt(r['dip_psnr'])}",
            f"{r['baseline_name']} {fmt(r['baseline_psnr'])}",
            r["stem"],
        ]
        for j, (img, title) in enumerate(zip(images, titles)):
            ax = axes[i][j]
            crop = img[top : top + s, left : left + s]
            ax.imshow(
                np.clip(crop, 0, 1), cmap="gray" if crop.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
            )
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{table.name}: {' / '.join(cols)} (PSNR dB; centre {s}x{s})", fontsize=9)
    fig.tight_layout()
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=72, format="png")
    plt.close(fig)
    buf.seek(0)  # a 256-colour palette keeps the tracked figure small (~130 KB instead of ~450 KB)
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def build_report(
    table: Table,
    mode: str,
    args,
    jobs: dict,
    stems: list[str],
    cmd: list[str],
    gather_note: str,
    dip_wall: float | None,
    data: Path,
) -> tuple[str, list[dict]]:
    from dip_lightning import baselines as B
    from dip_lightning.data.io import read_image

    rows, base_names = [], []
    for stem in stems:
        job = jobs.get(stem)
        inputs = load_inputs(table, mode, data, stem, job["dir"] if job else None)
        base = run_baselines(table, inputs, slow=args.baselines)
        base_names = [b[0] for b in base]
        if table.kind == "sr":
            input_psnr = base[0][1]  # bicubic is what the input scores
        else:
            input_psnr = B.psnr(inputs["observed"], inputs["clean"])
        row = {
            "stem": stem,
            "clean": inputs["clean"],
            "observed": inputs["observed"],
            "input_psnr": input_psnr,
            "baselines": {b[0]: (b[1], b[2]) for b in base},
        }
        if base:
            best_base = max(base, key=lambda b: b[1])
            row.update(baseline_name=best_base[0], baseline_psnr=best_base[1], baseline_image=best_base[3])
        else:  # the figure's third column shows the input instead
            row.update(baseline_name="input", baseline_psnr=input_psnr, baseline_image=inputs["observed"])
        if job and "metrics" in job:
            m = job["metrics"]
            row["dip"] = dip_scores(table, m, job["curves"])
            row["dip_psnr"] = m["psnr_final"]
            row["seconds"], row["iterations"], row["device"] = m["seconds"], m["iterations"], m["device"]
            row["best_step"] = m.get("best_step")
            img = read_image(job["dir"] / "restored.png")[0].permute(1, 2, 0).double().numpy()
            row["restored"] = img[..., 0] if img.shape[-1] == 1 else img
        else:
            row["error"] = job["error"] if job else "no DIP job for this image"
        rows.append(row)

    dip_cols = list(next((r["dip"] for r in rows if "dip" in r), {}).keys())
    metric = (
        f"PSNR on Y (studio range), {SR_SHAVE} px shaved" if table.kind == "sr" else "PSNR, all channels, data_range=1"
    )
    it = rows[0].get("iterations") if rows else None
    device = next((r["device"] for r in rows if "device" in r), "n/a")
    lines = [f"# {table.name}, {mode} mode", ""]
    if mode == "quick":
        lines += [
            f"**Quick mode**: 128x128 centre crops, net `skip_small` (skip with 32 channels per scale instead "
            f"of 128), {it} iterations (paper: {table.full_iterations}), one CPU thread per job. These numbers "
            "check the pipeline and compare DIP with the baselines on the same crops; they are **not** the "
            "paper's numbers (crop, net and iterations all differ).",
            "",
        ]
    else:
        lines += [f"**Full mode**: the paper's protocol: whole images, skip128x5, {it} iterations.", ""]
    lines += [
        f"- Metric: {metric}. DIP columns from each job's `metrics.json`"
        + (
            "; 'final iterate' = the net's last output (from the jittered input, without averaging), "
            "'averaged' = the 0.99 exponential average (the paper's second number), 'best' = best iterate "
            "against the ground truth (an oracle)."
            if table.kind == "denoise"
            else "; 'DIP' = the final output "
            "(from the clean input z); 'best' = the best per-iteration output against the ground truth (an "
            "oracle; those outputs come from the jittered input, so 'best' can be below 'DIP')."
        ),
        f"- Device: {device}; DIP sweep wall time {fmt(dip_wall / 60 if dip_wall else None, 1)} min "
        f"for {len(stems)} images; date {dt.date.today().isoformat()}.",
        f"- Made by: `{args.invocation}` at code commit {code_version()}",
        f"- The DIP sweep it ran: `{shlex.join(cmd)}`"
        + (f", at code commit {args.sweep_code}" if args.sweep_code else ""),
        f"- {gather_note}",
        "",
    ]
    head = (
        ["image", "input (bicubic)" if table.kind == "sr" else "input"]
        + dip_cols
        + [f"{n}" for n in base_names]
        + ["best step", "DIP s"]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "dip" in r:
            dip_vals = [fmt(r["dip"][c]) for c in dip_cols]
        else:
            dip_vals = [f"failed: {r['error'][:80]}"] + [""] * (len(dip_cols) - 1)
        base_vals = [f"{fmt(r['baselines'][n][0])} ({fmt(r['baselines'][n][1], 1)} s)" for n in base_names]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["stem"],
                    fmt(r["input_psnr"]),
                    *dip_vals,
                    *base_vals,
                    str(r.get("best_step", "")),
                    fmt(r.get("seconds"), 0),
                ]
            )
            + " |"
        )
    means = {c: mean(r["dip"][c] for r in rows if "dip" in r) for c in dip_cols}
    base_means = {n: mean(r["baselines"][n][0] for r in rows) for n in base_names}
    base_secs = {n: mean(r["baselines"][n][1] for r in rows) for n in base_names}
    lines.append(
        "| **mean** | "
        + " | ".join(
            [
                fmt(mean(r["input_psnr"] for r in rows)),
                *[f"**{fmt(means[c])}**" for c in dip_cols],
                *[f"{fmt(base_means[n])} ({fmt(base_secs[n], 1)} s)" for n in base_names],
                "",
                fmt(mean(r.get("seconds") for r in rows), 0),
            ]
        )
        + " |"
    )
    lines += [
        "",
        "Baselines run on the same inputs and crops; their time in seconds per image (this CPU)."
        if args.baselines
        else "The slow classical baselines were left out (--no-baselines); the paper's numbers are below.",
    ]
    if table.kind == "inpaint":
        lines += [
            "",
            "### Beside the paper's table (whole images; per image)",
            "",
            "| | " + " | ".join(INPAINT_NAMES) + " | mean |",
            "|---|" + "---|" * (len(INPAINT_NAMES) + 1),
        ]
        by_stem = {r["stem"]: r for r in rows}
        for label, vals in INPAINT_PAPER.items():
            lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {statistics.fmean(vals):.2f} |")
        for label, getter in (
            (f"DIP, this run ({mode})", lambda r: r.get("dip_psnr")),
            (f"Biharmonic, this run ({mode})", lambda r: r["baselines"].get("Biharmonic", (None,))[0]),
        ):
            vals = [getter(by_stem[s]) if s in by_stem else None for s in INPAINT_NAMES.values()]
            lines.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(mean(vals))} |")
        paper = INPAINT_PAPER["DIP (paper)"]
        gaps = [(n, by_stem[s].get("dip_psnr"), p) for (n, s), p in zip(INPAINT_NAMES.items(), paper) if s in by_stem]
        lines += [
            "",
            "Gap to the paper's DIP, per image (this run minus paper, dB): "
            + ", ".join(f"{n} {fmt(v - p if v is not None else None)}" for n, v, p in gaps)
            + ".",
        ]
    lines += ["", "### The paper's numbers (mean)", ""]
    if table.paper:
        lines += ["| method | paper mean (dB) |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in table.paper.items()]
    else:
        lines += [
            "The paper's mean for this table is in its supplementary material, not transcribed in "
            "REFERENCE.md: no comparison."
        ]
    if any(r["dip"].get("DIP final iterate", 0) is None for r in rows if "dip" in r):
        lines += [
            "",
            "'DIP final iterate' is n/a: this sweep ran at a commit whose runs did not yet write "
            "curves.csv (per-iteration PSNRs); metrics.json has the averaged and best PSNRs only.",
        ]
    lines += gap_analysis(table, mode, rows, means, base_means, it)
    lines += conventions(table)
    return "\n".join(lines) + "\n", rows


def gap_analysis(table: Table, mode: str, rows: list[dict], means: dict, base_means: dict, iterations) -> list[str]:
    """Where the gap to the paper comes from, from this run's own numbers."""
    out = ["", "### Gap to the paper", ""]
    main_col = "DIP averaged" if table.kind == "denoise" else "DIP"
    paper_main = table.paper.get("DIP, averaged output" if table.kind == "denoise" else "DIP")
    ours = means.get(main_col)
    done = [r for r in rows if "dip" in r]
    inputs_effect = None
    if paper_main is not None and ours is not None:
        gap = ours - paper_main
        out.append(f"- Mean gap ({main_col}, this run, minus the paper's {paper_main:.2f}): **{gap:+.2f} dB**.")
        ref = {"denoise": ("BM3D", "CBM3D"), "sr": ("Bicubic", "Bicubic")}.get(table.kind)
        if ref and base_means.get(ref[0]) is not None and ref[1] in table.paper:
            inputs_effect = base_means[ref[0]] - table.paper[ref[1]]
            out.append(
                f"- The same classical method on these inputs: {ref[0]} {base_means[ref[0]]:.2f} dB here vs "
                f"{table.paper[ref[1]]:.2f} in the paper ({inputs_effect:+.2f} dB): that much of the gap comes "
                "from the inputs themselves (crops, image content), not from DIP. The rest, "
                f"{gap - inputs_effect:+.2f} dB, is DIP's own: "
                + (
                    "net width, iterations, and that a 128 px crop gives the net less context"
                    if mode == "quick"
                    else "the paper's protocol ran here, so one seed's run-to-run spread and implementation details"
                )
                + "."
            )
    if table.kind == "denoise" and means.get("DIP final iterate") is not None and "DIP" in table.paper:
        gap_raw = means["DIP final iterate"] - table.paper["DIP"]
        out.append(
            f"- Without averaging (the final raw iterate, paper {table.paper['DIP']:.2f}): "
            f"{gap_raw:+.2f} dB"
            + (
                f"; less the inputs' {inputs_effect:+.2f} dB, {gap_raw - inputs_effect:+.2f} dB is DIP's own."
                if inputs_effect is not None
                else "."
            )
        )
    best_base = (
        max(base_means, key=lambda k: base_means[k] if base_means[k] is not None else -1e9) if base_means else None
    )
    if ours is not None and best_base is not None:
        out.append(
            f"- DIP against the best baseline on the same inputs ({best_base}): "
            f"{ours - base_means[best_base]:+.2f} dB on the mean."
        )
    if done and iterations:
        late = [r["stem"] for r in done if r.get("best_step") is not None and r["best_step"] >= 0.9 * iterations]
        out.append(
            f"- Best iterate in the last 10% of the {iterations} iterations for {len(late)} of {len(done)} "
            "images"
            + (
                f" ({', '.join(late)}): these runs were still improving, so more iterations would raise their numbers."
                if late
                else ": the runs peaked before the end."
            )
        )
    if mode == "quick":
        out.append(
            f"- Quick mode differs from the paper in crop (128x128 centre crops vs whole images), net "
            f"(skip_small, 0.15M parameters, vs skip128x5, 2.2M) and iterations ({iterations} vs "
            f"{table.full_iterations}); run MODE=full for the paper's protocol."
        )
    return out


def conventions(table: Table) -> list[str]:
    """What the scores mean, checked against REFERENCE.md (dip_lightning/metrics.py)."""
    out = ["", "### PSNR conventions (checked against REFERENCE.md)", ""]
    out.append(
        "- `dip_lightning.metrics.psnr`: float images in [0, 1], the output clamped to [0, 1], MSE over all "
        "channels and pixels, data_range=1, as the reference. The baselines are scored with the same formula "
        "(`dip_lightning.baselines.psnr`)."
    )
    if table.kind == "sr":
        out.append(
            "- SR: `psnr_y_shaved`: Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255, i.e. studio range "
            "[16/255, 235/255] (OpenCV's full-range Y x 219/255 + 16/255, as REFERENCE.md), on the DIP output "
            f"and the ground truth, with {SR_SHAVE} pixels shaved on every side at every factor, as "
            "REFERENCE.md says the paper's script does (`task.shave`)."
            " LR: PIL Lanczos (antialiased) resize of the HR crop, through 8 bits; the bicubic baseline "
            "upsamples that same LR (the task's `psnr_observed` equals the Bicubic column)."
        )
    if table.kind == "inpaint":
        out.append(
            "- Inpainting: PSNR over the whole image (known and missing pixels), grayscale; the mask is "
            "`input != 0` (REFERENCE.md), written as mask files beside the sweep and passed as data.mask."
        )
    if table.kind == "denoise":
        out.append(
            "- Denoising: the paper's own noisy inputs (noisy_sigma25/) are restored as given "
            "(data.observed) and scored against the ground truths (data.image); nothing is re-simulated."
        )
    return out


# --------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help=f"one of {', '.join(TABLES)}")
    parser.add_argument("--mode", default="quick", help="quick | full")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the benchmark images (default ../shared/data)")
    parser.add_argument("--iterations", type=int, default=None, help="override the mode's number of iterations")
    parser.add_argument("--images", default=None, help="comma-separated image stems (default: all of the table)")
    parser.add_argument("--device", default=None, help="cpu | gpu (default: gpu when CUDA is available)")
    parser.add_argument("--sweep-dir", default=None, help="score an existing sweep instead of running DIP")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where the result .md and .png go")
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="leave out the classical baselines that take seconds per image (BM3D, NLM, biharmonic)",
    )
    parser.add_argument("overrides", nargs="*", help="extra dip-run overrides (key=value), appended")
    args = parser.parse_args(argv)
    args.invocation = shlex.join(
        ["python", "experiments/paper/reproduce.py", *(argv if argv is not None else sys.argv[1:])]
    )
    if args.table not in TABLES:
        fail(f"TABLE={args.table!r} is not known; expected one of {', '.join(TABLES)}.")
    if args.mode not in MODES:
        fail(
            f"MODE={args.mode!r} is not known; expected quick (centre crops, minutes on a CPU) or full (the "
            "paper's protocol, GPU work)."
        )
    table = TABLES[args.table]
    data = Path(args.data).expanduser().resolve()
    if not (data / table.folder).is_dir():
        fail(
            f"DATA={args.data!r}: {data / table.folder} does not exist; expected the benchmark images folder "
            f"(../shared/data, holding {table.folder}/; see REFERENCE.md)."
        )
    stems = table.stems(data)
    if not stems:
        fail(f"no ground truths {table.gt.format(stem='*')} under {data / table.folder}.")
    if args.images:
        wanted = args.images.split(",")
        unknown = [s for s in wanted if s not in stems]
        if unknown:
            fail(f"--images {','.join(unknown)} not in {args.table}; expected some of {','.join(stems)}.")
        stems = wanted
    iterations = args.iterations or (table.quick_iterations if args.mode == "quick" else table.full_iterations)
    if args.device is None:
        import torch

        args.device = "gpu" if torch.cuda.is_available() else "cpu"

    if args.mode == "full" and args.device == "cpu" and not args.sweep_dir:
        print(
            f"warning: MODE=full on a CPU: skip128x5 takes seconds per step at 512 px, so {table.name} takes "
            "hours to days here (README, Results); it is GPU work.",
            file=sys.stderr,
        )
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES, HYDRA_FULL_ERROR="1")
    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir).resolve()
        if not sweep_dir.is_dir():
            fail(f"--sweep-dir {args.sweep_dir!r} does not exist; expected a finished dip-run -m sweep folder.")
        cmd = (
            json.loads((sweep_dir / "command.json").read_text())["command"]
            if (sweep_dir / "command.json").exists()
            else ["(unknown)"]
        )
        wall = (
            json.loads((sweep_dir / "command.json").read_text()).get("wall_seconds")
            if (sweep_dir / "command.json").exists()
            else None
        )
    else:
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        sweep_dir = RUNS_DIR / f"{table.name}-{args.mode}" / stamp
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if table.kind == "inpaint":
            write_masks(table, data, stems, sweep_dir / "masks")
        cmd = dip_command(table, args.mode, data, stems, sweep_dir, iterations, args.device, args.overrides)
        start = time.perf_counter()
        rc = run_logged(cmd, sweep_dir / "log.txt", env)
        wall = time.perf_counter() - start
        (sweep_dir / "command.json").write_text(
            json.dumps({"command": cmd, "wall_seconds": wall, "rc": rc, "code": code_version()})
        )
        if rc != 0:
            print(f"warning: dip-run -m exited with {rc}; see {sweep_dir / 'log.txt'}", file=sys.stderr)
    info = json.loads((sweep_dir / "command.json").read_text()) if (sweep_dir / "command.json").exists() else {}
    args.sweep_code = info.get("code")
    note = gather(sweep_dir, sweep_dir / "log.txt", env)
    jobs = read_jobs(table, sweep_dir)
    report, rows = build_report(table, args.mode, args, jobs, stems, cmd, note, wall, data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / f"{table.name}-{args.mode}.md", out / f"{table.name}-{args.mode}.png"
    write_figure(png, table, rows)
    report += f"\n![input / DIP / best baseline / ground truth]({png.name})\n"
    md.write_text(report)
    print(report)
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
