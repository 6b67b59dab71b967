"""Score a collected sweep: one row per image with the DIP columns (each job's metrics.json and curves.csv), the
classical baselines on the same inputs (loaded with the jobs' own crop and size multiple), the means, and the gaps
to the paper's numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dip_lightning import baselines as B
from dip_lightning import history

from .collect import Job, Protocol, Sweep
from .tables import INPAINT_NAMES, INPAINT_PAPER, Table


def mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(vals) if vals else None


def load_inputs(table: Table, data: Path, stem: str, protocol: Protocol, job: Job | None) -> dict[str, np.ndarray]:
    """The ground truth and the observation exactly as the DIP job saw them (the framework's loader, the jobs'
    crop and size multiple); SR: the LR image a finished job fitted (its observed.png), else the paper's LR."""
    from dip_lightning.data.datamodule import SingleImageDataModule
    from dip_lightning.data.io import read_image

    dm = SingleImageDataModule(
        image=f"{table.folder}/{table.gt.format(stem=stem)}",
        observed=f"{table.folder}/{table.observed.format(stem=stem)}" if table.observed else None,
        root=str(data),
        crop=protocol.crop,
    )
    loaded = dm.load(protocol.size_multiple, table.factor if table.kind == "sr" else 1, protocol.min_size)
    clean = B.as_float_image(loaded.clean.numpy())
    if table.kind != "sr":
        return {"clean": clean, "observed": B.as_float_image(loaded.observed.numpy())}
    if job is not None and job.metrics is not None:
        return {"clean": clean, "observed": B.as_float_image(read_image(job.dir / "observed.png").numpy())}
    return {"clean": clean, "observed": B.make_lr(clean, table.factor)}


# the baselines of each kind of table, by the name --baselines-only takes; "slow": seconds per image on a CPU
# (left out by --no-baselines); ZS-N2N, a net fitted per image like DIP, runs on the table's device unless
# --no-zs-n2n
BASELINES = {
    "denoise": {"bm3d": "slow", "nlm": "slow", "zs-n2n": "net"},
    "sr": {"bicubic": "fast", "nearest": "fast"},
    "inpaint": {"biharmonic": "slow"},
}


@dataclass
class BaselineOptions:
    """Which baselines run (None: the table's all, as `slow` and `zs_n2n` allow) and where ZS-N2N runs."""

    slow: bool = True
    zs_n2n: bool = False
    which: list[str] | None = None  # names of BASELINES[kind]
    device: str | None = None  # ZS-N2N's: cpu (None) or gpu
    threads: int | None = None  # ZS-N2N's torch CPU threads (None: torch's setting)

    def runs(self, kind: str, name: str) -> bool:
        if self.which is not None:
            return name in self.which
        group = BASELINES[kind][name]
        return group == "fast" or (group == "slow" and self.slow) or (group == "net" and self.zs_n2n)


def run_baselines(
    table: Table, inputs: dict[str, np.ndarray], shave: int | None, slow: bool = True, options=None
) -> list[tuple[str, float, float, np.ndarray]]:
    """(name, PSNR, seconds, image) of each classical baseline on the same input; `slow=False` leaves out those
    that take seconds per image (BM3D, NLM, biharmonic), e.g. on a GPU machine whose time is counted; `options`
    (a BaselineOptions) says which run, ZS-N2N included, and where."""
    opts = options or BaselineOptions(slow=slow)
    clean, observed = inputs["clean"], inputs["observed"]
    runs = lambda name: opts.runs(table.kind, name)  # noqa: E731
    results = []
    if table.kind == "denoise":
        if runs("bm3d"):
            results.append(B.bm3d_denoise(observed, 25))
        if runs("nlm"):
            results += [B.nlm_denoise(observed, 25), B.nlm_denoise(observed)]
        if runs("zs-n2n"):  # the paper's 2000 iterations; needs no noise level
            results.append(B.zs_n2n_denoise(observed, device=opts.device, threads=opts.threads))
        return [(r.name, B.psnr(r.image, clean), r.seconds, r.image) for r in results]
    if table.kind == "sr":
        results = [B.upsample(observed, table.factor, m) for m in ("bicubic", "nearest") if runs(m)]
        return [(r.name, B.psnr_y_shaved(r.image, clean, shave), r.seconds, r.image) for r in results]
    if runs("biharmonic"):
        results.append(B.biharmonic_inpaint(observed))
    return [(r.name, B.psnr(r.image, clean), r.seconds, r.image) for r in results]


def baseline_rows(
    table: Table, data: Path, stems: list[str], protocol: Protocol, options: BaselineOptions, check=None
) -> list[dict]:
    """The baselines alone (no DIP sweep: reproduce.py --baselines-only) on the inputs a sweep of `protocol` would
    see: per image its stem, input PSNR and {name: (PSNR, seconds)}. `check(stem, input_psnr)`, called for every
    image before any baseline runs, may refuse the inputs (a DIPError)."""
    loaded = {stem: load_inputs(table, data, stem, protocol, None) for stem in stems}
    scored = {}
    for stem, inputs in loaded.items():
        if table.kind == "sr":  # bicubic upsampling is what the input scores
            bicubic = B.upsample(inputs["observed"], table.factor, "bicubic").image
            scored[stem] = B.psnr_y_shaved(bicubic, inputs["clean"], protocol.shave)
        else:
            scored[stem] = B.psnr(inputs["observed"], inputs["clean"])
        if check is not None:
            check(stem, scored[stem])
    rows = []
    for stem, inputs in loaded.items():
        input_psnr = scored[stem]
        base = run_baselines(table, inputs, protocol.shave, options=options)
        rows.append({"stem": stem, "input_psnr": input_psnr, "baselines": {b[0]: (b[1], b[2]) for b in base}})
        print(f"{stem}: " + ", ".join(f"{b[0]} {b[1]:.2f} dB ({b[2]:.1f} s)" for b in base), flush=True)
    return rows


def dip_scores(table: Table, job: Job) -> dict[str, float]:
    """The DIP columns: for denoising the final raw iterate, the averaged output and the best; else final, best."""
    m = job.metrics
    if table.kind == "denoise":
        return {
            "DIP final iterate": job.curves[history.PSNR_GT][-1],
            "DIP averaged": m["psnr_final"],
            "DIP best": m["psnr_best"],
        }
    out = {"DIP": m["psnr_final"], "DIP best": m["psnr_best"]}
    if "psnr_final_clean" in m:  # jitter without averaging: the result from the other final input too
        other = "clean" if m["psnr_final"] == m.get("psnr_final_jittered") else "jittered"
        out[f"DIP, {other} z"] = m[f"psnr_final_{other}"]
    return out


def ensemble_column(n: int) -> str:
    return f"DIP, {n} runs averaged"


def score_image(table: Table, data: Path, stem: str, sweep: Sweep, slow: bool, options=None) -> dict:
    """One image's row: its input's score, the baselines, the DIP columns (or why its job has none). With several
    seeds: each DIP column is the mean over the runs (one run's expected score), `runs` holds each run's main score,
    and the column 'DIP, N runs averaged' scores the pixel mean of the runs' restored images (the paper's
    "averaged over 2 runs"), written to <sweep>/ensembles/<image>.png."""
    from dip_lightning.data.io import read_image
    from dip_lightning.sweeps.ensemble import ensemble

    runs = sweep.jobs.get(stem, [])
    job = runs[0] if runs else None
    inputs = load_inputs(table, data, stem, sweep.protocol, job)
    base = run_baselines(table, inputs, sweep.protocol.shave, slow=slow, options=options)
    # SR: bicubic upsampling is what the input scores
    input_psnr = base[0][1] if table.kind == "sr" else B.psnr(inputs["observed"], inputs["clean"])
    row = {
        "stem": stem,
        "clean": inputs["clean"],
        "observed": inputs["observed"],
        "input_psnr": input_psnr,
        "baselines": {b[0]: (b[1], b[2]) for b in base},
        "base_names": [b[0] for b in base],
    }
    if base:
        best_base = max(base, key=lambda b: b[1])
        row.update(baseline_name=best_base[0], baseline_psnr=best_base[1], baseline_image=best_base[3])
    else:  # the figure's third column shows the input instead
        row.update(baseline_name="input", baseline_psnr=input_psnr, baseline_image=inputs["observed"])
    failed = next((j for j in runs if j.metrics is None), None)
    if not runs or failed is not None:
        row["error"] = failed.error if failed else "no DIP job for this image"
        return row
    per_run = [dip_scores(table, j) for j in runs]
    if table.kind == "denoise":  # the averaged output's PSNR at every iteration, over the runs
        row["curve_avg"] = [statistics.fmean(v) for v in zip(*(j.curves[history.PSNR_GT_AVG] for j in runs))]
    row["dip"] = {c: mean(r[c] for r in per_run) for c in per_run[0]}
    row["runs"] = {j.seed: j.metrics["psnr_final"] for j in runs}
    if len(runs) > 1:
        convention = runs[0].metrics.get("psnr_convention", "rgb")
        together = ensemble([j.dir for j in runs], sweep.dir / "ensembles" / f"{stem}.png", convention=convention)
        row["dip"][ensemble_column(len(runs))] = together["psnr"]
        row["members_8bit"] = together["psnr_members_mean"]  # the runs' own files, scored as the ensemble is
    m = job.metrics
    row["dip_psnr"] = mean(row["runs"].values())
    row.update(
        seconds=mean(j.metrics["seconds"] for j in runs),
        iterations=m["iterations"],
        device=m["device"],
        best_step=max(j.metrics["best_step"] for j in runs),  # 'still improving' if any run was
    )
    row["restored"] = B.as_float_image(read_image(job.dir / "restored.png").numpy())
    return row


@dataclass
class Gaps:
    """How far this run is from the paper, from its own numbers (render.py writes them out)."""

    main_col: str  # the DIP column compared with the paper's main DIP number
    paper_main: float | None
    main: float | None = None  # this run's mean minus the paper's
    ref: tuple[str, str] | None = None  # (baseline here, its name in the paper): the same method on both inputs
    inputs_effect: float | None = None  # that baseline here minus in the paper: what the inputs alone account for
    raw: float | None = None  # denoising: the final raw iterate minus the paper's DIP without averaging
    best_baseline: str | None = None
    vs_best_baseline: float | None = None
    late: list[str] = field(default_factory=list)  # images whose best iterate is in the last 10% of the run
    seed_means: dict[int, float] = field(default_factory=dict)  # several seeds: each seed's table mean (main score)
    # denoising: the images' mean averaged-output PSNR at some iterations (from the curves), and the first
    # iteration at which it reaches the paper's figure (None: not within the run)
    curve_points: dict[int, float] = field(default_factory=dict)
    reaches_paper_at: int | None = None
    ensemble: float | None = None  # 2 seeds: the runs-averaged column minus the paper's "averaged over 2 runs"
    done: int = 0  # images whose DIP job finished
    per_image: list[tuple[str, float | None, float]] = field(default_factory=list)  # inpaint11: name, here, paper


@dataclass
class Scores:
    rows: list[dict]
    dip_cols: list[str]
    base_names: list[str]
    means: dict[str, float | None]  # DIP columns
    base_means: dict[str, float | None]
    base_secs: dict[str, float | None]
    iterations: int | None
    device: str
    gaps: Gaps
    failed: list[str] = field(default_factory=list)  # images whose job failed: then no DIP means and no gaps


def gaps(table: Table, rows: list[dict], means: dict, base_means: dict, iterations: int | None) -> Gaps:
    main_col = "DIP averaged" if table.kind == "denoise" else "DIP"
    g = Gaps(main_col, table.paper.get("DIP, averaged output" if table.kind == "denoise" else "DIP"))
    ours = means.get(main_col)
    if g.paper_main is not None and ours is not None:
        g.main = ours - g.paper_main
        ref = {"denoise": ("BM3D", "CBM3D"), "sr": ("Bicubic", "Bicubic")}.get(table.kind)
        if ref and base_means.get(ref[0]) is not None and ref[1] in table.paper:
            g.ref, g.inputs_effect = ref, base_means[ref[0]] - table.paper[ref[1]]
    if table.kind == "denoise" and means.get("DIP final iterate") is not None and "DIP" in table.paper:
        g.raw = means["DIP final iterate"] - table.paper["DIP"]
    if base_means and ours is not None:
        g.best_baseline = max(base_means, key=lambda k: base_means[k] if base_means[k] is not None else -1e9)
        g.vs_best_baseline = ours - base_means[g.best_baseline]
    done = [r for r in rows if "dip" in r]
    g.done = len(done)
    seeds = sorted({seed for r in done for seed in r["runs"]})
    if len(seeds) > 1 and ours is not None:
        g.seed_means = {seed: mean(r["runs"].get(seed) for r in done) for seed in seeds}
        together, paper_two = means.get(ensemble_column(len(seeds))), table.paper.get("DIP, averaged over 2 runs")
        if len(seeds) == 2 and together is not None and paper_two is not None:
            g.ensemble = together - paper_two
    if iterations:
        g.late = [r["stem"] for r in done if r["best_step"] >= 0.9 * iterations]
    curves = [r["curve_avg"] for r in done if "curve_avg" in r]
    if curves and len(curves) == len(rows) and len({len(c) for c in curves}) == 1 and g.paper_main is not None:
        mean_curve = [statistics.fmean(v) for v in zip(*curves)]
        marks = sorted({len(mean_curve) // 2, min(table.full_iterations, len(mean_curve)), len(mean_curve)})
        g.curve_points = {k: mean_curve[k - 1] for k in marks if k > 0}
        g.reaches_paper_at = next((k + 1 for k, v in enumerate(mean_curve) if v >= g.paper_main), None)
    if table.kind == "inpaint":
        by_stem = {r["stem"]: r for r in rows}
        g.per_image = [
            (name, by_stem[stem].get("dip_psnr"), paper)
            for (name, stem), paper in zip(INPAINT_NAMES.items(), INPAINT_PAPER["DIP (paper)"])
            if stem in by_stem
        ]
    return g


def score(
    table: Table, sweep: Sweep, data: Path, stems: list[str], slow: bool = True, options: BaselineOptions | None = None
) -> Scores:
    """The table's rows and means; `options` (default: the classical baselines as `slow` says, no ZS-N2N) says
    which baselines run and where."""
    rows = [score_image(table, data, stem, sweep, slow, options) for stem in stems]
    dip_cols = list(next((r["dip"] for r in rows if "dip" in r), {}).keys())
    base_names = rows[-1]["base_names"] if rows else []
    failed = [r["stem"] for r in rows if "dip" not in r]
    # a mean over the jobs that happened to finish is not the table's: none while any failed
    means = {c: None if failed else mean(r["dip"][c] for r in rows) for c in dip_cols}
    base_means = {n: mean(r["baselines"][n][0] for r in rows) for n in base_names}
    iterations = next((r["iterations"] for r in rows if "iterations" in r), None)
    return Scores(
        rows=rows,
        dip_cols=dip_cols,
        base_names=base_names,
        means=means,
        base_means=base_means,
        base_secs={n: mean(r["baselines"][n][1] for r in rows) for n in base_names},
        iterations=iterations,
        device=next((r["device"] for r in rows if "device" in r), "n/a"),
        gaps=gaps(table, rows, means, base_means, iterations),
        failed=failed,
    )
