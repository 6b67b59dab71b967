"""dip-gather <sweep dir>: every job of a multirun in one table, a summary per setting, an image x setting table and
a plot.

A job folder is any folder under the sweep dir holding `.hydra/overrides.yaml`. Its row comes from `metrics.json`
(written last: the job finished), else `error.json` (the job failed; the error is listed), else it is listed as
"no metrics.json" (still running, or killed). A setting is a job's overrides minus data.image and seed.

Every table leads with what a method without ground truth returns: the run's result (restored.png), scored as
`psnr_result` (psnr_stop when a stopping rule chose it, else psnr_final; an ensemble=N job's psnr_ensemble;
run_metrics.result_psnr) and named in the `result` column (ensemble, stop: <rule>, final). The best iterate, found
with the ground truth, is the oracle: its columns are headed `<key> (oracle)` (psnr_best, best_step, ssim_best,
psnr_ensemble_best), as is a result chosen by a rule that stops with the ground truth (`stop: PSNRPatience
(oracle)`). Images are named by their file's stem (its name, or folders above it, where two images of the sweep
would share one); results.csv keeps the path as image_path. A column empty for every row (the stopping rule's
columns of a sweep without one, an ensemble's of a sweep without ensembles) is left out.

Writes into the sweep dir: results.csv and results.md (one row per job; results.md also holds the per-setting
summary and the image x setting table), summary.csv (mean, std and count per setting over its images and seeds),
table.csv, table.md and table.tex (psnr_result per image and setting, mean over seeds, with a mean row; LaTeX with
booktabs) and results.png (each setting's mean curve of what psnr_final measures: psnr_gt_avg, the averaged output's
PSNR where averaging is on, else the output's; without ground truth psnr_fit, the fit to the observation).

`--ensemble seed`: the finished jobs of one setting and image that differ only in their seed are averaged into one
image (sweeps/ensemble.py), written as ensembles/<image>.png (<image>-<k>.png, k the setting's number in the
summary, when the sweep has several settings) with ensembles.md and ensembles.csv: the ensemble's PSNR (when the
jobs had a ground truth) beside its members' mean. Members that restored different observations (their
metrics.json's observation_sha256 differ) are refused before anything is written; members that recorded none are
averaged, and their row says `unverified`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from pathlib import Path, PurePath

import yaml

from .. import history as h
from ..data.io import atomic_write
from ..errors import DIPError
from ..history import read_curves
from ..run_metrics import ORACLE_RULES, result_kind, result_psnr, result_ssim

PER_JOB = ("data.image", "data.observed", "seed", "resume")  # what varies inside one setting
IGNORED = ("launcher", "logger", "hydra.launcher.n_jobs", "paths.data_root", "paths.output_root")  # how the jobs ran
RESULT = ("result", "psnr_result", "ssim_result")  # what the run returned (restored.png), from its metrics
METRICS = (
    "psnr_observed",
    "psnr_final",
    "psnr_stop",
    "stop_step",
    "stop_reason",
    "ssim_final",
    "ssim_stop",
    "psnr_ensemble",
    "psnr_members_mean",
    "psnr_best",
    "best_step",
    "ssim_best",
    "psnr_ensemble_best",
    "iterations",
    "seconds",
)
SUMMARY = (
    "psnr_result",
    "ssim_result",
    "psnr_final",
    "psnr_stop",
    "psnr_ensemble",
    "ssim_final",
    "ssim_stop",
    "psnr_best",
    "ssim_best",
    "psnr_ensemble_best",
)
ORACLE = ("psnr_best", "best_step", "ssim_best", "psnr_ensemble_best")  # chosen with the ground truth
ALWAYS = ("job", "status", "setting", "image", "seed")  # the columns every table keeps, empty or not
COLUMNS = (*ALWAYS, *RESULT, *METRICS, "error")  # results.md; results.csv adds image_path after image
LEGEND = (
    "`psnr_result`: the PSNR of what each run returned (restored.png: its stopping rule's choice, else its last "
    "iterate; an ensemble=N job's mean of its members), which `result` names. Columns marked (oracle) were chosen "
    "with the ground truth (the best iterate): no method without one can return them."
)


def label(key: str) -> str:
    """A column's header: the key, marked `(oracle)` where the ground truth chose it (`psnr_best_mean (oracle)`)."""
    base = re.sub(r"_(mean|std|n)$", "", key)
    return f"{key} (oracle)" if base in ORACLE else key


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
    """One row; `common` (overrides every job shares) is left out of the setting's name. Its `image` is the image's
    path here, as `image_path`; `gather` names it (image_names)."""
    pairs = read_overrides(job)
    if pairs is None:
        return {
            "job": str(job.relative_to(sweep_dir)),
            "setting": "?",
            "image": "",
            "image_path": "",
            "seed": "",
            "status": "failed",
            "error": "unreadable .hydra/overrides.yaml (damaged)",
        }
    setting = (
        " ".join(f"{k}={v}" for k, v in pairs.items() if k not in PER_JOB and k not in IGNORED and common.get(k) != v)
        or "(all jobs)"
    )
    given = [pairs.get(k, "").strip("'\"") for k in ("data.image", "data.observed")]
    row = {
        "job": str(job.relative_to(sweep_dir)),
        "setting": setting,
        "image": next((v for v in given if v and v != "null"), ""),
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
        else:
            row.update(status="ok", **{k: metrics.get(k) for k in METRICS}, **result_of(metrics))
            row["image"] = metrics.get("image") or row["image"]
            row["seed"] = metrics.get("seed", row["seed"])
    elif error_file.exists():
        error = read_json(error_file)
        row.update(status="failed", error=error.get("error", "?") if error else "unreadable error.json")
    else:
        row.update(status="failed", error="no metrics.json (still running, or the job died)")
    row["image_path"] = str(row["image"])
    return row


def result_of(metrics: dict) -> dict:
    """What the run returned (restored.png): `result` (ensemble, stop: <rule>, final; a rule that stops with the
    ground truth marked oracle), its PSNR and SSIM."""
    kind = result_kind(metrics)
    if kind == "stop":
        rule = metrics.get("stop_rule") or metrics.get("stop_reason") or "?"
        kind = f"stop: {rule}{' (oracle)' if rule in ORACLE_RULES else ''}"
    return {"result": kind, "psnr_result": result_psnr(metrics), "ssim_result": result_ssim(metrics)}


def image_names(paths: list[str]) -> dict[str, str]:
    """Each image path's name in the tables: its stem, else its file name, else the folders above it too, the
    shortest that no other path of `paths` shares (x/a.png and y/a.png: x/a.png and y/a.png; a.png and a.jpg:
    a.png and a.jpg); the paths themselves if names would still coincide."""

    def forms(path: str) -> list[str]:
        p = PurePath(path)
        parts = p.parts
        return [p.stem or path, p.name or path, *("/".join(parts[-k:]) for k in range(2, len(parts) + 1))]

    distinct = list(dict.fromkeys(p for p in paths if p))
    all_forms = {p: forms(p) for p in distinct}
    names = {}
    for p, own in all_forms.items():
        for level, name in enumerate(own):
            others = {f[min(level, len(f) - 1)] for q, f in all_forms.items() if q != p}
            if name not in others:
                names[p] = name
                break
        else:
            names[p] = p
    if len(set(names.values())) < len(names):
        names = {p: p for p in distinct}
    return {**names, "": ""}


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


def present(rows: list[dict], cols) -> list[str]:
    """`cols` less those empty (None or "") in every row; ALWAYS stay."""
    return [c for c in cols if c in ALWAYS or any(r.get(c) not in (None, "") for r in rows)]


def summary_keys(summary: list[dict]) -> list[str]:
    """The SUMMARY keys that some setting has a value of."""
    return [k for k in SUMMARY if any(s.get(f"{k}_n") for s in summary)]


def _md_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], summary: list[dict], table: dict | None = None) -> str:
    cols = present(rows, COLUMNS)
    lines = [LEGEND, "", "## Jobs", "", _md_row(label(c) for c in cols), "|" + "---|" * len(cols)]
    lines += [_md_row(_fmt(r.get(c), c) for c in cols) for r in rows]
    keys = summary_keys(summary)
    lines += [
        "",
        "## Per setting (mean ± std over images and seeds; finished jobs only)",
        "",
        _md_row(["#", "setting", "jobs", "ok", "failed", *(label(k) for k in keys)]),
        "|" + "---|" * (5 + len(keys)),
    ]
    for number, s in enumerate(summary, start=1):  # the setting's number (ensembles/<image>-<k>.png)
        cells = [
            f"{_fmt(s[f'{k}_mean'], k)} ± {_fmt(s[f'{k}_std'], k)}" if s[f"{k}_mean"] is not None else "" for k in keys
        ]
        lines.append(_md_row([str(number), _fmt(s["setting"]), str(s["jobs"]), str(s["ok"]), str(s["failed"]), *cells]))
    if table is not None:
        lines += ["", table_markdown(table, heading="##")]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], cols: list[str]) -> str:
    """CSV of `rows`' `cols`, headed by their labels (label)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([label(c) for c in cols])
    writer.writerows([[r.get(c) for c in cols] for r in rows])
    return buf.getvalue()


# ------------------------------------------------------------------------------------- image x setting table
def image_table(rows: list[dict], summary: list[dict]) -> dict:
    """psnr_result per image (rows) and setting (columns), the mean over each cell's finished seeds, and a mean row
    over the images; `n`: how many images each setting's mean is over (fewer where some have no result)."""
    settings = [s["setting"] for s in summary if s["setting"] != "?"]
    images = list(dict.fromkeys(r["image"] for r in rows if r["setting"] != "?" and r["image"]))
    values: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        v = _num(r.get("psnr_result")) if r["status"] == "ok" else None
        if v is not None:
            values.setdefault((r["image"], r["setting"]), []).append(v)
    cells = {key: statistics.mean(v) for key, v in values.items()}
    means, counts = {}, {}
    for s in settings:
        got = [cells[(i, s)] for i in images if (i, s) in cells]
        means[s], counts[s] = (statistics.mean(got) if got else None), len(got)
    seeds = max((len(v) for v in values.values()), default=0)
    return {"settings": settings, "images": images, "cells": cells, "mean": means, "n": counts, "seeds": seeds}


def _table_note(t: dict) -> str:
    note = "PSNR (dB) of each run's result (psnr_result: restored.png, what a method without ground truth returns)"
    if t["seeds"] > 1:
        note += ", mean over the seeds"
    incomplete = [s for s in t["settings"] if t["n"][s] < len(t["images"])]
    if incomplete:
        note += "; a mean over fewer images than the table's says how many (of N)"
    if not t["cells"]:
        note += "; none here: the jobs had no ground truth, or none finished"
    return note


def _mean_cell(t: dict, s: str, fmt) -> str:
    mean = t["mean"][s]
    if mean is None:
        return ""
    return fmt(mean) + (f" ({t['n'][s]} of {len(t['images'])})" if t["n"][s] < len(t["images"]) else "")


def _best(values: list[float | None]) -> float | None:
    got = [round(v, 2) for v in values if v is not None]
    return max(got) if len(got) > 1 else None


def table_markdown(t: dict, heading: str = "#") -> str:
    """The table as Markdown, each row's best setting in bold."""
    settings = t["settings"]
    lines = [f"{heading} PSNR of the result per image and setting", "", _table_note(t) + ".", ""]
    lines += [_md_row(["image", *(_fmt(s) for s in settings)]), "|---|" + "---:|" * len(settings)]
    for image in t["images"]:
        values = [t["cells"].get((image, s)) for s in settings]
        best = _best(values)
        cells = ["" if v is None else (f"**{v:.2f}**" if round(v, 2) == best else f"{v:.2f}") for v in values]
        lines.append(_md_row([_fmt(image), *cells]))
    best = _best([t["mean"][s] for s in settings])
    lines.append(
        _md_row(
            [
                "**mean**",
                *(
                    f"**{_mean_cell(t, s, '{:.2f}'.format)}**"
                    if t["mean"][s] is not None and round(t["mean"][s], 2) == best
                    else _mean_cell(t, s, "{:.2f}".format)
                    for s in settings
                ),
            ]
        )
    )
    return "\n".join(lines) + "\n"


def table_csv(t: dict) -> str:
    """The table as CSV: image, one column per setting (the setting's overrides), a mean row, and an `n` row
    (images in each mean) where some setting's mean is over fewer images."""
    settings = t["settings"]
    out = [{"image": image, **{s: t["cells"].get((image, s)) for s in settings}} for image in t["images"]]
    out.append({"image": "mean", **t["mean"]})
    if any(t["n"][s] < len(t["images"]) for s in settings):
        out.append({"image": "n", **t["n"]})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["image", *settings])
    writer.writerows([[r.get(c) for c in ["image", *settings]] for r in out])
    return buf.getvalue()


TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    return "".join(TEX_SPECIAL.get(ch, ch) for ch in str(text))


def table_tex(t: dict) -> str:
    """The table as a LaTeX tabular (booktabs: \\usepackage{booktabs}), each row's best setting in bold."""
    settings = t["settings"]
    lines = [
        f"% {tex_escape(_table_note(t))}.",
        "% dip-gather's table.tex; needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{l{'r' * len(settings)}}}",
        "\\toprule",
        " & ".join(["image", *(tex_escape(s) for s in settings)]) + r" \\",
        "\\midrule",
    ]
    for image in t["images"]:
        values = [t["cells"].get((image, s)) for s in settings]
        best = _best(values)
        cells = ["" if v is None else (f"\\textbf{{{v:.2f}}}" if round(v, 2) == best else f"{v:.2f}") for v in values]
        lines.append(" & ".join([tex_escape(image), *cells]) + r" \\")
    lines.append("\\midrule")
    best = _best([t["mean"][s] for s in settings])
    means = [
        f"\\textbf{{{_mean_cell(t, s, '{:.2f}'.format)}}}"
        if t["mean"][s] is not None and round(t["mean"][s], 2) == best
        else _mean_cell(t, s, "{:.2f}".format)
        for s in settings
    ]
    lines += [" & ".join(["mean", *means]) + r" \\", "\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- plot
def read_curve(job: Path) -> dict[str, list[float]] | None:
    path = job / "curves.csv"
    if not path.exists():
        return None
    try:
        return read_curves(path)
    except (DIPError, ValueError, OSError, UnicodeDecodeError):  # a damaged or foreign file: no curve, not a crash
        return None


def curve_labels(curves: list[dict[str, list[float]]]) -> tuple[str, str, str]:
    """Which history column results.png plots, its title and its axis label: with ground truth psnr_gt_avg, what
    psnr_final measures (the averaged output where averaging is on, else the output: then it equals psnr_gt);
    without, psnr_fit (the fit to the observation)."""
    if any(any(v == v for v in c.get(h.PSNR_GT, [])) for c in curves):
        averaged = any(c.get(h.PSNR_GT_AVG) != c.get(h.PSNR_GT) for c in curves)
        what = "the averaged output" if averaged else "the output (no averaging)"
        return (
            h.PSNR_GT_AVG,
            f"mean {h.PSNR_GT_AVG} per setting: PSNR of {what} vs the ground truth",
            f"{h.PSNR_GT_AVG}: {what} vs ground truth (dB)",
        )
    return (
        h.PSNR_FIT,
        f"mean {h.PSNR_FIT} per setting: PSNR of A(output) vs the observation (no ground truth)",
        f"{h.PSNR_FIT}: A(output) vs observation (dB)",
    )


def plot(sweep_dir: Path, rows: list[dict], path: Path, summary: list[dict] | None = None) -> Path | None:
    """The mean curve of each setting over its finished jobs (curve_labels: what psnr_final measures, with ground
    truth), each labelled with its mean result and its mean oracle (summary)."""
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

    key, title, ylabel = curve_labels([c for cs in curves.values() for c in cs])
    by_setting = {s["setting"]: s for s in summary or []}
    fig, ax = plt.subplots(figsize=(9, 5))
    for setting, cs in curves.items():
        longest = max(cs, key=lambda c: len(c[h.ITERATION]))
        n = len(longest[h.ITERATION])
        grid = np.full((len(cs), n), np.nan)  # early-stopped jobs are shorter: average what is there
        for i, c in enumerate(cs):
            grid[i, : len(c[key])] = c[key]
        with np.errstate(all="ignore"):
            mean = np.nanmean(grid, axis=0)
        s = by_setting.get(setting, {})
        scores = [
            f"{name} {s[f'{k}_mean']:.2f} dB"
            for k, name in (("psnr_result", "result"), ("psnr_best", "best (oracle)"))
            if s.get(f"{k}_mean") is not None
        ]
        legend = f"{setting} ({len(cs)} jobs{'; ' + ', '.join(scores) if scores and key != h.PSNR_FIT else ''})"
        ax.plot(longest[h.ITERATION], mean, lw=1, label=legend)
    ax.set(xlabel="iteration", ylabel=ylabel, title=title)
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------- gather
def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def gather(sweep_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Write results.csv, results.md, summary.csv, table.csv, table.md, table.tex and results.png in the sweep dir;
    returns (rows, summary): rows keyed by metrics.json's names (psnr_best, not its label), `image` the image's
    name in the tables and `image_path` its path."""
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
    names = image_names([r["image_path"] for r in rows])
    for r in rows:
        r["image"] = names[r["image_path"]]
    summary = summarise(rows)
    table = image_table(rows, summary)
    cols = present(rows, COLUMNS)
    cols.insert(cols.index("image") + 1, "image_path")
    keys = summary_keys(summary)
    summary_cols = ["setting", "jobs", "ok", "failed", *(f"{k}_{x}" for k in keys for x in ("mean", "std", "n"))]
    _write(sweep_dir / "results.csv", _csv(rows, cols))
    _write(sweep_dir / "summary.csv", _csv(summary, summary_cols))
    _write(sweep_dir / "table.csv", table_csv(table))
    _write(sweep_dir / "table.md", table_markdown(table))
    _write(sweep_dir / "table.tex", table_tex(table))
    _write(sweep_dir / "results.md", markdown(rows, summary, table))
    plot(sweep_dir, rows, sweep_dir / "results.png", summary)
    return rows, summary


def _file_stem(name: str) -> str:
    """An image's table name as a file name (folders joined with _, nothing a shell or Hydra would trip on)."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", name.replace("/", "_")).strip("._") or "image"


def ensembles(sweep_dir: str | Path, rows: list[dict], image: str = "restored") -> list[dict]:
    """Seed ensembles of a gathered sweep: one per (setting, image) with two or more finished seeds; writes
    ensembles/<image>.png (<image>-<k>.png with several settings, k the setting's number in the summary: 1, 2,
    ...), ensembles.csv and ensembles.md into the sweep dir; returns their rows."""
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
    numbers = {s: k for k, s in enumerate(dict.fromkeys(r["setting"] for r in rows), start=1)}
    several = len({setting for (setting, _), _ in ensembled}) > 1
    oracle = image == "best"  # the best iterates: chosen with the ground truth
    out = []
    for (setting, img), members in ensembled:
        jobs = [sweep_dir / m["job"] for m in members]
        convention = (read_json(jobs[0] / "metrics.json") or {}).get("psnr_convention", "rgb")
        name = _file_stem(img or "image") + (f"-{numbers[setting]}" if several else "")
        result = ensemble(jobs, sweep_dir / "ensembles" / f"{name}.png", image=image, convention=convention)
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
    heads = [f"{c} (oracle)" if oracle and c in ("psnr_ensemble", "psnr_members_mean", "gain") else c for c in cols]
    what = (
        "best.png: the oracle, each run's best iterate chosen with the ground truth"
        if oracle
        else f"{image}.png" + (": each run's result" if image == "restored" else "")
    )
    lines = [
        f"## Seed ensembles (mean of {what}, over the seeds)",
        "",
        _md_row(heads),
        "|" + "---|" * len(cols),
    ]
    lines += [_md_row(_fmt(r[c]) for c in cols) for r in out]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(heads)
    writer.writerows([[r[c] for c in cols] for r in out])
    _write(sweep_dir / "ensembles.csv", buf.getvalue())
    _write(sweep_dir / "ensembles.md", "\n".join(lines) + "\n")
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
        "choice), best (the oracle: chosen with the ground truth), or a further rule's <rule>.png "
        "(default: restored)",
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
    plotted = (Path(args.sweep_dir) / "results.png").exists()
    print(
        f"{len(rows)} jobs, {failed} failed; written: results.csv results.md summary.csv table.csv table.md "
        f"table.tex{' results.png' if plotted else ''}"
        f"{' ensembles.csv ensembles.md ensembles/' if args.ensemble else ''} in {args.sweep_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
