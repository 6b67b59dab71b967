"""Speed options on a GPU: iterations/s, peak memory and numerics of skip128x5 denoising, dip-run's loop against a
plain PyTorch loop, for each precision, memory layout, cudnn.benchmark, torch.compile and CUDA graph setting.

    python experiments/bench_gpu.py                          # 256 and 512 px on the GPU; records RESULTS.md
    python experiments/bench_gpu.py --sizes 256 --no-record --json speed.json --budget 120
    python experiments/bench_gpu.py --compile --options "precision=tf32 channels_last=true"   # torch.compile cells
    python experiments/bench_gpu.py --device cpu --tiny      # the CPU smoke mode (tiny net, 64 px) that CI runs

Everything runs in this one process (a GPU's speed does not depend on the allocator or thread settings that
bench_speed.py measures on the CPU, and one process pays CUDA's start-up once). Per cell: warm-up iterations (cuDNN
autotuning, compilation), then timed ones: dip-run's time comes from chunk-end timestamps after the warm-up
(experiments/_timing.py), the plain loop's from a separate timed call. The two reference cells (plain and dip-run,
both fp32) alternate over `--rounds` rounds, as their ratio is the framework's overhead; option cells run once.

Numerics: every cell reports PSNR against the ground truth after its iterations (the same seed, net, z and
observation everywhere); a second table runs the paper's denoising settings (averaging, backtracking) for
`--numerics-iterations` at the first size for each precision, twice in fp32 to show the run-to-run spread that
cuDNN's non-deterministic kernels give at the same precision.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _harness import TINY_NET, compose  # noqa: E402
from _plain_loop import PLAIN_SETTINGS, graphed_dip_loop, plain_dip_loop  # noqa: E402
from _record import machine, record  # noqa: E402
from _timing import ChunkTimer  # noqa: E402

from dip_lightning.run.job import run  # noqa: E402
from dip_lightning.run.prepare import build_run  # noqa: E402

# The speed cells' work per iteration: jitter, forward, MSE, backward, Adam, PSNRs; no averaging or backtracking,
# the same for both loops (bench_overhead.py).


@dataclass
class Variant:
    name: str
    loop: str  # plain | graph | dip
    options: list[str] = field(default_factory=list)  # dip-run overrides (dip), or precision=... (plain, graph)
    reference: bool = False  # one of the two reference cells: repeated over the rounds

    @property
    def precision(self) -> str:
        return next((o.split("=", 1)[1] for o in self.options if o.startswith("precision=")), "fp32")


def speed_variants(device: str) -> list[Variant]:
    cl, bench = "channels_last=true", "trainer.benchmark=true"
    out = [
        Variant("plain loop, fp32 (reference)", "plain", ["precision=fp32"], reference=True),
        Variant("dip-run loop, fp32", "dip", ["precision=fp32"], reference=True),
        Variant("plain loop, torch defaults (cuDNN TF32 on)", "plain", ["precision=torch-default"]),
        Variant("dip-run, tf32", "dip", ["precision=tf32"]),
        Variant("dip-run, bf16", "dip", ["precision=bf16"]),
        Variant("dip-run, tf32 + channels_last", "dip", ["precision=tf32", cl]),
        Variant("dip-run, bf16 + channels_last", "dip", ["precision=bf16", cl]),
        Variant("dip-run, tf32 + channels_last + cudnn.benchmark", "dip", ["precision=tf32", cl, bench]),
        Variant("dip-run, bf16 + channels_last + cudnn.benchmark", "dip", ["precision=bf16", cl, bench]),
    ]
    if device == "cuda":
        out.append(Variant("plain loop, whole iteration as one CUDA graph, tf32", "graph", ["precision=tf32"]))
        out.append(Variant("dip-run, fp32 + cuda_graph", "dip", ["precision=fp32", "cuda_graph=true"]))
        out.append(
            Variant("dip-run, tf32 + channels_last + cuda_graph", "dip", ["precision=tf32", cl, "cuda_graph=true"])
        )
        out.append(
            Variant("dip-run, bf16 + channels_last + cuda_graph", "dip", ["precision=bf16", cl, "cuda_graph=true"])
        )
        # the compiled net's fused kernels inside the captured iteration (compiles in the warm-up iterations)
        for precision in ("tf32", "bf16"):
            out.append(
                Variant(
                    f"dip-run, {precision} + channels_last + compile + cuda_graph",
                    "dip",
                    [f"precision={precision}", cl, "compile=default", "cuda_graph=true"],
                )
            )
    return out


def compile_variants(options: list[str], modes: tuple[str, ...]) -> list[Variant]:
    """The compile cells, beside the plain fp32 reference and the same options without compile."""
    base = " ".join(options) or "fp32"
    return [
        Variant("plain loop, fp32 (reference)", "plain", ["precision=fp32"], reference=True),
        Variant(f"dip-run, {base}", "dip", options),
        *[Variant(f"dip-run, {base} compile={mode}", "dip", [*options, f"compile={mode}"]) for mode in modes],
    ]


# ------------------------------------------------------------------------------------------------------ cells
def base_overrides(size: int, device: str, tiny: bool) -> list[str]:
    net = ["net=skip", *TINY_NET] if tiny else ["net=skip"]
    return [*net, f"data.crop={size}", f"trainer.accelerator={device}", "seed=0"]


def set_plain_precision(precision: str) -> None:
    """The plain loop's TF32 flags: fp32 = off, tf32 = on, torch-default = PyTorch's own (cuDNN on, cuBLAS off)."""
    cudnn, matmul = {"fp32": (False, False), "tf32": (True, True), "torch-default": (True, False)}[precision]
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def run_plain(variant: Variant, base: list[str], warmup: int, steps: int, device: str) -> dict:
    """The plain (or graphed) loop on the net, z and observation that dip-run builds from the same config."""
    cfg = compose([*base, *PLAIN_SETTINGS])
    set_plain_precision(variant.precision)
    loop = graphed_dip_loop if variant.loop == "graph" else plain_dip_loop
    results = []
    for n in (warmup, steps):  # the first call warms up cuDNN and the allocator
        net, _, task, data = build_run(cfg)
        task.prepare(data)
        dev = torch.device(device)
        net.to(dev)
        results.append(
            loop(
                net,
                task.z.to(dev),
                task.observed.to(dev),
                task.clean.to(dev),
                n,
                lr=float(cfg.optimizer.lr),
                reg_noise_std=float(cfg.task.reg_noise_std),
            )
        )
    return {"seconds_per_step": results[1]["seconds"] / steps, "psnr": results[1]["psnr_gt"], "iterations": steps}


def run_dip(overrides: list[str], warmup: int, steps: int) -> tuple[dict, dict]:
    """dip-run's loop; time per iteration from the chunk ends after `warmup` iterations."""
    cfg = compose([*overrides, f"iterations={warmup + steps}", "+callbacks.timer._target_=_timing.ChunkTimer"])
    with tempfile.TemporaryDirectory() as tmp:
        metrics = run(cfg, tmp)
    return {
        "seconds_per_step": ChunkTimer.last.seconds_per_iteration(warmup),
        "psnr": metrics["psnr_final"],
        "iterations": warmup + steps,
    }, metrics


def measure(variant: Variant, size: int, args) -> dict:
    base = base_overrides(size, args.device, args.tiny)
    steps, warmup = args.steps_for(size), args.warmup
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if variant.loop == "dip":
        result, _ = run_dip([*base, *PLAIN_SETTINGS, *variant.options], warmup, steps)
    else:
        result = run_plain(variant, base, warmup, steps, args.device)
    result["wall"] = time.perf_counter() - start
    result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    return result


def numerics(args, size: int, deadline: float) -> list[dict]:
    """The paper's denoising settings for N iterations, per precision; fp32 twice (the same-precision spread)."""
    runs = [
        ("fp32", ["precision=fp32"]),
        ("fp32, second run", ["precision=fp32"]),
        ("tf32 + channels_last", ["precision=tf32", "channels_last=true"]),
        ("bf16 + channels_last", ["precision=bf16", "channels_last=true"]),
    ]
    if args.device == "cuda":  # a replayed graph runs the same kernels: shown, not assumed
        runs += [
            ("fp32 + cuda_graph", ["precision=fp32", "cuda_graph=true"]),
            ("tf32 + channels_last + cuda_graph", ["precision=tf32", "channels_last=true", "cuda_graph=true"]),
            *[
                (
                    f"{p} + channels_last + compile + cuda_graph",
                    [f"precision={p}", "channels_last=true", "compile=default", "cuda_graph=true"],
                )
                for p in ("tf32", "bf16")
            ],
        ]
    if args.tiny:  # CI: the table's logic, not its figures
        runs = [runs[0], runs[3]]
    if args.numerics:
        wanted = [n.strip() for n in args.numerics.split(",")]
        unknown = sorted(set(wanted) - {name for name, _ in runs})
        if unknown:
            raise SystemExit(f"error: --numerics {unknown} not known; expected some of {[n for n, _ in runs]}.")
        runs = [r for r in runs if r[0] in wanted]
    base = [
        *base_overrides(size, args.device, args.tiny),
        "logger=none",
        "callbacks=none",
        "task.sigma=25",
        "task.exp_weight=0.99",
        "task.backtracking=true",
        "task.reg_noise_std=0.0333",
        "optimizer.lr=0.01",
    ]
    rows = []
    for name, options in runs:
        if time.perf_counter() > deadline:
            rows.append({"name": name, "skipped": "budget"})
            continue
        cfg = compose([*base, *options, f"iterations={args.numerics_iterations}"])
        with tempfile.TemporaryDirectory() as tmp:
            m = run(cfg, tmp)
        rows.append(
            {
                "name": name,
                "options": options,
                "psnr_final": m["psnr_final"],
                "psnr_best": m["psnr_best"],
                "iterations_per_second": m["iterations_per_second"],
                "backtracks": m["backtracks"],
            }
        )
        print(
            f"numerics {name}: final {m['psnr_final']:.3f} dB, best {m['psnr_best']:.3f} dB, "
            f"{m['iterations_per_second']:.1f} it/s",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------------------------------- tables
def speed_table(cells: list[dict], sizes: list[int]) -> list[str]:
    rows = [
        "| size | variant | it/s | ms/step | time / plain fp32 | peak GPU MB | PSNR after the steps (dB) | "
        "PSNR - dip-run fp32 (dB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        mine = [c for c in cells if c["size"] == size]
        ref = [c for c in mine if c["name"] == "plain loop, fp32 (reference)" and "seconds_per_step" in c]
        dip32 = [c for c in mine if c["name"] == "dip-run loop, fp32" and "seconds_per_step" in c]
        ref_s = statistics.median(c["seconds_per_step"] for c in ref) if ref else None
        dip_psnr = dip32[0]["psnr"] if dip32 else None
        for name in dict.fromkeys(c["name"] for c in mine):
            runs = [c for c in mine if c["name"] == name]
            done = [c for c in runs if "seconds_per_step" in c]
            if not done:
                why = runs[0].get("error") or f"skipped ({runs[0].get('skipped')})"
                rows.append(f"| {size} | {name} | {why[:160]} | | | | | |")
                continue
            s = statistics.median(c["seconds_per_step"] for c in done)
            spread = (
                f" ({min(c['seconds_per_step'] for c in done) * 1e3:.2f}-"
                f"{max(c['seconds_per_step'] for c in done) * 1e3:.2f}, {len(done)} rounds)"
                if len(done) > 1
                else ""
            )
            ratio = f"{s / ref_s:.3f}" if ref_s else "n/a"
            peak = f"{done[0]['peak_mb']:.0f}" if done[0].get("peak_mb") is not None else "n/a"
            diff = f"{done[0]['psnr'] - dip_psnr:+.3f}" if dip_psnr is not None and done[0]["loop"] == "dip" else ""
            rows.append(
                f"| {size} | {name} | {1 / s:.1f} | {s * 1e3:.2f}{spread} | {ratio} | {peak} | "
                f"{done[0]['psnr']:.3f} | {diff} |"
            )
    return rows


def numerics_table(rows: list[dict], size: int, iterations: int) -> list[str]:
    out = [
        f"Numerics: the paper's denoising settings (sigma 25, averaging 0.99, backtracking, jitter 1/30, lr 0.01) "
        f"at {size} px for {iterations} iterations, one seed; difference against the first fp32 run.",
        "",
        "| precision | PSNR final (averaged, dB) | PSNR best (dB) | final - fp32 (dB) | it/s | backtracks |",
        "|---|---|---|---|---|---|",
    ]
    ref = next((r for r in rows if "psnr_final" in r), None)
    for r in rows:
        if "psnr_final" not in r:
            out.append(f"| {r['name']} | skipped ({r['skipped']}) | | | | |")
            continue
        out.append(
            f"| {r['name']} | {r['psnr_final']:.3f} | {r['psnr_best']:.3f} | "
            f"{r['psnr_final'] - ref['psnr_final']:+.3f} | {r['iterations_per_second']:.1f} | "
            f"{r['backtracks']} |"
        )
    return out


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="comma-separated image sizes (default 256,512; tiny: 64)")
    parser.add_argument("--steps", type=int, default=None, help="timed iterations per cell (default by size)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations per cell (default 50)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the two reference cells")
    parser.add_argument("--numerics-iterations", type=int, default=None, help="default 1800 (tiny: 20); 0: none")
    parser.add_argument(
        "--numerics", default=None, help="comma-separated names of the numerics runs to do (default: all)"
    )
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated substrings: only the speed cells whose name holds one (the two references always run)",
    )
    parser.add_argument("--compile", action="store_true", help="the torch.compile cells instead of the others")
    parser.add_argument("--options", default="", help="dip-run overrides the compile cells build on")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds; cells that would start later are skipped and listed as such",
    )
    parser.add_argument("--tiny", action="store_true", help="a 3-scale 16-channel net at 64 px, few steps (CI)")
    parser.add_argument("--json", default=None, help="write every cell's numbers here (after each cell)")
    parser.add_argument(
        "--cells-from",
        default=None,
        help="take the speed cells from this earlier --json file "
        "instead of measuring them (then only the numerics run)",
    )
    parser.add_argument("--no-record", action="store_true", help="print only, do not rewrite RESULTS.md")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {args.device!r} is not known; expected cpu or cuda.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU; use --device cpu (with --tiny on a small CPU).")
    sizes = [int(s) for s in (args.sizes or ("64" if args.tiny else "256,512")).split(",")]
    args.warmup = args.warmup if args.warmup is not None else (5 if args.tiny else 50)
    args.steps_for = lambda size: args.steps or (10 if args.tiny else max(100, int(300 * (256 / size) ** 2)))
    if args.numerics_iterations is None:
        args.numerics_iterations = 20 if args.tiny else 1800
    deadline = time.perf_counter() + args.budget if args.budget else float("inf")
    start = time.perf_counter()

    # tiny (CI, on a CPU): one compile mode, as compiling takes a minute or more there
    modes = ("default",) if args.tiny else ("default", "reduce-overhead")
    variants = compile_variants(shlex.split(args.options), modes) if args.compile else speed_variants(args.device)
    if args.tiny and not args.compile:  # CI: every kind of cell once (plain, dip-run, each precision), not every mix
        variants = [
            v
            for v in variants
            if v.reference
            or v.name in ("dip-run, bf16 + channels_last", "dip-run, tf32 + channels_last + cudnn.benchmark")
        ]
    if args.variants:  # a short GPU lease measures what is new; the references keep the ratios comparable
        keys = [k.strip() for k in args.variants.split(",") if k.strip()]
        variants = [v for v in variants if v.reference or any(k in v.name for k in keys)]
    plan = []  # (round, size, variant): the reference pair alternates every round, the others run in round 0
    for rnd in range(args.rounds):
        for size in sizes:
            plan += [(rnd, size, v) for v in variants if v.reference or rnd == 0]
    cells: list[dict] = []
    if args.cells_from:
        earlier = json.loads(Path(args.cells_from).read_text())
        cells, sizes, plan = earlier["cells"], earlier["sizes"], []

    def save(**more) -> None:  # after every cell: a run stopped at its time limit keeps what it did
        if args.json:
            Path(args.json).write_text(json.dumps({"cells": cells, "sizes": sizes, **more}, indent=1))

    for rnd, size, variant in plan:
        cell = {"size": size, "name": variant.name, "loop": variant.loop, "options": variant.options, "round": rnd}
        if time.perf_counter() > deadline:
            cell["skipped"] = "budget"
        else:
            try:
                cell.update(measure(variant, size, args))
                print(
                    f"{size} px {variant.name}: {cell['seconds_per_step'] * 1e3:.2f} ms/step, PSNR "
                    f"{cell['psnr']:.3f}, {cell['wall']:.1f} s",
                    flush=True,
                )
            except Exception as err:  # one broken option must not cost the others' numbers
                cell["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                print(f"{size} px {variant.name}: FAILED {cell['error']}", flush=True)
        cells.append(cell)
        save()
    numeric_rows = [] if args.compile or not args.numerics_iterations else numerics(args, sizes[0], deadline)

    title = (
        "## torch.compile on a GPU (`experiments/bench_gpu.py --compile`)"
        if args.compile
        else "## Speed options on a GPU (`experiments/bench_gpu.py`)"
    )
    text = [
        title,
        "",
        f"Machine: {machine()}, device `{args.device}`. Command: "
        f"`python experiments/bench_gpu.py {shlex.join(argv if argv is not None else sys.argv[1:])}`; "
        f"{(time.perf_counter() - start) / 60:.1f} min. skip128x5{' (tiny: 3x16)' if args.tiny else ''} denoising, "
        f"{args.warmup} warm-up iterations (compilation, cuDNN autotuning) then the timed ones; time / plain "
        "fp32 < 1 is faster than the plain PyTorch loop in full fp32 (TF32 off). PSNR after the cell's "
        "iterations from the same seed, net, z and observation; the plain loops' PSNR is of the jittered "
        "output, dip-run's of the output from the clean z, so compare PSNRs within a loop kind.",
        "",
        *speed_table(cells, sizes),
    ]
    if numeric_rows:
        text += ["", *numerics_table(numeric_rows, sizes[0], args.numerics_iterations)]
    markdown = "\n".join(text)
    print(markdown)
    result = {
        "cells": cells,
        "numerics": numeric_rows,
        "markdown": markdown,
        "device": args.device,
        "machine": machine(),
        "sizes": sizes,
    }
    save(numerics=numeric_rows, markdown=markdown, device=args.device, machine=machine())
    if not args.no_record:
        record("bench_gpu_compile" if args.compile else "bench_gpu", markdown)
    return result


if __name__ == "__main__":
    main()
