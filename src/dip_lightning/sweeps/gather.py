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
import re
import sys
from pathlib import Path, PurePath

import yaml

# Only light modules at module level: `dip-gather --help` (and a wrong argument) answers from argparse without torch,
# Lightning or matplotlib (tests/test_cli.py). ..data.io (torch, via dip_lightning.data's Lightning data module),
# .plots (matplotlib) and .ensemble (torch) are imported where a sweep is gathered.
from ..errors import DIPError
from ..run_metrics import metric_names, result_kind, result_metric, result_psnr, result_ssim
from .tables import (
    COLUMNS,
    METRICS,
    csv_text,
    fmt_cell,
    image_table,
    markdown,
    md_row,
    metric_columns,
    present,
    summarise,
    summary_keys,
    table_csv,
    table_markdown,
    table_tex,
)

PER_JOB = ("data.image", "data.observed", "seed", "resume")  # what varies inside one setting
IGNORED = ("launcher", "logger", "hydra.launcher.n_jobs", "paths.data_root", "paths.output_root")  # how the jobs ran


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
    """What the run returned (restored.png): `result` (ensemble, stop: <rule>, final; a rule that uses the ground
    truth, as its metrics.json's stop_uses_ground_truth says, marked oracle), its PSNR and SSIM, and each further
    metric's score of it (<name>_result) beside the metric's final and best (oracle) scores."""
    kind = result_kind(metrics)
    if kind == "stop":
        rule = metrics.get("stop_rule") or metrics.get("stop_reason") or "?"
        kind = f"stop: {rule}{' (oracle)' if metrics.get('stop_uses_ground_truth') else ''}"
    row = {"result": kind, "psnr_result": result_psnr(metrics), "ssim_result": result_ssim(metrics)}
    for name in metric_names(metrics):
        row.update({f"{name}_result": result_metric(metrics, name), f"{name}_final": metrics.get(f"{name}_final")})
        row[f"{name}_best"] = metrics.get(f"{name}_best")
    return row


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
    """Why the job's metrics.json is not this job's result, if it is not, told by content, not by file times (a
    clock stepped back, a copy, a restore change those): its config.yaml (written with metrics.json, all or none)
    disagrees with a value of the job's own record (.hydra/overrides.yaml: an earlier run's result), or an
    error.json sits beside it (a finished attempt removes any; so a later attempt failed)."""
    if not metrics_file.exists():
        return None
    if error_file.exists():
        return "failed after an earlier attempt finished (error.json beside its metrics.json)"
    differs = _disagreement(job)
    if differs:
        return f"metrics.json is an earlier run's result, not this job's: {differs}"
    return None


def _disagreement(job: Path) -> str | None:
    """The first override of the job's record whose value its config.yaml does not hold (group choices and
    Hydra's own keys aside, which config.yaml does not record), as 'key: recorded X, config.yaml Y'."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    pairs = read_overrides(job)
    try:
        config = OmegaConf.load(job / "config.yaml")
    except (OSError, ValueError):
        return None  # an older job without one: nothing to compare
    if not pairs:
        return None
    parser = OverridesParser.create()
    for key, text in pairs.items():
        if key.startswith(("hydra.", "+hydra.")) or key in ("resume",):
            continue
        node = OmegaConf.select(config, key.lstrip("+~"), default=None, throw_on_resolution_failure=False)
        if node is None or OmegaConf.is_config(node):
            continue  # a group choice (net=skip), or a key config.yaml leaves out
        try:  # as the job's config holds it: OmegaConf reads an escaped \${ as text
            value = OmegaConf.create({"v": parser.parse_override(f"{key.lstrip('+~')}={text}").value()}).v
        except Exception:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(node, (int, float)):
            same = float(value) == float(node)
        else:
            same = str(value) == str(node)
        if not same:
            return f"{key}: recorded {text}, config.yaml {node}"
    return None


def read_json(path: Path) -> dict | None:
    """A JSON object file (metrics.json, error.json); None when it is missing, damaged or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, text: str) -> None:
    from ..data.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def gather(sweep_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """Write results.csv, results.md, summary.csv, table.csv, table.md, table.tex and results.png in the sweep dir;
    returns (rows, summary): rows keyed by metrics.json's names (psnr_best, not its label), `image` the image's
    name in the tables and `image_path` its path."""
    from .plots import plot

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
    cols = present(rows, [*COLUMNS[:-1], *metric_columns(rows), COLUMNS[-1]])
    cols.insert(cols.index("image") + 1, "image_path")
    keys = summary_keys(summary)
    summary_cols = ["setting", "jobs", "ok", "failed", *(f"{k}_{x}" for k in keys for x in ("mean", "std", "n"))]
    _write(sweep_dir / "results.csv", csv_text(rows, cols))
    _write(sweep_dir / "summary.csv", csv_text(summary, summary_cols))
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
        md_row(heads),
        "|" + "---|" * len(cols),
    ]
    lines += [md_row(fmt_cell(r[c]) for c in cols) for r in out]
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
    except OSError as err:  # its tables could not be written (a full disk): each is written whole or not at all
        from ..run.folder import free_mb

        print(
            f"error: dip-gather could not write its tables into {args.sweep_dir} ({err.strerror or err}; "
            f"{free_mb(Path(args.sweep_dir))} MB free there). The jobs' own files are untouched; free some space "
            "(or make the folder writable) and run dip-gather again.",
            file=sys.stderr,
        )
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
