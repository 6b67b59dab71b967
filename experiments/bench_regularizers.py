"""The regularised DIP variants against plain DIP at the same iterations: denoise9 quick and one physics preset.

    .venv-physics/bin/python experiments/bench_regularizers.py [--images F16] [--iterations 2000] [--no-physics]

Each variant (regularizer=none, tv, self_guided, aseqdip, at their conf/regularizer defaults, untuned) runs on
denoise9's quick protocol (experiments/paper/tables.py: sigma=25, 128 px centre crop, net=skip_small, jitter 1/30,
averaging 0.99, lr 0.01; backtracking on, except for self_guided and aseqdip, which refuse it as they change z) and
on experiment=physics_ct (sparse-view CT, 128 px), one torch thread, seed 0. Prints a table and records it in
experiments/RESULTS.md (section bench_regularizers) with the machine. The physics rows need deepinv (the
.venv-physics that make test builds); --no-physics leaves them out.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import machine, record  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "tv", "self_guided", "aseqdip")
DENOISE = [
    "task=denoising",
    "task.sigma=25",
    "task.reg_noise_std=0.0333",
    "task.exp_weight=0.99",
    "optimizer.lr=0.01",
    "net=skip_small",
    "data.crop=128",
]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dip_lightning.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def variant_overrides(variant: str, channels: int, backtracking: bool) -> list[str]:
    out = [f"regularizer={variant}"]
    if variant in ("self_guided", "aseqdip"):
        out += [f"net.input_depth={channels}", "task.backtracking=false"]
    elif backtracking:
        out += ["task.backtracking=true"]
    return out


def one_run(overrides: list[str], iterations: int) -> dict:
    from dip_lightning.train import run

    cfg = compose([*overrides, f"iterations={iterations}", "logger=none", "callbacks=none", "cpu_threads=1"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        m = run(cfg, Path(tmp) / "run")
        m["seconds"] = time.perf_counter() - start
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--images", default="F16", help="denoise9 stems, comma-separated (default: F16)")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--no-physics", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    folder = Path(args.data) / "denoise9"
    for stem in args.images.split(","):
        data = [
            f"data.image={folder / f'{stem}_GT.png'}",
            f"data.observed={folder / 'noisy_sigma25' / f'{stem}_noisy.png'}",
        ]
        for v in VARIANTS:
            m = one_run([*DENOISE, *data, *variant_overrides(v, 3, backtracking=True)], args.iterations)
            rows.append((f"denoise9 quick, {stem}", v, m))
            print(
                f"denoise9 {stem:8s} {v:12s} final {m['psnr_final']:.2f} best {m['psnr_best']:.2f} "
                f"({m['seconds']:.0f} s)",
                flush=True,
            )
    if not args.no_physics:
        for v in VARIANTS:
            m = one_run(["experiment=physics_ct", *variant_overrides(v, 1, backtracking=False)], args.iterations)
            rows.append(("physics_ct (30 angles, 128 px)", v, m))
            print(
                f"physics_ct {v:12s} final {m['psnr_final']:.2f} best {m['psnr_best']:.2f} baseline "
                f"{m['psnr_baseline']:.2f} ({m['seconds']:.0f} s)",
                flush=True,
            )
    lines = [
        f"Regularised DIP variants against plain DIP, {args.iterations} iterations each, seed 0, the variants at their "
        "conf/regularizer defaults (untuned: tv weight 0.01; self_guided weight 1, lr_z 0.001; aseqdip weight 1, "
        "inner_steps 2). denoise9 quick: sigma=25, 128 px crop, net=skip_small, jitter 1/30, averaging 0.99, "
        "backtracking on (off for self_guided and aseqdip, which refuse it); physics_ct as the preset. "
        f"One image per row set ({args.images}) for the CPU's sake. `python experiments/bench_regularizers.py`, "
        f"{machine()}.",
        "",
        "| case | regularizer | PSNR result (dB) | PSNR best iterate (dB) | vs plain DIP | baseline (dB) | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    plain = {case: m["psnr_final"] for case, v, m in rows if v == "none"}
    for case, v, m in rows:
        base = m.get("psnr_baseline")
        lines.append(
            f"| {case} | {v} | {m['psnr_final']:.2f} | {m['psnr_best']:.2f} | {m['psnr_final'] - plain[case]:+.2f} | "
            f"{'' if base is None else f'{base:.2f}'} | {m['seconds']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_record:
        record("bench_regularizers", "## Regularised DIP variants (bench_regularizers.py)\n\n" + table)


if __name__ == "__main__":
    main()
