"""Early stopping without ground truth: every rule against the oracle, on denoising (independent and correlated
noise), super-resolution x4 and 50% restoration, plus seed ensembles of the rules' choices.

Every run goes through the framework (dip_lightning.train.run). The rules that only watch a run (ES-WMV, ES-EMV,
discrepancy) monitor one run together (stop=false: the run goes to the end, each rule's choice is frozen when it
fires, so a stopping run returns the same image); self-validation changes the run (it holds pixels out of the
loss), so it has a run of its own with the same seed. The oracle is the monitor run's psnr_best: the better of
the best raw and the best averaged iterate over the whole budget, found with the ground truth.

Runs are kept under --out (one folder each; a folder with metrics.json is not run again), so the benchmark can be
stopped and continued, and the tables are rebuilt from whatever has finished (--tables-only).

    python experiments/bench_early_stopping.py [--data ../shared/data] [--workers 2] [--cases denoise,...]

Two protocols: `quick` (net skip_small, 2000 iterations: the defaults below) and `paper` (the paper's denoising
net skip128x5 and 1800 iterations, the denoising preset's jitter, averaging and backtracking, no ensembles, no
self-validation runs: about 20 min per image per core here), each with its own runs folder and RESULTS.md section:

    python experiments/bench_early_stopping.py --protocol paper --cases denoise,correlated --images 4

ZS-N2N (dip_lightning.baselines.zs_n2n_denoise: a small net fitted to the noisy image's two half-size copies,
2000 steps, no noise level, no stopping rule) runs on the same crops of the denoising cases; its row and time per
image join those cases' tables. `--zs-n2n-only` runs just it and the seed-0 monitor runs it is compared with, and
records its own section:

    python experiments/bench_early_stopping.py --zs-n2n-only --cases denoise,correlated
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

CASES = ("denoise", "correlated", "sr", "inpaint")
# rule -> (prefix of its keys in metrics.json, which candidate, the image file its choice is saved as)
RULES = {
    "es_wmv (raw)": ("", "raw", None),
    "es_wmv (final)": ("", "final", None),
    "es_wmv": ("", "auto", "restored"),
    "es_emv (raw)": ("es_emv/", "raw", None),
    "es_emv": ("es_emv/", "auto", "es_emv"),
    "discrepancy": ("discrepancy/", "auto", "discrepancy"),
    "self_validation": ("", "auto", "restored"),  # on its own run
}
# the ensembles' rule (the best on denoise9's first seed); its further seeds run with it alone, stopping when it fires
ENSEMBLE_RULE = "discrepancy"
# each protocol's net, iteration budget, seeds and self-validation cases (flags left unset take these)
PROTOCOLS = {
    "quick": dict(net="skip_small", iterations=2000, seeds=4, self_validation="denoise,correlated,sr,inpaint"),
    "paper": dict(net="skip", iterations=1800, seeds=1, self_validation=""),
}
SECTIONS = {"quick": "bench_early_stopping", "paper": "bench_early_stopping_paper"}  # RESULTS.md sections
ZS_N2N = "zs_n2n"  # the variant of the ZS-N2N jobs; their section in RESULTS.md: bench_early_stopping_<protocol>_zs_n2n
DENOISING = ("denoise", "correlated")
CORRELATED_SIGMA, CORRELATED_BLUR = 15.0, 1.0  # 0-255 units; std (pixels) of the Gaussian that correlates the noise


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=os.environ.get("DIP_DATA_ROOT", str(HERE.parent.parent / "shared" / "data")),
        help="folder holding denoise9/, set5/, inpainting11/ (default: ../shared/data)",
    )
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="quick",
        help="quick: skip_small, 2000 iterations; paper: skip128x5, 1800 iterations, one seed, no self-validation",
    )
    p.add_argument("--out", default=None, help="where the runs are kept (git-ignored; default es_runs/<protocol>)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--iterations", type=int, default=None, help="default: the protocol's")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--net", default=None, help="default: the protocol's")
    p.add_argument("--images", type=int, default=None, help="the first N denoise9 images (default: all nine)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of the denoise9 monitor runs (the ensembles)")
    p.add_argument("--sr-images", type=int, default=5)
    p.add_argument("--inpaint-images", type=int, default=5)
    p.add_argument(
        "--self-validation",
        default=None,
        help="cases that get a self-validation run (comma-separated; '' for none; default: the protocol's)",
    )
    p.add_argument("--workers", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument(
        "--zs-n2n-only",
        action="store_true",
        help="only ZS-N2N on the denoising cases and the seed-0 monitor runs it is compared with (its own section)",
    )
    p.add_argument("--tables-only", action="store_true", help="only rebuild the tables from the finished runs")
    p.add_argument("--no-record", action="store_true", help="print the tables without writing RESULTS.md")
    args = p.parse_args()
    for key, value in PROTOCOLS[args.protocol].items():  # what the command line leaves unset
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = str(HERE / "es_runs" / args.protocol)
    return args


# ---------------------------------------------------------------------------------------------------- the jobs
def correlated_observation(gt: Path, out: Path, seed: int) -> Path:
    """gt plus Gaussian noise blurred by a Gaussian of std CORRELATED_BLUR px, scaled to CORRELATED_SIGMA per
    pixel, clipped and quantised as a camera would: spatially correlated noise of a known level."""
    import torch
    import torch.nn.functional as F

    from dip_lightning.data.io import read_image, write_image

    if out.exists():
        return out
    clean = read_image(gt)
    gen = torch.Generator().manual_seed(seed)
    white = torch.randn(clean.shape, generator=gen)
    r = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-(r**2) / (2 * CORRELATED_BLUR**2))
    kernel = g[:, None] * g[None, :]
    kernel = kernel / kernel.pow(2).sum().sqrt()  # unit gain on white noise's variance
    c = clean.shape[1]
    noise = F.conv2d(F.pad(white, (3, 3, 3, 3), mode="reflect"), kernel.expand(c, 1, 7, 7).contiguous(), groups=c)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(out, (clean + CORRELATED_SIGMA / 255.0 * noise).clamp(0, 1))
    return out


def jobs(args) -> list[dict]:
    data, out = Path(args.data), Path(args.out)
    cases = [c for c in args.cases.split(",") if c]
    sv = {c for c in args.self_validation.split(",") if c}
    images: dict[str, list[tuple[str, list[str]]]] = {}
    d9 = data / "denoise9"
    gts = sorted(d9.glob("*_GT.png"))[: args.images]
    if ("denoise" in cases or "correlated" in cases) and not gts:
        raise SystemExit(f"no *_GT.png images in {d9}; pass --data <folder holding denoise9/>")
    if "denoise" in cases:
        images["denoise"] = [
            (g.name[:-7], [f"data.image={g}", f"data.observed={d9 / 'noisy_sigma25' / (g.name[:-7] + '_noisy.png')}"])
            for g in gts
        ]
    if "correlated" in cases:
        images["correlated"] = [
            (
                g.name[:-7],
                [
                    f"data.image={g}",
                    "data.observed="
                    + str(correlated_observation(g, out / "correlated_inputs" / f"{g.name[:-7]}.png", seed=k)),
                ],
            )
            for k, g in enumerate(gts)
        ]
    if "sr" in cases:
        images["sr"] = [
            (g.name[:-7], [f"data.image={g}", "task=super_resolution", "task.factor=4"])
            for g in sorted((data / "set5").glob("*_GT.bmp"))[: args.sr_images]
        ]
    if "inpaint" in cases:
        images["inpaint"] = [
            (g.name[:-7], [f"data.image={g}", "task=restoration", "task.kept=0.5"])
            for g in sorted((data / "inpainting11").glob("*_GT.png"))[: args.inpaint_images]
        ]
    # the order results are needed in: every case's first seed, denoising's self-validation, the ensemble seeds,
    # then self-validation on the other cases
    sv_runs = [
        dict(case=c, image=n, overrides=o, variant="self_validation", seed=0)
        for c in cases
        if c in sv
        for n, o in images.get(c, [])
    ]
    todo = [dict(case=c, image=n, overrides=o, variant="monitor", seed=0) for c in cases for n, o in images.get(c, [])]
    todo += [j for j in sv_runs if j["case"] == "denoise"]
    todo += [
        dict(case="denoise", image=n, overrides=o, variant=f"{ENSEMBLE_RULE}_stop", seed=s)
        for n, o in images.get("denoise", [])
        for s in range(1, args.seeds)
    ]  # image by image: whole ensembles
    todo += [j for j in sv_runs if j["case"] != "denoise"]
    zs = [dict(case=c, image=n, overrides=o, variant=ZS_N2N, seed=0) for c in DENOISING for n, o in images.get(c, [])]
    if args.zs_n2n_only:
        todo = [j for j in todo if j["case"] in DENOISING and j["variant"] == "monitor" and j["seed"] == 0]
    todo += zs
    for j in todo:
        j["dir"] = str(out / j["case"] / j["variant"] / f"seed{j['seed']}" / j["image"])
    return todo


def overrides(job: dict, args) -> list[str]:
    common = [
        f"net={args.net}",
        f"data.crop={args.crop}",
        f"iterations={args.iterations}",
        "chunk=100",
        "logger=none",
        "cpu_threads=1",
        "callbacks.progress.log_seconds=100000",
        f"seed={job['seed']}",
    ]
    if job["variant"] == "self_validation":  # stops when it fires: the same choice, fewer iterations
        rules = ["callbacks=self_validation"]
    elif job["variant"] == f"{ENSEMBLE_RULE}_stop":  # the ensemble's further seeds: the rule alone, stopping
        rules = [f"callbacks={ENSEMBLE_RULE}"]
    else:
        emv, dis = "+callbacks.es_emv", "+callbacks.discrepancy"
        rules = [
            "callbacks=es_wmv",
            "callbacks.early_stopping.stop=false",
            f"{emv}._target_=dip_lightning.callbacks.early_stopping.ESEMV",
            f"{emv}.stop=false",
            f"{dis}._target_=dip_lightning.callbacks.discrepancy.Discrepancy",
            f"{dis}.stop=false",
        ]
    return [*common, *job["overrides"], *rules]


def run_job(job: dict, ovr: list[str]) -> dict:
    """One run in a worker process; returns its metrics (or the error)."""
    if job["variant"] == ZS_N2N:
        return run_zs_n2n(job, ovr)
    from _harness import run_config

    return run_config(ovr, job["dir"])


def run_zs_n2n(job: dict, ovr: list[str]) -> dict:
    """ZS-N2N on the crop a DIP run of the same job sees (data.image and data.observed, data.crop's centre crop),
    one CPU thread; writes its metrics.json (PSNR, seconds) and restored.png into the job's folder."""
    import numpy as np
    import torch

    from dip_lightning import baselines as B
    from dip_lightning.data.io import read_image, write_image, write_json

    torch.set_num_threads(1)
    given = dict(o.split("=", 1) for o in [*job["overrides"], *ovr] if o.startswith("data."))
    crop = int(given["data.crop"])
    clean, observed = (
        read_image(given[k], crop=(crop, crop))[0].permute(1, 2, 0).numpy() for k in ("data.image", "data.observed")
    )  # (H, W, C), as the baselines take them
    result = B.zs_n2n_denoise(observed, seed=job["seed"], threads=1)
    folder = Path(job["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    restored = np.atleast_3d(result.image).transpose(2, 0, 1)
    write_image(folder / "restored.png", torch.from_numpy(np.ascontiguousarray(restored)).float())
    metrics = {
        "psnr": B.psnr(result.image, clean),
        "psnr_observed": B.psnr(observed, clean),
        "seconds": round(result.seconds, 3),
        "wall_seconds": round(result.seconds, 3),
        "iterations": 2000,
        "device": "cpu (1 thread)",
    }
    write_json(folder / "metrics.json", metrics)
    return metrics


def read_done(job: dict) -> dict | None:
    path = Path(job["dir"]) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


# -------------------------------------------------------------------------------------------------- the tables
def rule_row(m: dict, rule: str, iterations: int) -> dict | None:
    prefix, candidate, _ = RULES[rule]
    key = f"{prefix}psnr_stop" if candidate == "auto" else f"{prefix}psnr_stop_{candidate}"
    value = m.get(key)
    if value is None:
        return None
    fired = m.get(f"{prefix}stop_iteration")
    return {
        "psnr": value,
        "step": m.get(f"{prefix}stop_step"),
        "fired": fired is not None,
        "saved": iterations - fired - 1 if fired is not None else 0,
    }


def case_tables(case: str, done: dict, args) -> str:
    names = sorted({k[1] for k in done if k[0] == case})
    rows = []
    for name in names:
        mon, sv = done.get((case, name, "monitor", 0)), done.get((case, name, "self_validation", 0))
        if not mon or "error" in mon:
            continue
        r = {
            "image": name,
            "oracle": mon["psnr_best"],
            "oracle_step": mon["best_step"],
            "final": mon["psnr_final"],
            "observed": mon["psnr_observed"],
            "sigma": mon.get("discrepancy/sigma_used"),
            "sigma_true": mon.get("discrepancy/sigma_in_observation"),
        }
        for rule in RULES:
            src = sv if rule == "self_validation" else mon
            r[rule] = rule_row(src, rule, args.iterations) if src and "error" not in src else None
        r["fixed"] = {"psnr": mon["psnr_final"], "step": args.iterations - 1, "fired": False, "saved": 0}
        zs = done.get((case, name, ZS_N2N, 0))
        r[ZS_N2N] = (
            {"psnr": zs["psnr"], "step": zs["iterations"] - 1, "fired": False, "saved": 0, "seconds": zs["seconds"]}
            if zs and "error" not in zs
            else None
        )
        r["dip_seconds"] = mon.get("wall_seconds")
        rows.append(r)
    if not rows:
        return ""
    rules = [k for k in (*RULES, "fixed", ZS_N2N) if any(r[k] for r in rows)]
    out = [
        "| rule | images | mean PSNR (dB) | mean gap to oracle (dB) | max gap (dB) | mean stop step "
        "| fired | mean iterations saved |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule in rules:
        rs = [r for r in rows if r[rule]]
        gaps = [r["oracle"] - r[rule]["psnr"] for r in rs]
        label = {
            "fixed": f"fixed {args.iterations} iterations",
            ZS_N2N: "ZS-N2N (its own net: 2000 steps, no rule)",
        }.get(rule, rule)
        out.append(
            f"| {label} | {len(rs)} | {statistics.mean(r[rule]['psnr'] for r in rs):.2f} "
            f"| {statistics.mean(gaps):.2f} | {max(gaps):.2f} "
            f"| {statistics.mean(r[rule]['step'] for r in rs):.0f} | {sum(r[rule]['fired'] for r in rs)}/"
            f"{len(rs)} | {statistics.mean(r[rule]['saved'] for r in rs):.0f} |"
        )
    out.append(
        f"| oracle (psnr_best, uses the ground truth) | {len(rows)} "
        f"| {statistics.mean(r['oracle'] for r in rows):.2f} | 0 | 0 "
        f"| {statistics.mean(r['oracle_step'] for r in rows):.0f} | | |"
    )
    head = "| image | observed | oracle (step) | " + " | ".join(rules) + " |"
    out += ["", "Per image: PSNR (stop step).", "", head, "|" + "---|" * (3 + len(rules))]
    for r in rows:
        cells = [f"{r[k]['psnr']:.2f} ({r[k]['step']})" if r[k] else "" for k in rules]
        out.append(
            f"| {r['image']} | {r['observed']:.2f} | {r['oracle']:.2f} ({r['oracle_step']}) | "
            + " | ".join(cells)
            + " |"
        )
    zs = [r for r in rows if r[ZS_N2N] and r["dip_seconds"]]
    if zs:
        out += [
            "",
            f"Time per image (1 CPU thread): ZS-N2N {statistics.mean(r[ZS_N2N]['seconds'] for r in zs):.0f} s, "
            f"DIP's run of {args.iterations} iterations {statistics.mean(r['dip_seconds'] for r in zs):.0f} s "
            f"({len(zs)} images; the runs shared the machine {args.workers} at a time). ZS-N2N is ahead of DIP's "
            f"oracle on {sum(r[ZS_N2N]['psnr'] > r['oracle'] for r in zs)} of {len(zs)} images.",
        ]
    sig = [r for r in rows if r["sigma"] is not None and r["sigma_true"] is not None]
    if sig:
        out += [
            "",
            "Noise level the discrepancy rule used (0-255; estimated from a given observation, the task's own for "
            "a simulated one) against the std of observed - ground truth: "
            + ", ".join(f"{r['image']} {r['sigma']:.1f}/{r['sigma_true']:.1f}" for r in sig)
            + ".",
        ]
    return "\n".join(out)


def ensemble_table(done: dict, args) -> str:
    """The ensemble of ENSEMBLE_RULE's choices over the seeds: seed 0's from its monitor run (<rule>.png), the
    others from runs where the rule alone stops the run (restored.png); the same choice either way."""
    from dip_lightning.data.io import read_image
    from dip_lightning.sweeps.ensemble import average, score

    seeds = list(range(args.seeds))
    if len(seeds) < 2:  # one seed is no ensemble
        return ""
    out = Path(args.out) / "denoise"
    names = sorted({k[1] for k in done if k[0] == "denoise"})

    def path(name: str, seed: int) -> Path:
        if seed == 0:
            return out / "monitor" / "seed0" / name / f"{ENSEMBLE_RULE}.png"
        return out / f"{ENSEMBLE_RULE}_stop" / f"seed{seed}" / name / "restored.png"

    full = [n for n in names if all(path(n, s).is_file() for s in seeds)]
    if not full:
        return ""
    rows = []
    for n in full:
        truth = read_image(out / "monitor" / "seed0" / n / "ground_truth.png")
        members = [score(read_image(path(n, s)), truth) for s in seeds]
        rows.append(
            {
                "image": n,
                "oracle": done[("denoise", n, "monitor", 0)]["psnr_best"],
                "single": statistics.mean(members),
                "ensemble": score(average([path(n, s) for s in seeds]), truth),
            }
        )
    lines = [
        f"{len(seeds)}-seed ensembles of {ENSEMBLE_RULE}'s choices on denoise9 ({len(full)} images with every "
        "seed finished; no ground truth used to choose or to average), against the single-run oracle "
        "(psnr_best of seed 0's run, chosen with the ground truth).",
        "",
        "| image | single-run oracle | rule, mean over seeds | rule, ensemble | ensemble - oracle |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['oracle']:.2f} | {r['single']:.2f} | {r['ensemble']:.2f} "
            f"| {r['ensemble'] - r['oracle']:+.2f} |"
        )
    mean = {k: statistics.mean(r[k] for r in rows) for k in ("oracle", "single", "ensemble")}
    lines.append(
        f"| mean | {mean['oracle']:.2f} | {mean['single']:.2f} | {mean['ensemble']:.2f} "
        f"| {mean['ensemble'] - mean['oracle']:+.2f} |"
    )
    return "\n".join(lines)


TITLES = {
    "denoise": "denoise9, sigma=25 (the paper's noisy inputs)",
    "correlated": f"denoise9 with correlated noise (white Gaussian blurred by a Gaussian of std "
    f"{CORRELATED_BLUR:g} px, {CORRELATED_SIGMA:g}/255 per pixel, clipped, 8-bit)",
    "sr": "super-resolution x4, Set5",
    "inpaint": "restoration from 50% of the pixels, inpainting11",
}


def main() -> None:
    args = parse_args()
    todo = jobs(args)
    done = {}
    pending = [j for j in todo if read_done(j) is None]
    if not args.tables_only and pending:
        print(f"{len(pending)} runs to do ({len(todo) - len(pending)} done before)", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_job, j, overrides(j, args)): j for j in pending}
            for f in as_completed(futures):
                j = futures[f]
                m = f.result()
                print(
                    json.dumps(
                        {
                            "case": j["case"],
                            "image": j["image"],
                            "variant": j["variant"],
                            "seed": j["seed"],
                            **{k: m.get(k) for k in ("psnr_best", "best_step", "psnr_stop", "stop_step", "error")},
                        }
                    ),
                    flush=True,
                )
    for j in todo:
        m = read_done(j)
        if m is not None:
            done[(j["case"], j["image"], j["variant"], j["seed"])] = m
    from _record import machine

    run_minutes = sum(m.get("wall_seconds") or 0 for m in done.values()) / 60
    only = " --zs-n2n-only" if args.zs_n2n_only else ""
    title = "ZS-N2N beside the GT-free rules" if args.zs_n2n_only else "Early stopping without ground truth"
    sections = [
        f"## {title}, {args.protocol} protocol (experiments/bench_early_stopping.py{only})\n\n"
        f"Machine: {machine()} (each run 1 thread, {args.workers} at a time). {len(done)} of {len(todo)} "
        f"runs finished, {run_minutes:.0f} min of run time in all.\n\n"
        f"Command: `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold="
        f"4294967295 python experiments/bench_early_stopping.py{only} --protocol {args.protocol} --cases {args.cases} "
        f"--workers {args.workers} --seeds {args.seeds}"
        + (f" --images {args.images}" if args.images else "")
        + f" --sr-images {args.sr_images} --inpaint-images {args.inpaint_images}` (the Makefile's malloc "
        f"setting; without it half the CPU time went to the kernel here) (defaults: "
        f"{args.crop}x{args.crop} centre crops, net={args.net}, {args.iterations} iterations, seed 0; each "
        f"task's defaults: denoising averages outputs (0.99) and backtracks, SR and restoration do neither). "
        "Rules with their published settings: ES-WMV window 100 patience 1000; ES-EMV alpha 0.1 patience "
        "1000 (scored after 100 steps); discrepancy tau 1 patience 100, sigma estimated from the given noisy "
        "inputs (denoise9) and the task's own (0) where the task simulated them (SR, restoration); self-validation "
        "10% of the pixels held out, patience 300, on its own run (stopped when it fires). `(raw)`: the raw output "
        "at the rule's step (the "
        "papers' choice); `(final)`: the net's output from the clean input with the weights of that step; "
        "without either: what the rule returns by default (`output=auto`: the averaged output at its step "
        "when averaging is on, else the final one). `fixed`: the run's own result after every iteration. "
        "Gap = oracle - rule; fired = the rule would have stopped the run; iterations saved counts from there."
    ]
    for case in CASES:
        table = case_tables(case, done, args)
        if table:
            sections.append(f"### {TITLES[case]}\n\n{table}")
    ens = ensemble_table(done, args)
    if ens:
        sections.append(f"### Seed ensembles\n\n{ens}")
    markdown = "\n\n".join(sections) + "\n"
    print(markdown)
    if not args.no_record and done:
        from _record import record

        section = SECTIONS[args.protocol] + (f"_{ZS_N2N}" if args.zs_n2n_only else "")
        print("recorded in", record(section, markdown))


if __name__ == "__main__":
    main()
