"""How DIP-SURE's result depends on how its outputs are averaged and for how long, on tuning images only.

DIP-SURE (regularizer=sure) needs no stopping rule: its result is its averaged output after a fixed number of
iterations. Which average and how many iterations were set here, on 128 px crops of set5 and set14 images that the
denoise9 table (bench_gt_free_recipe.py) does not hold, never on the images that table reports. Each run keeps, every
100 iterations, several averages of the raw outputs side by side (a probe callback, `AveragingProbe`): the task's
exponential average (task.exp_weight 0.99), a longer exponential one (0.995), and the plain mean of the outputs from
iteration 200, 300 or 500 on (what task.average_from / regularizer.average_from computes). The table gives, per
iteration count, the mean PSNR over the images of one seed's average (x1) and of the mean of two seeds' (x2), and
BM3D's with the noise level estimated, on the same noisy crops.

    python experiments/bench_sure_averaging.py             # 8 images x 2 seeds x 1500 iterations (about 25 min
                                                           # on 2 cores), then the table
    python experiments/bench_sure_averaging.py --tables-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dip_lightning.callbacks.roles import IterationHook, RunHook  # noqa: E402

# (name, path under the data folder): set5 and set14 images denoise9 does not hold (its baboon and lena are set14's)
IMAGES = (
    ("baby", "set5/baby_GT.bmp"),
    ("barbara", "set14/barbara.bmp"),
    ("head", "set5/head_GT.bmp"),
    ("flowers", "set14/flowers.bmp"),
    ("woman", "set5/woman_GT.bmp"),
    ("man", "set14/man.bmp"),
    ("bird", "set5/bird_GT.bmp"),
    ("monarch", "set14/monarch.bmp"),
)
EMAS = (0.99, 0.995)
STARTS = (200, 300, 500)
KINDS = ("task_avg", "raw", *(f"ema{w}" for w in EMAS[1:]), *(f"mean from {s}" for s in STARTS))


class AveragingProbe(IterationHook, RunHook):
    """Keeps averages of the raw outputs beside the task's and saves them, with the task's, every chunk (an
    experiment's probe: it reads the host once per chunk and is not part of a checkpoint)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.ema: list[torch.Tensor] | None = None

    def on_dip_iteration(self, task, it) -> None:
        out = it.out.detach()
        if self.ema is None:
            self.ema = [out.clone() for _ in EMAS[1:]]
            self.sums, self.counts = [torch.zeros_like(out) for _ in STARTS], [0] * len(STARTS)
        for e, w in zip(self.ema, EMAS[1:]):
            e.mul_(w).add_(out, alpha=1 - w)
        for k, start in enumerate(STARTS):
            if it.step >= start:
                self.sums[k].add_(out)
                self.counts[k] += 1

    def on_chunk_end(self, run) -> None:
        task = run.task
        self.folder.mkdir(parents=True, exist_ok=True)
        images = {"task_avg": task.out_avg, "raw": task.last_out}
        images.update({f"ema{w}": e for w, e in zip(EMAS[1:], self.ema)})
        images.update({f"mean from {s}": x / max(n, 1) for s, x, n in zip(STARTS, self.sums, self.counts)})
        arrays = {k: v.detach().clamp(0, 1).cpu().numpy()[0].astype(np.float16) for k, v in images.items()}
        np.savez(self.folder / f"it_{task.iteration}.npz", **arrays)
        if task.clean is not None and not (self.folder / "gt.npy").exists():
            np.save(self.folder / "gt.npy", task.clean.cpu().numpy()[0].astype(np.float32))


def overrides(image: Path, seed: int, folder: Path, args) -> list[str]:
    return [
        "task=denoising", "net=skip_small", "chunk=100", "logger=none", "cpu_threads=1", "trainer.accelerator=cpu",
        "callbacks=default", "regularizer=sure", "net.input_depth=3", "regularizer.average_from=null",
        f"iterations={args.iterations}", "ensemble=1", f"seed={seed}", f"data.image={image}", f"data.crop={args.crop}",
        "+callbacks.probe._target_=bench_sure_averaging.AveragingProbe", f"+callbacks.probe.folder={folder / 'avg'}",
    ]  # fmt: skip


def run_one(job) -> None:
    from _harness import run_config

    torch.set_num_threads(1)
    image, seed, folder, args = job
    run_config(overrides(image, seed, folder, args), folder)


def bm3d_estimated(folder: Path) -> float:
    """BM3D (noise level estimated) on the run's observed.png, scored against its ground truth."""
    from PIL import Image

    from dip_lightning import baselines as B

    cached = folder / "bm3d.json"
    if cached.exists():
        return json.loads(cached.read_text())["psnr_estimated"]
    observed = np.asarray(Image.open(folder / "observed.png"), dtype=np.float32) / 255
    clean = np.load(folder / "avg" / "gt.npy").transpose(1, 2, 0)
    value = B.psnr(B.bm3d_denoise(observed, B.estimate_sigma(observed)).image, clean)
    cached.write_text(json.dumps({"psnr_estimated": value}))
    return value


def psnr(image: np.ndarray, clean: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((np.clip(image.astype(np.float64), 0, 1) - clean) ** 2)))


def table(args) -> str:
    out = Path(args.out)
    names = [n for n, _ in IMAGES if all((out / f"{n}_s{s}" / "metrics.json").exists() for s in (0, 1))]
    steps = list(range(100, args.iterations + 1, 100))
    rows, bm3d = {}, []
    for name in names:
        clean = np.load(out / f"{name}_s0" / "avg" / "gt.npy")
        saved = [[np.load(out / f"{name}_s{s}" / "avg" / f"it_{t}.npz") for t in steps] for s in (0, 1)]
        for kind in KINDS:
            pairs = [(saved[0][i][kind].astype(np.float64), saved[1][i][kind]) for i in range(len(steps))]
            one = [(psnr(a, clean) + psnr(b, clean)) / 2 for a, b in pairs]
            two = [psnr((a + b) / 2, clean) for a, b in pairs]
            rows.setdefault((kind, "x1"), []).append(one)
            rows.setdefault((kind, "x2"), []).append(two)
        bm3d.append(bm3d_estimated(out / f"{name}_s0"))
    if not names:
        return "no finished pair of runs under " + str(out)
    lines = [
        f"Images ({len(names)}): {', '.join(names)}; BM3D (sigma estimated) on the same crops: {np.mean(bm3d):.2f} dB.",
        "",
        "| average | seeds | " + " | ".join(str(t) for t in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for (kind, seeds), values in rows.items():
        if kind == "raw" or (kind.startswith("mean from") and seeds == "x1" and kind != "mean from 300"):
            continue  # the raw output and two of the starts are kept on disk, left out of the table for its width
        start = int(kind.split()[-1]) if kind.startswith("mean from") else 0
        cells = [f"{v:.2f}" if t > start else "" for t, v in zip(steps, np.mean(values, axis=0))]
        lines.append(f"| {kind} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("DIP_DATA_ROOT", str(HERE.parent.parent / "shared" / "data")))
    p.add_argument("--out", default=str(HERE / "gt_free_runs" / "sure_averaging"), help="the runs (git-ignored)")
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tables-only", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    jobs = [
        (Path(args.data) / path, seed, out / f"{name}_s{seed}", args)
        for seed in (0, 1)
        for name, path in IMAGES
        if not (out / f"{name}_s{seed}" / "metrics.json").exists()
    ]
    if jobs and not args.tables_only:
        print(f"{len(jobs)} runs to make, {args.workers} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(run_one, jobs))
    print(table(args))


if __name__ == "__main__":
    main()
