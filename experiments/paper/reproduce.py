"""Reproduce one of the paper's tables through the framework: `dip-run -m` over the images, `dip-gather` on the
sweep, the classical baselines on the same inputs and crops, then a result file and a figure.

    python experiments/paper/reproduce.py --table denoise9 --mode quick [--data ../shared/data] [--seeds 0,1]
    make reproduce TABLE=denoise9 MODE=quick [DATA=../shared/data] [ARGS='--seeds 0,1']

Tables: denoise9, sr_set5_x4, sr_set14_x4, sr_set5_x8, sr_set14_x8, inpaint11. Modes:
- full: the paper's protocol (whole images, skip128x5, the paper's iterations): GPU work;
- quick: centre crops, a narrower net and fewer iterations, one CPU thread per job, so a table runs on a small
  CPU in minutes. Quick numbers check the pipeline and compare DIP with the baselines on the same crops; they are
  not the paper's numbers.

Extra dip-run overrides go after the options (make: ARGS='...'). On a GPU, MODE=full packs the images of one size
(`launcher=packed hydra.launcher.pack=auto`: DIP at 512 px leaves most of a big GPU idle); a `launcher=...`
override chooses another, e.g. `... --mode full launcher=local` for one job at a time.

Writes experiments/paper/results/<table>-<mode>.md and .png; the raw sweep goes to experiments/paper/runs/ (not
tracked). `--sweep-dir <existing sweep>` re-scores a finished sweep without running DIP again.

Baselines: BM3D and NLM (denoising), bicubic and nearest (SR), biharmonic (inpainting), and on denoise9 ZS-N2N, a
small net fitted to each noisy image like DIP (the paper's 2000 iterations; on the DIP device, one CPU thread in
quick mode). `--baselines-only zs-n2n` (or bm3d, nlm, ...) computes the named baselines alone on the inputs and
crops the mode's sweep would use, without DIP, and adds their columns to the existing result file (whose input
column must match):

    python experiments/paper/reproduce.py --table denoise9 --mode quick --baselines-only zs-n2n

The steps, one module each beside this one: tables.py (the paper's tables), collect.py (run or find the sweep, read
its jobs with dip-gather's readers), score.py (per-image rows, baselines, gaps to the paper), render.py (the result
file and figure).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

if not __package__:  # run as a script: sys.path holds this folder; its modules are the package `paper` instead
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

from _record import machine  # noqa: E402

from dip_lightning.errors import DIPError  # noqa: E402
from paper import collect, render, score  # noqa: E402
from paper.tables import MODES, TABLES  # noqa: E402

RESULTS_DIR = collect.HERE / "results"
DEFAULT_DATA = collect.REPO.parent / "shared" / "data"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", required=True, help=f"one of {', '.join(TABLES)}")
    parser.add_argument("--mode", default="quick", help="quick | full")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the benchmark images (default ../shared/data)")
    parser.add_argument("--iterations", type=int, default=None, help="override the mode's number of iterations")
    parser.add_argument("--images", default=None, help="comma-separated image stems (default: all of the table)")
    parser.add_argument("--device", default=None, help="cpu | gpu (default: gpu when CUDA is available)")
    parser.add_argument("--sweep-dir", default=None, help="score an existing sweep instead of running DIP")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where the result .md and .png go")
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="leave out the classical baselines that take seconds per image (BM3D, NLM, biharmonic)",
    )
    parser.add_argument(
        "--no-zs-n2n",
        dest="zs_n2n",
        action="store_false",
        help="leave out ZS-N2N (denoise9), which fits a net per image: minutes per image on a CPU, seconds on a GPU",
    )
    parser.add_argument(
        "--baselines-only",
        default=None,
        metavar="NAMES",
        help="comma-separated baselines (denoise9: bm3d,nlm,zs-n2n; SR: bicubic,nearest; inpaint11: biharmonic) "
        "to compute alone, without DIP, and add as columns to the existing <out>/<table>-<mode>.md",
    )
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=None,
        help="torch CPU threads for ZS-N2N (default: 1 in quick mode on a CPU, as the DIP jobs; else torch's)",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds: one run per image and seed; with two or more the table adds the runs averaged "
        "pixel by pixel (the paper's 'averaged over 2 runs' for denoise9: --seeds 0,1)",
    )
    parser.add_argument(
        "--runs-dir", default=str(collect.RUNS_DIR), help="where the sweep goes (default experiments/paper/runs/)"
    )
    parser.add_argument("overrides", nargs="*", help="extra dip-run overrides (key=value), appended")
    args = parser.parse_args(argv)
    invocation = shlex.join(["python", "experiments/paper/reproduce.py", *(argv if argv is not None else sys.argv[1:])])
    if args.table not in TABLES:
        fail(f"TABLE={args.table!r} is not known; expected one of {', '.join(TABLES)}.")
    if args.mode not in MODES:
        fail(
            f"MODE={args.mode!r} is not known; expected quick (centre crops, minutes on a CPU) or full (the "
            "paper's protocol, GPU work)."
        )
    try:
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        fail(f"--seeds {args.seeds!r} is not valid; expected comma-separated whole numbers, e.g. 0,1.")
    if len(set(seeds)) != len(seeds):
        fail(f"--seeds {args.seeds!r} repeats a seed; expected distinct seeds, e.g. 0,1.")
    table = TABLES[args.table]
    data = Path(args.data).expanduser().resolve()
    if not (data / table.folder).is_dir():
        fail(
            f"DATA={args.data!r}: {data / table.folder} does not exist; expected the benchmark images folder "
            f"(../shared/data, holding {table.folder}/; see docs/reference.md)."
        )
    stems = table.stems(data)
    if not stems:
        fail(f"no ground truths {table.gt.format(stem='*')} under {data / table.folder}.")
    if args.images:
        wanted = args.images.split(",")
        unknown = [s for s in wanted if s not in stems]
        if unknown:
            fail(f"--images {','.join(unknown)} not in {args.table}; expected some of {','.join(stems)}.")
        stems = wanted

    if args.device is None:
        import torch

        args.device = "gpu" if torch.cuda.is_available() else "cpu"
    if args.baseline_threads is not None and args.baseline_threads < 1:
        fail(f"--baseline-threads {args.baseline_threads} is not valid; expected a count >= 1.")
    threads = args.baseline_threads or (1 if args.mode == "quick" and args.device == "cpu" else None)
    if threads:  # the baselines' torch work (ZS-N2N) runs at this many threads, as machine() then says
        import torch

        torch.set_num_threads(threads)
    zs_n2n = table.kind == "denoise" and (
        "zs-n2n" in args.baselines_only.lower() if args.baselines_only is not None else args.zs_n2n
    )
    where = machine() + (f"; ZS-N2N on {args.device}" if zs_n2n else "")
    if args.baselines_only is not None:
        baselines_only(args, table, data, stems, threads, where, invocation)
        return

    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir).resolve()
        if not sweep_dir.is_dir():
            fail(f"--sweep-dir {args.sweep_dir!r} does not exist; expected a finished dip-run -m sweep folder.")
    else:
        try:  # before any job runs: a sweep must have somewhere to go
            Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            fail(f"--runs-dir {args.runs_dir!r} cannot be created ({err.strerror}); expected a writable folder.")
        if args.mode == "full" and args.device == "cpu":
            print(
                f"warning: MODE=full on a CPU: skip128x5 takes seconds per step at 512 px, so {table.name} takes "
                "hours to days here (docs/results.md); it is GPU work.",
                file=sys.stderr,
            )
        iterations = args.iterations or table.iterations(args.mode)
        sweep_dir = collect.run_sweep(
            table, args.mode, data, stems, iterations, args.device, args.overrides, seeds, Path(args.runs_dir)
        )
    try:
        sweep = collect.read_sweep(table, sweep_dir)
        options = score.BaselineOptions(slow=args.baselines, zs_n2n=args.zs_n2n, device=args.device, threads=threads)
        scores = score.score(table, sweep, data, stems, slow=args.baselines, options=options)
    except DIPError as err:
        fail(str(err))
    code = collect.code_version()
    report = render.markdown(table, args.mode, scores, sweep, invocation, code, args.baselines, where)
    out = Path(args.out)
    if scores.failed:  # an incomplete table must not replace a good one: it goes beside the sweep
        out = sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / f"{table.name}-{args.mode}.md", out / f"{table.name}-{args.mode}.png"
    render.write_figure(png, table, scores.rows)
    report += f"\n![input / DIP / best baseline / ground truth]({png.name})\n"
    md.write_text(report)
    print(report)
    print(f"wrote {md} and {png}")
    if scores.failed:
        print(
            f"error: {len(scores.failed)} of {len(scores.rows)} jobs of {table.name} failed "
            f"({', '.join(scores.failed)}; their error.json is in {sweep_dir}): the table has no means, and it was "
            f"written beside the sweep, not to {args.out}. Fix the cause and rerun.",
            file=sys.stderr,
        )
        raise SystemExit(1)


def baselines_only(args, table, data: Path, stems: list[str], threads: int | None, where: str, invocation: str):
    """--baselines-only: the named baselines on the mode's inputs and crops, added to the existing result file."""
    import datetime as dt

    known = score.BASELINES[table.kind]
    names = [n.strip().lower() for n in args.baselines_only.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        fail(
            f"--baselines-only {args.baselines_only!r}: {', '.join(unknown) or 'no name'} is not a baseline of "
            f"{table.name}; expected some of {','.join(known)}."
        )
    if args.sweep_dir:
        fail("--baselines-only runs no DIP and reads no sweep; leave out --sweep-dir.")
    md = Path(args.out) / f"{table.name}-{args.mode}.md"
    if not md.is_file():
        fail(f"{md} does not exist; --baselines-only adds columns to a result file: make the table first.")
    code = collect.code_version()  # of the code that runs, before it runs
    try:
        protocol = collect.mode_protocol(table, args.mode, args.overrides)
        options = score.BaselineOptions(which=names, device=args.device, threads=threads)
        before = md.read_text()
        check = lambda stem, psnr: render.check_input(before, stem, psnr)  # noqa: E731
        rows = score.baseline_rows(table, data, stems, protocol, options, check)
        added = sorted({n for r in rows for n in r["baselines"]}, key=lambda n: n.lower())
        note = (
            f"{render.ADDED} ({', '.join(added)}): `{invocation}` at code commit {code}, "
            f"{dt.date.today().isoformat()}, on {where}; the inputs and crops of the DIP run above (each image's "
            "input PSNR checked against this table's); the other columns are that run's."
        )
        main_col = "DIP averaged" if table.kind == "denoise" else "DIP"
        text = render.add_baseline_columns(before, rows, main_col, note)
    except DIPError as err:
        fail(str(err))
    md.write_text(text)
    print(text)
    print(f"added {', '.join(added)} to {md}")


if __name__ == "__main__":
    main()
