"""GT-free DIP recipes against BM3D and ZS-N2N: what `dip-run data.observed=noisy.png` should run by default.

A recipe is a set of dip-run overrides, run as `ensemble=N` (seeds 0..N-1, each member stopped by the discrepancy
rule: no ground truth decides anything; the ground truth only scores). One ensemble run gives the recipe's single
run (member seed 0, the same bits as a run alone), its ensembles of 2 and N members (the first members' results
averaged) and other fusions of the same members (their pixel median), so each row costs its members' runs once.

Cases (128 px centre crops of denoise9's nine images):
- denoise: the paper's sigma=25 noisy inputs (denoise9/noisy_sigma25);
- correlated: spatially correlated Gaussian noise of std 15 per pixel (bench_early_stopping.correlated_observation,
  the same files that benchmark makes).
Baselines on the same crops: BM3D with the noise level estimated from the input (what a user without ground truth
runs; scikit-image's wavelet estimate) and with the true level (labelled), and ZS-N2N (--zs-n2n; 2 min per image).

Runs are kept under --out (a folder with metrics.json is not run again): stop and continue at will; --tables-only
rebuilds the tables from what has finished.

    python experiments/bench_gt_free_recipe.py [--recipes plain,self_guided] [--cases denoise,correlated]
        [--members 4] [--workers 2] [--zs-n2n] [--data ../shared/data]
    python experiments/bench_gt_free_recipe.py --device cuda --workers 1 --members 8   # a GPU: ensemble=auto's row

The recipes' values were searched on other images than these nine (`conf/hparams_search/gt_free.yaml`, an Optuna
study through dip-run's own sweeper; `--search` runs it on set14 crops that denoise9 does not hold).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_early_stopping import CORRELATED_SIGMA, correlated_observation  # noqa: E402

# DIP-SURE's overrides, which its recipes share: its exponential average at 1000 iterations, as first measured
SURE_BASE = ["callbacks=default", "regularizer=sure", "net.input_depth=3"]
SURE = [*SURE_BASE, "iterations=1000", "regularizer.average_from=null"]


def widths(channels: int, scales: int) -> list[str]:
    """The overrides of a skip net with `scales` scales of `channels` channels (skip connections of 4, as skip's)."""
    return [
        f"net.num_channels_{k}=[{','.join([str(n)] * scales)}]"
        for k, n in (("down", channels), ("up", channels), ("skip", 4))
    ]


# name -> (what it is, its overrides); every recipe also gets COMMON. Self-guided DIP fits the observation within a
# few hundred iterations whatever it does after (z starts at the observation), so the discrepancy rule stops its
# members at iterations 94-229 (F16: 30.05 dB for 4 members, against 31.05 for plain DIP's): its recipe is a fixed
# iteration count, its own averaged last iterate.
RECIPES = {
    "plain": ("DIP (skip_small), discrepancy rule", ["callbacks=discrepancy"]),
    "self_guided": (
        "self-guided DIP, its last averaged iterate at the iteration cap (no rule)",
        ["callbacks=default", "regularizer=self_guided", "net.input_depth=3", "task.backtracking=false"],
    ),
    "tv": ("DIP + TV, discrepancy rule", ["callbacks=discrepancy", "regularizer=tv"]),
    # DIP-SURE: the noisy image as input, Stein's risk estimate as the loss (sigma estimated from the input), its
    # averaged iterate at a fixed count. On set14's flowers (128 px, sigma 25) with the input jitter at sigma (its
    # default) the averaged output peaked at 900-1100 iterations (27.78 dB) and held to 1400 (27.70); at half sigma
    # it peaked lower (27.69 at 700) and fell apart after 1200; barbara's peaked at 800
    "sure": (
        "DIP-SURE (skip_small, the noisy image as input), its averaged iterate at 1000 iterations (no rule)",
        SURE,
    ),
    # its outputs' plain mean from iteration 300 on (regularizer.average_from) in place of the exponential average,
    # and 1500 iterations: set on set5's baby, bird, head, woman and set14's barbara, flowers, man, monarch (128 px,
    # sigma 25, 2 seeds; experiments/RESULTS.md), never on the images the table reports
    "sure_tail": (
        "DIP-SURE, the plain mean of its outputs from iteration 300 to 1500 (no rule)",
        [*SURE_BASE, "iterations=1500", "regularizer.average_from=300"],
    ),
    # the net's width and depth under DIP-SURE: skip_small's 32 channels per scale against 64 and 128 (the paper's
    # skip128x5 widths), and 3 scales instead of 5 (at 128 px the fifth scale is 4 px across). 64 channels cost about
    # 4x skip_small's multiply-adds, 128 about 16x: GPU rows (experiments/gpu_reports/NEXT.md)
    "sure_skip64": ("DIP-SURE, 64 channels per scale", [*SURE, *widths(64, 5)]),
    "sure_skip128": ("DIP-SURE, 128 channels per scale (skip128x5's widths)", [*SURE, *widths(128, 5)]),
    "sure_depth3": ("DIP-SURE, 3 scales of 32 channels", [*SURE, *widths(32, 3)]),
    # the best trial of `--search` (6 trials of conf/hparams_search/gt_free.yaml on set14's barbara and flowers,
    # 29.15 dB there against 29.00 for the task's defaults): the learning rate and the input jitter
    "tuned": (
        "DIP (skip_small), discrepancy rule, the search's values",
        ["callbacks=discrepancy", "optimizer.lr=0.0186", "task.reg_noise_std=0.037"],
    ),
}
# recipes for white noise only: regularizer=sure refuses noise its estimate finds correlated (the correlated case)
WHITE_NOISE_ONLY = {"sure", "sure_tail", "sure_skip64", "sure_skip128", "sure_depth3"}
COMMON = ["task=denoising", "net=skip_small", "chunk=100", "logger=none"]
CASES = {"denoise": 25.0, "correlated": CORRELATED_SIGMA}  # case -> the true noise std per pixel (0-255)
# set14 images denoise9 does not hold (its baboon and lenna are denoise9's baboon and lena): the search's images
TUNING = ("barbara", "flowers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=os.environ.get("DIP_DATA_ROOT", str(HERE.parent.parent / "shared" / "data")),
        help="folder holding denoise9/ and set14/ (default: ../shared/data)",
    )
    p.add_argument("--out", default=str(HERE / "gt_free_runs"), help="where the runs are kept (git-ignored)")
    p.add_argument("--recipes", default="plain,self_guided", help=f"comma-separated, of {','.join(RECIPES)}")
    p.add_argument("--cases", default="denoise,correlated", help=f"comma-separated, of {','.join(CASES)}")
    p.add_argument("--members", type=int, default=4, help="ensemble members per recipe (rows: 1, 2, N)")
    p.add_argument("--iterations", type=int, default=2000, help="each member's cap (the rule stops it earlier)")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--images", type=int, default=9, help="the first N denoise9 images")
    p.add_argument("--set", action="append", default=[], help="recipe=override: one more override for a recipe")
    p.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--device", default="cpu", help="cpu | cuda (a GPU: --workers 1, the members in one pack)")
    p.add_argument("--zs-n2n", action="store_true", help="also ZS-N2N on every input (about 2 min per image)")
    p.add_argument("--tables-only", action="store_true")
    p.add_argument("--no-record", action="store_true", help="print the tables without writing RESULTS.md")
    p.add_argument("--search", action="store_true", help="run the Optuna study on set14 crops instead")
    p.add_argument("--trials", type=int, default=8, help="--search: Optuna trials")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- the inputs
def inputs(args) -> dict[str, list[tuple[str, Path, Path]]]:
    """case -> [(image name, ground truth, observation)]."""
    d9, out = Path(args.data) / "denoise9", Path(args.out)
    gts = sorted(d9.glob("*_GT.png"))[: args.images]
    if not gts:
        raise SystemExit(f"no *_GT.png images in {d9}; pass --data <folder holding denoise9/>")
    found = {}
    for case in args.cases.split(","):
        if case == "denoise":
            found[case] = [(g.name[:-7], g, d9 / "noisy_sigma25" / f"{g.name[:-7]}_noisy.png") for g in gts]
        elif case == "correlated":  # the seeds bench_early_stopping uses (the image's index), so the same files
            found[case] = [
                (g.name[:-7], g, correlated_observation(g, out / "correlated_inputs" / f"{g.name[:-7]}.png", k))
                for k, g in enumerate(gts)
            ]
        else:
            raise SystemExit(f"unknown case {case!r}; expected some of {', '.join(CASES)}")
    return found


def recipe_overrides(args, recipe: str) -> list[str]:
    extra = [s.split("=", 1)[1] for s in args.set if s.split("=", 1)[0] == recipe]
    device = ["cpu_threads=1"] if args.device == "cpu" else ["cpu_threads=null"]
    device.append(f"trainer.accelerator={args.device}")
    own = [*RECIPES[recipe][1], *extra]
    own_cap = any(o.startswith("iterations=") for o in own)  # a recipe's own cap wins over --iterations
    cap = [] if own_cap else [f"iterations={args.iterations}"]
    return [*COMMON, *device, *own, f"data.crop={args.crop}", *cap]


def jobs(args, found) -> list[dict]:
    out, todo = Path(args.out), []
    for case, items in found.items():
        for name, gt, noisy in items:
            for recipe in args.recipes.split(","):
                if recipe not in RECIPES:
                    raise SystemExit(f"unknown recipe {recipe!r}; expected some of {', '.join(RECIPES)}")
                if recipe in WHITE_NOISE_ONLY and case != "denoise":
                    continue
                folder = run_folder(out, case, recipe, name, args.members)
                smaller = [run_folder(out, case, recipe, name, k) for k in range(args.members - 1, 1, -1)]
                earlier = next((f for f in smaller if (f / "metrics.json").is_file()), None)
                ovr = [
                    *recipe_overrides(args, recipe),
                    f"data.image={gt}",
                    f"data.observed={noisy}",
                    f"ensemble={args.members}",
                    "seed=0",
                    # a stopped benchmark goes on (finished members kept); a larger ensemble reuses a smaller one's
                    f"resume={earlier}" if earlier is not None and not folder.exists() else "resume=auto",
                ]
                todo.append(dict(kind="dip", case=case, image=name, recipe=recipe, overrides=ovr, dir=str(folder)))
            todo.append(dict(kind="bm3d", case=case, image=name, gt=str(gt), noisy=str(noisy),
                             dir=str(out / case / "bm3d" / name)))  # fmt: skip
            if args.zs_n2n:
                todo.append(dict(kind="zs_n2n", case=case, image=name, gt=str(gt), noisy=str(noisy),
                                 dir=str(out / case / "zs_n2n" / name)))  # fmt: skip
    return todo


def run_folder(out: Path, case: str, recipe: str, image: str, members: int) -> Path:
    """Where a recipe's ensemble of `members` seeds runs (4, the default: <case>/<recipe>/<image>)."""
    return out / case / (recipe if members == 4 else f"{recipe}_x{members}") / image


# ----------------------------------------------------------------------------------------------------- the runs
def crops(job: dict, crop: int):
    """The ground truth and the observation as a DIP run sees them (data.crop's centre crop), (H, W, C) arrays."""
    from dip_lightning.data.io import read_image

    return [read_image(job[k], crop=(crop, crop))[0].permute(1, 2, 0).numpy() for k in ("gt", "noisy")]


def run_job(job: dict, crop: int) -> dict:
    """One job in a worker process; writes and returns its metrics.json."""
    import torch

    from dip_lightning.data.io import write_json

    torch.set_num_threads(1)
    if job["kind"] == "dip":
        from _harness import run_config

        return run_config(job["overrides"], job["dir"])
    from dip_lightning import baselines as B

    clean, observed = crops(job, crop)
    if job["kind"] == "bm3d":
        estimated = B.estimate_sigma(observed)
        est, true = B.bm3d_denoise(observed, estimated), B.bm3d_denoise(observed, CASES[job["case"]])
        metrics = {
            "psnr_estimated": B.psnr(est.image, clean),
            "sigma_estimated": estimated,
            "seconds_estimated": est.seconds,
            "psnr_true": B.psnr(true.image, clean),
            "seconds_true": true.seconds,
        }
    else:
        result = B.zs_n2n_denoise(observed, seed=0, threads=1)
        metrics = {"psnr": B.psnr(result.image, clean), "seconds": result.seconds}
    metrics["psnr_observed"] = B.psnr(observed, clean)
    Path(job["dir"]).mkdir(parents=True, exist_ok=True)
    write_json(Path(job["dir"]) / "metrics.json", metrics)
    return metrics


def done(job: dict) -> dict | None:
    path = Path(job["dir"]) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------------ the fusions
def fusions(run_dir: Path, members: int) -> dict[str, float]:
    """The PSNR of each fusion of the members' results (restored.png as written, 8-bit), against ground_truth.png:
    `1` the first member alone, `mean k` the mean of the first k, `median k` their pixel median."""
    import torch

    from dip_lightning.baselines import psnr
    from dip_lightning.data.io import read_image

    clean = read_image(run_dir / "ground_truth.png")[0].permute(1, 2, 0).numpy()
    folders = [run_dir] if members == 1 else [run_dir / "members" / f"seed_{s}" for s in range(members)]
    images = [read_image(f / "restored.png")[0] for f in folders]  # ensemble=1: the run itself, seed 0

    def score(t: torch.Tensor) -> float:
        return psnr((t * 255).round().div(255).permute(1, 2, 0).numpy(), clean)  # as it would be written

    out = {"1": score(images[0])}
    for k in sorted({2, 4, members}):
        if 2 <= k <= members:
            out[f"mean {k}"] = score(torch.stack(images[:k]).mean(0))
    for k in sorted({4, members}):
        if 3 <= k <= members:
            out[f"median {k}"] = score(torch.stack(images[:k]).median(0).values)
    return out


# ------------------------------------------------------------------------------------------------- the tables
def largest_ensemble(out: Path, case: str, recipe: str, image: str) -> Path | None:
    """The finished run of `recipe` on `image` with the most seeds (its members give every smaller row)."""
    found = [f for f in (out / case).glob(f"{recipe}*/{image}") if (f / "metrics.json").is_file()]
    found = [f for f in found if f.parent.name == recipe or f.parent.name.startswith(f"{recipe}_x")]
    return max(found, key=lambda f: json.loads((f / "metrics.json").read_text()).get("ensemble", 1), default=None)


def tables(args, todo: list[dict]) -> str:
    results = {(j["case"], j["kind"], j.get("recipe"), j["image"]): (j, done(j)) for j in todo}
    lines = []
    for case in args.cases.split(","):
        names = sorted({j["image"] for j in todo if j["case"] == case})
        columns: dict[str, dict[str, float]] = {}  # column -> image -> PSNR
        seconds: dict[str, list[float]] = {}
        for name in names:
            _, bm = results.get((case, "bm3d", None, name), (None, None))
            if bm:
                columns.setdefault("input", {})[name] = bm["psnr_observed"]
                columns.setdefault("BM3D (sigma estimated)", {})[name] = bm["psnr_estimated"]
                columns.setdefault("BM3D (sigma true)", {})[name] = bm["psnr_true"]
                seconds.setdefault("BM3D (sigma estimated)", []).append(bm["seconds_estimated"])
            _, zs = results.get((case, "zs_n2n", None, name), (None, None))
            if zs:
                columns.setdefault("ZS-N2N", {})[name] = zs["psnr"]
                seconds.setdefault("ZS-N2N", []).append(zs["seconds"])
            for recipe in args.recipes.split(","):
                folder = largest_ensemble(Path(args.out), case, recipe, name)
                if folder is None:
                    continue
                m = json.loads((folder / "metrics.json").read_text())
                members = m.get("ensemble", 1)  # an ensemble=1 run's metrics.json is a run's: no ensemble key
                per_member = m["seconds"] / members
                for fusion, value in fusions(folder, members).items():
                    col = f"{recipe} x{fusion}" if fusion == "1" else f"{recipe} {fusion}"
                    columns.setdefault(col, {})[name] = value
                    k = 1 if fusion == "1" else int(fusion.split()[-1])
                    seconds.setdefault(col, []).append(per_member * k)
        if not columns:
            continue
        cols = list(columns)
        lines += [f"### {case} (sigma {CASES[case]:g}, {args.crop} px crops)", ""]
        lines += ["| image | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for name in names:
            cells = [f"{columns[c][name]:.2f}" if name in columns[c] else "" for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        full = [c for c in cols if len(columns[c]) == len(names)]
        means = [f"**{statistics.mean(columns[c].values()):.2f}**" if c in full else "" for c in cols]
        lines.append("| **mean** | " + " | ".join(means) + " |")
        bm3d = columns.get("BM3D (sigma estimated)", {})
        ahead = [
            f"{sum(columns[c][n] > bm3d[n] for n in names if n in bm3d and n in columns[c])}/{len(names)}"
            if c in full and c != "input"
            else ""
            for c in cols
        ]
        lines.append("| ahead of BM3D (est.) | " + " | ".join(ahead) + " |")
        times = [f"{statistics.mean(seconds[c]):.0f}" if c in seconds else "" for c in cols]
        lines.append("| s per image | " + " | ".join(times) + " |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the search
def search(args) -> None:
    """The Optuna study of conf/hparams_search/gt_free.yaml on 128 px crops of set14 images denoise9 does not hold
    (noise simulated at sigma 25, task.noise_seed fixed), through dip-run's own sweeper; prints its best trial."""
    folder = Path(args.out) / "tuning_images"
    folder.mkdir(parents=True, exist_ok=True)
    for name in TUNING:
        link = folder / f"{name}.bmp"
        if not link.exists():
            link.symlink_to((Path(args.data) / "set14" / f"{name}.bmp").resolve())
    sweep = Path(args.out) / "search"
    cmd = [
        sys.executable,
        "-m",
        "dip_lightning.train",
        "hparams_search=gt_free",
        f"data.image={folder}",
        f"data.crop={args.crop}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweep.dir={sweep}",
        "launcher=joblib",
        f"hydra.launcher.n_jobs={args.workers}",
        *(["resume=auto"] if sweep.exists() else []),
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    best = sweep / "optimization_results.yaml"
    if best.exists():
        print(best.read_text())
    # the task's defaults on the same images, as the study ran them: what the best trial is compared with
    reference = Path(args.out) / "search_reference"
    fixed = ["task=denoising", "net=skip_small", "callbacks=discrepancy", "logger=none", "iterations=2000"]
    fixed += ["cpu_threads=1", "chunk=100", "task.noise_seed=0"]  # conf/hparams_search/gt_free.yaml's, unsearched
    cmd = [*cmd[:3], "-m", *fixed, *cmd[4:6], f"hydra.sweep.dir={reference}", *cmd[8:10]]
    subprocess.run(cmd + (["resume=auto"] if reference.exists() else []), check=False)
    from dip_lightning.run_metrics import result_psnr

    values = [result_psnr(json.loads(m.read_text())) for m in sorted(reference.glob("*/metrics.json"))]
    if values:
        print(f"the task's defaults on the same images: {statistics.mean(values):.3f} dB ({len(values)} images)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.search:
        search(args)
        return
    todo = jobs(args, inputs(args))
    pending = [j for j in todo if done(j) is None]
    if pending and not args.tables_only:
        print(f"{len(pending)} jobs to run ({len(todo) - len(pending)} done), {args.workers} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_job, j, args.crop): j for j in pending}
            for f in as_completed(futures):
                j = futures[f]
                m = f.result()
                shown = m.get("psnr_ensemble", m.get("psnr", m.get("psnr_estimated", m.get("error"))))
                print(f"{j['case']} {j.get('recipe', j['kind'])} {j['image']}: {shown}", flush=True)
    table = tables(args, todo)
    from _record import machine, record

    recipes = "; ".join(
        f"`{r}`: {RECIPES[r][0]} ({' '.join(recipe_overrides(args, r))})" for r in args.recipes.split(",")
    )
    text = "\n".join(
        [
            "## GT-free recipes against BM3D and ZS-N2N (`experiments/bench_gt_free_recipe.py`)",
            "",
            f"Machine: {machine()}; one thread per run, {args.workers} runs at a time. Command: `python "
            f"experiments/bench_gt_free_recipe.py --recipes {args.recipes} --cases {args.cases} --members "
            f"{args.members}{' --zs-n2n' if args.zs_n2n else ''}` (`--tables-only`: the runs under --out). Recipes: "
            f"{recipes}. Each recipe's row comes from its largest finished ensemble per image (an `ensemble=N` run): "
            "`x1` is its member seed 0 (a single run), `mean k` the mean of members 0..k-1, `median k` their pixel "
            "median (restored.png as written, 8-bit). The discrepancy rule stops each member of a recipe that has it; "
            "the others run to their recipe's iteration count; the ground truth only scores. BM3D (sigma "
            "estimated): scikit-image's wavelet "
            "estimate of the input's noise level; (sigma true): the level the noise was made with. PSNR in dB; "
            "s per image: the DIP loop's seconds (a k-member row: k members' time) or the baseline's.",
            "",
            table,
        ]
    )
    print(text)
    if not args.no_record:
        record("bench_gt_free_recipe", text)


if __name__ == "__main__":
    main()
