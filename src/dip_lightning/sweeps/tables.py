"""dip-gather's tables: the columns of a sweep's rows and what they mean, the per-setting summary, and the rows,
the summary and the image x setting table as markdown, CSV and LaTeX (booktabs)."""

from __future__ import annotations

import csv
import io
import math
import re
import statistics

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
ORACLE = (
    "psnr_best",
    "best_step",
    "ssim_best",
    "psnr_ensemble_best",
)  # chosen with the ground truth (and <metric>_best)
ALWAYS = ("job", "status", "setting", "image", "seed")  # the columns every table keeps, empty or not
COLUMNS = (*ALWAYS, *RESULT, *METRICS, "error")  # results.md; results.csv adds image_path after image
LEGEND = (
    "`psnr_result`: the PSNR of what each run returned (restored.png: its stopping rule's choice, else its last "
    "iterate; an ensemble=N job's mean of its members), which `result` names. Columns marked (oracle) were chosen "
    "with the ground truth (the best iterate): no method without one can return them."
)


def label(key: str) -> str:
    """A column's header: the key, marked `(oracle)` where the ground truth chose it (`psnr_best_mean (oracle)`,
    a user metric's `mae_best`)."""
    base = re.sub(r"_(mean|std|n)$", "", key)
    return f"{key} (oracle)" if base in ORACLE or base.endswith("_best") else key


def metric_columns(rows: list[dict]) -> list[str]:
    """The columns of the metrics a sweep's runs scored beside PSNR and SSIM (`metrics=[psnr,ssim,<name>]`:
    <name>_result, <name>_final, <name>_best), in the order the rows have them."""
    known = set(COLUMNS) | set(SUMMARY)
    keys = dict.fromkeys(k for r in rows for k in r if k not in known and re.fullmatch(r".+_(result|final|best)", k))
    return list(keys)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    keys = [*SUMMARY, *metric_columns(rows)]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == setting]
        ok = [r for r in group if r["status"] == "ok"]
        entry = {"setting": setting, "jobs": len(group), "ok": len(ok), "failed": len(group) - len(ok)}
        for key in keys:
            values = [v for v in (_num(r.get(key)) for r in ok) if v is not None]
            entry[f"{key}_mean"] = statistics.mean(values) if values else None
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
            entry[f"{key}_n"] = len(values)
        out.append(entry)
    return out


def fmt_cell(v, key: str = "") -> str:
    if v is None:
        return ""
    if key == "setting" and isinstance(v, str):
        v = short_setting(v)
    if isinstance(v, float):
        if key.startswith("ssim"):  # in [0, 1]: differences that matter are in the third decimal
            return f"{v:.4f}"
        return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def present(rows: list[dict], cols) -> list[str]:
    """`cols` less those empty (None or "") in every row; ALWAYS stay."""
    return [c for c in cols if c in ALWAYS or any(r.get(c) not in (None, "") for r in rows)]


def summary_keys(summary: list[dict]) -> list[str]:
    """The summarised keys (SUMMARY, then the user metrics') that some setting has a value of."""
    keys = dict.fromkeys(k[: -len("_n")] for s in summary for k in s if k.endswith("_n"))
    return [k for k in keys if any(s.get(f"{k}_n") for s in summary)]


def short_setting(setting: str) -> str:
    """A setting as a header shows it: floats to 3 significant digits (optimizer.lr=0.00626, not
    0.006260326907499732); the CSV files keep the full values."""

    def short(match: re.Match) -> str:
        text = match.group(0)
        return f"{float(text):.3g}" if len(text.replace("-", "").replace(".", "")) > 4 else text

    return re.sub(r"(?<![\w.])-?\d+\.\d+(?:[eE]-?\d+)?(?![\w.])", short, setting)


def md_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict], summary: list[dict], table: dict | None = None) -> str:
    cols = present(rows, [*COLUMNS[:-1], *metric_columns(rows), COLUMNS[-1]])
    lines = [LEGEND, "", "## Jobs", "", md_row(label(c) for c in cols), "|" + "---|" * len(cols)]
    lines += [md_row(fmt_cell(r.get(c), c) for c in cols) for r in rows]
    keys = summary_keys(summary)
    lines += [
        "",
        "## Per setting (mean ± std over images and seeds; finished jobs only)",
        "",
        md_row(["#", "setting", "jobs", "ok", "failed", *(label(k) for k in keys)]),
        "|" + "---|" * (5 + len(keys)),
    ]
    for number, s in enumerate(summary, start=1):  # the setting's number (ensembles/<image>-<k>.png)
        cells = [
            f"{fmt_cell(s[f'{k}_mean'], k)} ± {fmt_cell(s[f'{k}_std'], k)}" if s[f"{k}_mean"] is not None else ""
            for k in keys
        ]
        lines.append(
            md_row(
                [
                    str(number),
                    fmt_cell(short_setting(s["setting"])),
                    str(s["jobs"]),
                    str(s["ok"]),
                    str(s["failed"]),
                    *cells,
                ]
            )
        )
    if table is not None:
        lines += ["", table_markdown(table, heading="##")]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], cols: list[str]) -> str:
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
    lines += [md_row(["image", *(fmt_cell(short_setting(s)) for s in settings)]), "|---|" + "---:|" * len(settings)]
    for image in t["images"]:
        values = [t["cells"].get((image, s)) for s in settings]
        best = _best(values)
        cells = ["" if v is None else (f"**{v:.2f}**" if round(v, 2) == best else f"{v:.2f}") for v in values]
        lines.append(md_row([fmt_cell(image), *cells]))
    best = _best([t["mean"][s] for s in settings])
    lines.append(
        md_row(
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
        " & ".join(["image", *(tex_escape(short_setting(s)) for s in settings)]) + r" \\",
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
