"""dip-gather <sweep dir>: every job of a multirun in one table, a summary per setting and a plot.

A job folder is any folder under the sweep dir holding `.hydra/overrides.yaml`. Its row comes from `metrics.json`
(written last: the job finished), else `error.json` (the job failed; the error is listed), else it is listed as
"no metrics.json" (still running, or killed). A setting is a job's overrides minus data.image and seed: the summary
gives the mean and std of psnr_best and psnr_final over its images and seeds, and the plot its mean PSNR curve
(from each job's curves.csv). Writes results.csv, results.md, summary.csv and results.png into the sweep dir.

`--ensemble seed`: the finished jobs of one setting and image that differ only in their seed are averaged into one
image (sweeps/ensemble.py), written under ensembles/ with ensembles.md and ensembles.csv: the ensemble's PSNR
(when the jobs had a ground truth) beside its members' mean. Members that restored different observations (their
metrics.json's observation_sha256 differ) are refused before anything is written; members that recorded none are
averaged, and their row says `unverified`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

from .. import history as h
from ..data.io import atomic_write
from ..errors import DIPError
from ..history import read_curves

PER_JOB = ("data.image", "data.observed", "seed", "resume")  # what varies inside one setting
IGNORED = ("launcher", "logger", "hydra.launcher.n_jobs", "paths.data_root", "paths.output_root")  # how the jobs ran
METRICS = (
    "psnr_observed",
    "psnr_final",
    "psnr_best",
    "best_step",
    "psnr_stop",
    "stop_step",
    "stop_reason",
    "ssim_final",
    "ssim_best",
    "ssim_stop",
    "psnr_ensemble",
    "iterations",
    "seconds",
)
SUMMARY = ("psnr_best", "psnr_final", "psnr_stop", "psnr_ensemble", "ssim_best", "ssim_final", "ssim_stop")


def find_jobs(sweep_dir: Path) -> list[Path]:
    jobs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: [int(s) if s.isdigit() else s for s in p.relative_to(sweep_dir).parts])


def _override_pairs(overrides: list[str]) -> dict[str, str]:
    pairs = {}
    for o in overrides:
        key, _, value = o.partition("=")
        pairs[key.lstrip("+~")] = value
    return pairs


def read_overrides(job: Path) -> dict[str, str] | None:
    """The job's overrides as key -> value; None when the file is damaged (the job is then listed as such)."""
    try:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(overrides, list):
        return None
    return _override_pairs([str(o) for o in overrides])


def read_job(sweep_dir: Path, job: Path, common: dict[str, str]) -> dict:
    """One row; `common` (overrides every job shares) is left out of the setting's name."""
    pairs = read_overrides(job)
    if pairs is None:
        return {
            "job": str(job.relative_to(sweep_dir)),
            "setting": "?",
            "image": "",
            "seed": "",
            "status": "failed",
            "error": "unreadable .hydra/overrides.yaml (damaged)",
        }
    setting = (
        " ".join(f"{k}={v}" for k, v in pairs.items() if k not in PER_JOB and k not in IGNORED and common.get(k) != v)
        or "(all jobs)"
    )
    row = {
        "job": str(job.relative_to(sweep_dir)),
        "setting": setting,
        "image": pairs.get("data.image", "").strip("'\""),
        "seed": pairs.get("seed", ""),
        "status": "",
        "error": "",
    }
    metrics_file, error_file = job / "metrics.json", job / "error.json"
    stale = _stale(job, metrics_file, error_file)
    if stale:
        row.update(status="failed", error=stale)
    elif metrics_file.exists():
        metrics = read_json(metrics_file)
        if metrics is None:  # one damaged file must not cost the table of the whole sweep
            row.update(status="failed", error="unreadable metrics.json (not valid JSON; damaged or truncated)")
            return row
        row.update(status="ok", **{k: metrics.get(k) for k in METRICS})
        row["image"] = metrics.get("image") or row["image"]
        row["seed"] = metrics.get("seed", row["seed"])
    elif error_file.exists():
        error = read_json(error_file)
        row.update(status="failed", error=error.get("error", "?") if error else "unreadable error.json")
    else:
        row.update(status="failed", error="no metrics.json (still running, or the job died)")
    return row


def _stale(job: Path, metrics_file: Path, error_file: Path) -> str | None:
    """Why the job's metrics.json is not this job's result, if it is not: older than the job's record (Hydra writes
    .hydra/ when a job starts, metrics.json when it ends: an earlier run's), or older than its error.json (a
    later attempt failed)."""
    if not metrics_file.exists():
        return None
    when = metrics_file.stat().st_mtime_ns
    record = job / ".hydra" / "overrides.yaml"
    if record.exists() and record.stat().st_mtime_ns > when:
        return "metrics.json is older than the job's config (.hydra/): an earlier run's result, not this job's"
    if error_file.exists() and error_file.stat().st_mtime_ns > when:
        return "failed after an earlier attempt finished (error.json is newer than metrics.json)"
    return None


def read_json(path: Path) -> dict | None:
    """A JSON object file (metrics.json, error.json); None when it is missing, damaged or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == setting]
        ok = [r for r in group if r["status"] == "ok"]
        entry = {"setting": setting, "jobs": len(group), "ok": len(ok), "failed": len(group) - len(ok)}
        for key in SUMMARY:
            values = [v for v in (_num(r.get(key)) for r in ok) if v is not None]
            entry[f"{key}_mean"] = statistics.mean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            entry[f"{key}_n"] = len(values)
        out.append(entry)
    return out


def _fmt(v, key: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if key.startswith("ssim"):  # in [0, 1]: differences that matter are in the third decimal
            return f"{v:.4f}"
        return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], summary: list[dict]) -> str:
    cols = ["job", "status", "setting", "image", "seed", *METRICS, "error"]
    lines = ["## Jobs", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |" for r in rows]
    lines += [
        "",
        "## Per setting (mean ± std over images and seeds; finished jobs only)",
        "",
        "| setting | jobs | ok | failed | " + " | ".join(SUMMARY) + " |",
        "|" + "---|" * (4 + len(SUMMARY)),
    ]
    for s in summary:
        cells = [
            f"{_fmt(s[f'{k}_mean'], k)} ± {_fmt(s[f'{k}_std'], k)}" if s[f"{k}_mean"] is not None else ""
            for k in SUMMARY
        ]
        lines.append(f"| {_fmt(s['setting'])} | {s['jobs']} | {s['ok']} | {s['failed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], cols: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_curve(job: Path) -> dict[str, list[float]] | None:
    path = job / "curves.csv"
    if not path.exists():
        return None
    try:
        return read_curves(path)
    except (DIPError, ValueError, OSError, UnicodeDecodeError):  # a damaged or foreign file: no curve, not a crash
        return None


def plot(sweep_dir: Path, rows: list[dict], path: Path) -> Path | None:
    """The mean PSNR curve of each setting over its finished jobs (against the ground truth when there is one)."""
    curves: dict[str, list[dict]] = {}
    for r in rows:
        curve = read_curve(sweep_dir / r["job"]) if r["status"] == "ok" else None
        if curve and curve.get(h.ITERATION):
            curves.setdefault(r["setting"], []).append(curve)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    has_gt = any(any(v == v for v in c.get(h.PSNR_GT, [])) for cs in curves.values() for c in cs)
    key = h.PSNR_GT if has_gt else h.PSNR_FIT
    fig, ax = plt.subplots(figsize=(9, 5))
    for setting, cs in curves.items():
        n = max(len(c[h.ITERATION]) for c in cs)
        grid = np.full((len(cs), n), np.nan)  # early-stopped jobs are shorter: average what is there
        for i, c in enumerate(cs):
            grid[i, : len(c[key])] = c[key]
        with np.errstate(all="ignore"):
            mean = np.nanmean(grid, axis=0)
        ax.plot(np.arange(n), mean, lw=1, label=f"{setting} ({len(cs)} jobs)")
    ax.set(xlabel="iteration", ylabel="dB", title=f"mean {key.replace('_', ' ')} per setting")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def gather(sweep_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Write results.csv, results.md, summary.csv and results.png in the sweep dir; returns (rows, summary)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DIPError(f"{str(sweep_dir)!r} is not a folder; expected a multirun sweep dir (multirun/<date>).")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise DIPError(
            f"{str(sweep_dir)!r} holds no job folders (none has .hydra/overrides.yaml); expected the "
            "folder of a `dip-run -m` sweep."
        )
    overrides = [o for o in (read_overrides(job) for job in jobs) if o is not None]
    common = {k: v for k, v in overrides[0].items() if all(o.get(k) == v for o in overrides)} if overrides else {}
    rows = [read_job(sweep_dir, job, common) for job in jobs]
    summary = summarise(rows)
    cols = ["job", "status", "setting", "image", "seed", *METRICS, "error"]
    atomic_write(sweep_dir / "results.csv", lambda tmp: Path(tmp).write_text(_csv(rows, cols)))
    atomic_write(sweep_dir / "summary.csv", lambda tmp: Path(tmp).write_text(_csv(summary, list(summary[0]))))
    atomic_write(sweep_dir / "results.md", lambda tmp: Path(tmp).write_text(markdown(rows, summary)))
    plot(sweep_dir, rows, sweep_dir / "results.png")
    return rows, summary


def ensembles(sweep_dir: str | Path, rows: list[dict], image: str = "restored") -> list[dict]:
    """Seed ensembles of a gathered sweep: one per (setting, image) with two or more finished seeds; writes
    ensembles/<k>.png, ensembles.csv and ensembles.md into the sweep dir; returns their rows."""
    from .ensemble import check_observations, ensemble

    sweep_dir = Path(sweep_dir)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["setting"], r["image"]), []).append(r)
    ensembled = [g for g in groups.items() if len(g[1]) > 1]
    # every group's observations are checked before any ensemble file is written: a refused group must not leave
    # the images of the groups before it, or an ensembles.csv of part of the sweep
    for _, members in ensembled:
        check_observations([sweep_dir / m["job"] for m in members])
    out = []
    for k, ((setting, img), members) in enumerate(ensembled):
        jobs = [sweep_dir / m["job"] for m in members]
        convention = (read_json(jobs[0] / "metrics.json") or {}).get("psnr_convention", "rgb")
        result = ensemble(jobs, sweep_dir / "ensembles" / f"{k}.png", image=image, convention=convention)
        gain = (result["psnr"] - result["psnr_members_mean"]) if result["psnr"] is not None else None
        out.append(
            {
                "setting": setting,
                "image": img,
                "seeds": " ".join(str(m["seed"]) for m in members),
                "members": result["members"],
                "psnr_ensemble": result["psnr"],
                "psnr_members_mean": result["psnr_members_mean"],
                "gain": gain,
                "observations": result["observations"],  # same, or unverified (runs that recorded no checksum)
                "file": str(Path(result["image"]).relative_to(sweep_dir)),
            }
        )
    if not out:
        raise DIPError(
            f"{str(sweep_dir)!r} has no setting and image with two or more finished seeds; an ensemble "
            "needs a sweep over seed, e.g. dip-run -m seed=0,1,2,3 ..."
        )
    cols = list(out[0])
    lines = [
        f"## Seed ensembles (mean of {image}.png over the seeds)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in out]
    atomic_write(sweep_dir / "ensembles.csv", lambda tmp: Path(tmp).write_text(_csv(out, cols)))
    atomic_write(sweep_dir / "ensembles.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dip-gather", description="Gather a dip-run multirun into one table.")
    p.add_argument("sweep_dir", help="the sweep folder (multirun/<date>); partial or partly failed sweeps are fine")
    p.add_argument(
        "--ensemble",
        choices=["seed"],
        default=None,
        help="also average the runs that differ only in their seed (one image per setting and image)",
    )
    p.add_argument(
        "--ensemble-image",
        default="restored",
        help="which image of each run to average: restored (the run's result: its stopping rule's "
        "choice), best, or a further rule's <rule>.png (default: restored)",
    )
    args = p.parse_args(argv)
    try:
        rows, _ = gather(args.sweep_dir)
        if args.ensemble:
            ensembles(args.sweep_dir, rows, args.ensemble_image)
    except DIPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.sweep_dir) / "results.md").read_text())
    if args.ensemble:
        print((Path(args.sweep_dir) / "ensembles.md").read_text())
    failed = sum(r["status"] != "ok" for r in rows)
    print(
        f"{len(rows)} jobs, {failed} failed; written: results.csv results.md summary.csv results.png"
        f"{' ensembles.csv ensembles.md ensembles/' if args.ensemble else ''} in {args.sweep_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
