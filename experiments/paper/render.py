"""Render a scored table: the result file (markdown: per-image rows, means, the paper's numbers, the gap to them,
the PSNR conventions) and its figure (input / DIP / best baseline / ground truth for the first images)."""

from __future__ import annotations

import datetime as dt
import math
import re
import shlex
import statistics
from pathlib import Path

import numpy as np

from .collect import Sweep
from .score import Scores, mean
from .tables import INPAINT_NAMES, INPAINT_PAPER, Table

REPO = Path(__file__).resolve().parents[2]
# how a recorded command names what depends on the machine: the program, the data root, folders of this checkout
PROGRAM = re.compile(r"^\S*(?:/dip-run|/python3?\S* -m dip_lightning\.train)(?= )")
DATA = re.compile(r"(?<=[=' ])/\S*?/(?:shared/data|\.gpu_data)(?=[/' ]|$)")
CHECKOUT = re.compile(r"(?<=[=' ])/\S*?/(?=experiments/)")
ELSEWHERE = re.compile(r"(?<=--out )/\S+")  # an output folder outside the checkout (the GPU machine's)


def portable(command: str) -> str:
    """A recorded command as anyone can read it: dip-run for the program, <data> for the data root, paths of this
    checkout relative to it (a result table names no folder of the machine it was made on)."""
    return ELSEWHERE.sub("<out>", CHECKOUT.sub("", DATA.sub("<data>", PROGRAM.sub("dip-run", command))))


FIGURE_DETAIL = 128  # the figure shows this centre detail of each image (px), so that whole images show pixels


def fmt(v, digits=2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def crop_size(crop: int | list[int]) -> str:
    """data.crop (a size, or [height, width]) as width x height."""
    h, w = (crop, crop) if isinstance(crop, int) else crop
    return f"{w}x{h}"


def crop_words(crop: int | list[int] | None) -> str:
    return "whole images" if crop is None else f"{crop_size(crop)} centre crops"


def markdown(
    table: Table,
    mode: str,
    scores: Scores,
    sweep: Sweep,
    invocation: str,
    code: str,
    baselines: bool,
    where: str = "this CPU",
) -> str:
    """The result file; `code` is the commit of the code that scored it, `baselines` whether the slow ones ran,
    `where` the machine (and ZS-N2N's device and threads) their times come from."""
    rows, dip_cols, base_names, it = scores.rows, scores.dip_cols, scores.base_names, scores.iterations
    crop, shave = sweep.protocol.crop, sweep.protocol.shave
    metric = (
        f"PSNR on Y (studio range), {shave} px shaved" if table.kind == "sr" else "PSNR, all channels, data_range=1"
    )
    lines = [f"# {table.name}, {mode} mode", ""]
    if mode == "quick":
        lines += [
            f"**Quick mode**: {crop_words(crop)}, net `skip_small` (skip with 32 channels per scale instead "
            f"of 128), {it} iterations (paper: {table.full_iterations}), one CPU thread per job. These numbers "
            "check the pipeline and compare DIP with the baselines on the same crops; they are **not** the "
            "paper's numbers (crop, net and iterations all differ).",
            "",
        ]
    else:
        lines += [f"**Full mode**: the paper's protocol: {crop_words(crop)}, skip128x5, {it} iterations.", ""]
    wall = sweep.wall_seconds
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
        f"- Device: {scores.device}; DIP sweep wall time {fmt(wall / 60 if wall else None, 1)} min "
        f"for {len(rows)} images{seeds_words(scores)}; date {dt.date.today().isoformat()}.",
        f"- Made by: `{portable(invocation)}` at code commit {code}",
        f"- The DIP sweep it ran: `{portable(shlex.join(sweep.command))}`, at code commit {sweep.code}",
        f"- {sweep.gather_note}",
        "",
    ]
    head = ["image", "input (bicubic)" if table.kind == "sr" else "input", *dip_cols, *base_names, "best step", "DIP s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "dip" in r:
            dip_vals = [fmt(r["dip"][c]) for c in dip_cols]
        else:
            dip_vals = [f"failed: {r['error'][:80]}"] + [""] * (len(dip_cols) - 1)
        base_vals = [f"{fmt(r['baselines'][n][0])} ({fmt(r['baselines'][n][1], 1)} s)" for n in base_names]
        cells = [r["stem"], fmt(r["input_psnr"]), *dip_vals, *base_vals, str(r.get("best_step", ""))]
        lines.append("| " + " | ".join([*cells, fmt(r.get("seconds"), 0)]) + " |")
    cells = [
        fmt(mean(r["input_psnr"] for r in rows)),
        *[f"**{fmt(scores.means[c])}**" for c in dip_cols],
        *[f"{fmt(scores.base_means[n])} ({fmt(scores.base_secs[n], 1)} s)" for n in base_names],
        "",
        fmt(mean(r.get("seconds") for r in rows), 0),
    ]
    lines.append("| **mean** | " + " | ".join(cells) + " |")
    if scores.failed:
        lines += [
            "",
            f"**Incomplete**: {len(scores.failed)} of {len(rows)} jobs failed ({', '.join(scores.failed)}): no DIP "
            "means and no gaps to the paper. Rerun the table.",
        ]
    zs = "ZS-N2N" in base_names
    lines += [
        "",
        f"Baselines run on the same inputs and crops; their time in seconds per image ({where})."
        if baselines
        else "The slow classical baselines were left out (--no-baselines)"
        + (f"; ZS-N2N ran on the same inputs, its time in seconds per image ({where})" if zs else "")
        + "; the paper's numbers are below.",
    ]
    if table.kind == "inpaint":
        lines += inpaint_beside_paper(mode, scores)
    lines += ["", "### The paper's numbers (mean)", ""]
    if table.paper:
        lines += ["| method | paper mean (dB) |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in table.paper.items()]
    else:
        lines += [
            "The paper's mean for this table is in its supplementary material, not transcribed in "
            "docs/reference.md: no comparison."
        ]
    lines += gap_analysis(table, mode, scores, crop)
    lines += conventions(table, shave)
    return "\n".join(lines) + "\n"


ADDED = "Added without rerunning DIP"  # the note of a --baselines-only run begins with this


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def add_baseline_columns(text: str, rows: list[dict], main_col: str, note: str) -> str:
    """A result file with the baselines of `rows` (score.baseline_rows: computed without the DIP sweep) as columns
    of its per-image table, before 'best step', replacing columns of the same name, and `note` after the
    baselines' paragraph, replacing an earlier such note (a line beginning with ADDED). Each computed image's
    input PSNR must equal the file's, to the digits shown: the same inputs and crops, or a DIPError.
    `main_col` is the DIP column the note compares each added baseline with, on the mean."""

    lines = text.split("\n")
    top, end = _table_span(lines)
    head = cells(lines[top])
    body = [cells(line) for line in lines[top + 2 : end]]
    for row in rows:
        check_input(text, row["stem"], row["input_psnr"])
    names = list(dict.fromkeys(n for r in rows for n in r["baselines"]))
    computed = {r["stem"]: r for r in rows}
    stems = [r[0] for r in body if r[0] != "**mean**"]
    for name in names:
        new = name not in head
        col = head.index(name) if not new else head.index("best step") if "best step" in head else len(head)
        if new:
            head.insert(col, name)
        values = {}  # per image: this run's, else what the file had (a run on some --images keeps the others)
        for r in body:
            v = computed.get(r[0], {}).get("baselines", {}).get(name)
            values[r[0]] = v if v is not None or new else _parse_cell(r[col])
        vals = [values[s] for s in stems]
        values["**mean**"] = None if None in vals else (mean(v[0] for v in vals), mean(v[1] for v in vals))
        for r in body:  # the mean over every image of the table, or none
            v = values[r[0]]
            cell = "n/a" if v is None else f"{fmt(v[0])} ({fmt(v[1], 1)} s)"
            if new:
                r.insert(col, cell)
            else:
                r[col] = cell
    mean_row = next((r for r in body if r[0] == "**mean**"), None)
    if mean_row is not None and main_col in head:
        ours = mean_row[head.index(main_col)].strip("*")
        for name in names:
            theirs = mean_row[head.index(name)].split(" ")[0]
            if ours != "n/a" and theirs != "n/a":
                note += f" {main_col} minus {name} on the mean: {float(ours) - float(theirs):+.2f} dB."
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]
    lines[top:end] = table
    lines = [line for line in lines if not line.startswith(ADDED)]
    after = next(
        (
            i
            for i, line in enumerate(lines)
            if line.startswith(("Baselines run on the same inputs", "The slow classical baselines"))
        ),
        top + len(table),
    )
    lines.insert(after + 1, "")
    lines.insert(after + 2, note)
    return "\n".join(_single_blank_lines(lines))


def _table_span(lines: list[str]) -> tuple[int, int]:
    """The per-image table of a result file: its header line and the line after its last row."""
    from dip_lightning.errors import DIPError

    top = next((i for i, line in enumerate(lines) if line.startswith("| image | ")), None)
    if top is None:
        raise DIPError("the result file has no per-image table (a line '| image | ...'); expected reproduce.py's.")
    return top, next((i for i in range(top + 2, len(lines)) if not lines[i].startswith("|")), len(lines))


def check_input(text: str, stem: str, input_psnr: float) -> None:
    """A DIPError unless the result file `text` has image `stem` with this input PSNR, to the digits shown."""
    from dip_lightning.errors import DIPError

    lines = text.split("\n")
    top, end = _table_span(lines)
    by_stem = {r[0]: r for r in map(cells, lines[top + 2 : end])}
    if stem not in by_stem:
        raise DIPError(f"image {stem!r} is not in the result file's table; expected one of its rows.")
    theirs, ours = by_stem[stem][1], fmt(input_psnr)
    if theirs != ours:
        raise DIPError(
            f"image {stem}: its input scores {ours} dB here but {theirs} dB in the result file: not the same inputs "
            "or crop (--data, --mode, overrides?), so its columns would not compare; nothing written."
        )


def _parse_cell(cell: str) -> tuple[float, float] | None:
    """A baseline's cell, 'PSNR (seconds s)', as numbers; None for 'n/a' or anything else."""
    try:
        psnr, secs = cell.split(" (")
        return float(psnr), float(secs.removesuffix(" s)"))
    except ValueError:
        return None


def _single_blank_lines(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if not (line == "" and out and out[-1] == ""):
            out.append(line)
    return out


def inpaint_beside_paper(mode: str, scores: Scores) -> list[str]:
    """inpaint11: this run's images in the columns of the paper's per-image table."""
    lines = [
        "",
        "### Beside the paper's table (whole images; per image)",
        "",
        "| | " + " | ".join(INPAINT_NAMES) + " | mean |",
        "|---|" + "---|" * (len(INPAINT_NAMES) + 1),
    ]
    by_stem = {r["stem"]: r for r in scores.rows}
    for label, vals in INPAINT_PAPER.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {statistics.fmean(vals):.2f} |")
    for label, getter in (
        (f"DIP, this run ({mode})", lambda r: r.get("dip_psnr")),
        (f"Biharmonic, this run ({mode})", lambda r: r["baselines"].get("Biharmonic", (None,))[0]),
    ):
        vals = [getter(by_stem[s]) if s in by_stem else None for s in INPAINT_NAMES.values()]
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(mean(vals))} |")
    per_image = scores.gaps.per_image
    return lines + [
        "",
        "Gap to the paper's DIP, per image (this run minus paper, dB): "
        + ", ".join(f"{n} {fmt(v - p if v is not None else None)}" for n, v, p in per_image)
        + ".",
    ]


def seeds_words(scores: Scores) -> str:
    seeds = sorted(scores.gaps.seed_means)
    if not seeds:
        return ""
    return (
        f" x {len(seeds)} seeds ({', '.join(map(str, seeds))}; each DIP column is the mean over the runs, "
        f"'{len(seeds)} runs averaged' scores the pixel mean of their restored images)"
    )


def seed_lines(table: Table, scores: Scores) -> list[str]:
    """Several seeds: each seed's table mean, and the runs-averaged column against the paper's."""
    g = scores.gaps
    if not g.seed_means:
        return []
    values = list(g.seed_means.values())
    out = [
        f"- Each seed's mean ({g.main_col}): "
        + ", ".join(f"seed {seed} {v:.2f}" for seed, v in g.seed_means.items())
        + f" dB: the table's mean moves by {max(values) - min(values):.2f} dB from one seed to another."
    ]
    column = f"DIP, {len(values)} runs averaged"
    members = mean(r.get("members_8bit") for r in scores.rows)
    if scores.means.get(column) is not None and members is not None:
        out.append(
            f"- The runs averaged pixel by pixel: {scores.means[column]:.2f} dB, "
            f"{scores.means[column] - members:+.2f} dB over its members scored from the same 8-bit files "
            f"({members:.2f})"
            + (
                f"; the paper's 'averaged over 2 runs' is {table.paper['DIP, averaged over 2 runs']:.2f}: "
                f"**{g.ensemble:+.2f} dB**."
                if g.ensemble is not None
                else "."
            )
        )
    return out


def gap_analysis(table: Table, mode: str, scores: Scores, crop) -> list[str]:
    """Where the gap to the paper comes from, from this run's own numbers."""
    g, it = scores.gaps, scores.iterations
    out = ["", "### Gap to the paper", ""]
    if g.main is not None:
        out.append(f"- Mean gap ({g.main_col}, this run, minus the paper's {g.paper_main:.2f}): **{g.main:+.2f} dB**.")
    if g.ref is not None:
        here, paper = scores.base_means[g.ref[0]], table.paper[g.ref[1]]
        side = None if crop is None else crop if isinstance(crop, int) else crop_size(crop)
        context = f", and that a {side} px crop gives the net less context" if side else ""
        out.append(
            f"- The same classical method on these inputs: {g.ref[0]} {here:.2f} dB here vs "
            f"{paper:.2f} in the paper ({g.inputs_effect:+.2f} dB): that much of the gap comes "
            "from the inputs themselves (crops, image content), not from DIP. The rest, "
            f"{g.main - g.inputs_effect:+.2f} dB, is DIP's own: "
            + (
                "net width, iterations" + context
                if mode == "quick"
                else "the paper's protocol ran here, so one seed's run-to-run spread and implementation details"
            )
            + "."
        )
    if g.raw is not None:
        out.append(
            f"- Without averaging (the final raw iterate, paper {table.paper['DIP']:.2f}): {g.raw:+.2f} dB"
            + (
                f"; less the inputs' {g.inputs_effect:+.2f} dB, {g.raw - g.inputs_effect:+.2f} dB is DIP's own."
                if g.inputs_effect is not None
                else "."
            )
        )
    out += seed_lines(table, scores)
    if g.curve_points:
        points = ", ".join(f"{v:.2f} at iteration {k}" for k, v in g.curve_points.items())
        reach = (
            f"it first reaches the paper's {g.paper_main:.2f} at iteration {g.reaches_paper_at}"
            if g.reaches_paper_at is not None
            else f"it does not reach the paper's {g.paper_main:.2f} within the run"
        )
        out.append(f"- The images' mean {g.main_col} PSNR along the run (from curves.csv): {points}; {reach}.")
    if g.best_baseline is not None:
        out.append(
            f"- DIP against the best baseline on the same inputs ({g.best_baseline}): "
            f"{g.vs_best_baseline:+.2f} dB on the mean."
        )
    if g.done and it:
        out.append(
            f"- Best iterate in the last 10% of the {it} iterations for {len(g.late)} of {g.done} images"
            + (
                f" ({', '.join(g.late)}): these runs were still improving, so more iterations would raise their "
                "numbers."
                if g.late
                else ": the runs peaked before the end."
            )
        )
    if mode == "quick":
        out.append(
            f"- Quick mode differs from the paper in crop ({crop_words(crop)} vs whole images), net "
            f"(skip_small, 0.15M parameters, vs skip128x5, 2.2M) and iterations ({it} vs "
            f"{table.full_iterations}); run MODE=full for the paper's protocol."
        )
    return out


def conventions(table: Table, shave: int | None) -> list[str]:
    """What the scores mean, checked against docs/reference.md (dip_lightning/metrics.py)."""
    out = ["", "### PSNR conventions (checked against docs/reference.md)", ""]
    out.append(
        "- `dip_lightning.metrics.psnr`: float images in [0, 1], the output clamped to [0, 1], MSE over all "
        "channels and pixels, data_range=1, as the reference. The baselines are scored with the same formula "
        "(`dip_lightning.baselines.psnr`)."
    )
    if table.kind == "sr":
        out.append(
            "- SR: `psnr_y_shaved`: Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255, i.e. studio range "
            "[16/255, 235/255] (OpenCV's full-range Y x 219/255 + 16/255, as docs/reference.md), on the DIP output "
            f"and the ground truth, with {shave} pixels shaved on every side at every factor, as "
            "docs/reference.md says the paper's script does (`task.shave`)."
            " LR: PIL Lanczos (antialiased) resize of the HR crop, through 8 bits; the bicubic baseline "
            "upsamples that same LR (the task's `psnr_observed` equals the Bicubic column)."
        )
    if table.kind == "inpaint":
        out.append(
            "- Inpainting: PSNR over the whole image (known and missing pixels), grayscale; the mask is "
            "`input != 0` (docs/reference.md), written as mask files beside the sweep and passed as data.mask."
        )
    if table.kind == "denoise":
        out.append(
            "- Denoising: the paper's own noisy inputs (noisy_sigma25/) are restored as given "
            "(data.observed) and scored against the ground truths (data.image); nothing is re-simulated."
        )
    return out


def write_figure(path: Path, table: Table, rows: list[dict], max_rows: int = 3) -> None:
    """Input / DIP / best baseline / ground truth of the first images whose DIP job finished."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from dip_lightning import baselines as B

    rows = [r for r in rows if r.get("restored") is not None][:max_rows]
    if not rows:
        return
    cols = ["input", "DIP", rows[0]["baseline_name"], "ground truth"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.1 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        clean = r["clean"]
        h, w = clean.shape[:2]
        s = min(h, w, FIGURE_DETAIL)
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
            detail = img[top : top + s, left : left + s]
            ax.imshow(
                np.clip(detail, 0, 1),
                cmap="gray" if detail.ndim == 2 else None,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{table.name}: {' / '.join(cols)} (PSNR dB; centre {s}x{s})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=72, format="png")
    plt.close(fig)
    buf.seek(0)  # a 256-colour palette keeps the tracked figure small (~130 KB instead of ~450 KB)
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
