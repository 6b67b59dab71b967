"""Packed runs against the same runs one after another: DIP iterations per second summed over the runs.

    python experiments/bench_packing.py                             # CPU: skip_small at 64 and 128 px, K=1,2,4,8
    python experiments/bench_packing.py --device cuda               # GPU: skip_small and skip128x5 at 64-256 px
    python experiments/bench_packing.py --nets skip --sizes 256 --ks 1,8 --json out.json --no-record   # GPU check
    python experiments/bench_packing.py --device cuda --options "precision=tf32 channels_last=true cuda_graph=true"
    python experiments/bench_packing.py --ensemble 4                # also: dip-run ensemble=4 against one run

Per cell: K jobs of the tiny denoising demo that differ in seed (net weights, z, noise), each `--iterations` long;
"one by one" runs each through dip-run's own loop (train.run_prepared) and sums their loop times, "packed" trains
them as one pack (loop.engine.train_runs, the same loop) and takes the pack's loop time. Both in this process,
alternating, after a warm-up; ratio = packed it/s / one-by-one it/s (> 1: packing is faster). Peak GPU memory
of the packed cell. `--ensemble N`: per net and size, the loop time of `ensemble=N` (loop.ensemble.run_ensemble: N
seeds in one pack, their mean written) against one run of the same config (time ratio; N: N runs one by one).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _harness import TINY_NET, compose  # noqa: E402
from _record import machine, record  # noqa: E402

from dip_lightning.run.fit import train_runs  # noqa: E402
from dip_lightning.run.job import run_prepared  # noqa: E402
from dip_lightning.run.prepare import prepare_run  # noqa: E402

NETS = {
    "skip_small": ["net=skip_small"],
    "skip": ["net=skip"],
    "tiny": TINY_NET,
}


OPTIONS: list[str] = []  # --options: speed options for every run of the benchmark, packed and one by one


def configs(
    net: str, size: int, k: int, iterations: int, device: str, extra: tuple[str, ...] = (), threads: int = 1
) -> list:
    common = [
        *NETS[net],
        f"data.crop={size}",
        f"iterations={iterations}",
        "logger=none",
        "callbacks=none",
        f"cpu_threads={threads}" if device == "cpu" else "cpu_threads=null",
        f"trainer.accelerator={device}",
        *OPTIONS,
        *extra,
    ]
    return [compose([*common, f"seed={seed}"]) for seed in range(k)]


def ensemble_cell(net: str, size: int, n: int, iterations: int, device: str, tmp: Path, threads: int) -> dict:
    """ensemble=n's loop time against one run's, the same config and threads."""
    from dip_lightning.run.ensemble import run_ensemble

    (one,) = configs(net, size, 1, iterations, device, threads=threads)
    (ens,) = configs(net, size, 1, iterations, device, (f"ensemble={n}",), threads)
    t_one = run_prepared(prepare_run(one, fresh(tmp)))["seconds"]
    t_ens = run_ensemble(ens, fresh(tmp))["seconds"]
    return {
        "net": net,
        "size": size,
        "threads": threads,
        "ensemble": n,
        "one_run_s": t_one,
        "ensemble_s": t_ens,
        "ratio": t_ens / t_one,
    }


def fresh(tmp: Path) -> Path:
    """A new run folder for every run (a folder holds one run's files)."""
    return Path(tempfile.mkdtemp(dir=tmp))


def one_by_one(cfgs: list, tmp: Path) -> float:
    return sum(run_prepared(prepare_run(cfg, fresh(tmp)))["seconds"] for cfg in cfgs)


def packed(cfgs: list, tmp: Path) -> float:
    results = train_runs([prepare_run(cfg, fresh(tmp)) for cfg in cfgs])
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"packed run failed: {failed[0]}")
    return results[0].get("pack_seconds", results[0]["seconds"])  # a pack of one is the single run's loop


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--nets", default=None, help="skip_small,skip (default: skip_small on CPU, both on GPU)")
    parser.add_argument("--sizes", default=None, help="default 64,128 on CPU, 64,128,256 on GPU")
    parser.add_argument("--ks", default="1,2,4,8", help="pack sizes")
    parser.add_argument("--iterations", type=int, default=None, help="per run (default: 40 on CPU, 200 on GPU)")
    parser.add_argument("--budget", type=float, default=None, help="seconds; later cells are skipped")
    parser.add_argument("--tiny", action="store_true", help="a 3-scale 16-channel net at 64 px, 10 iterations (CI)")
    parser.add_argument("--options", default="", help="speed options for every run, e.g. 'channels_last=true'")
    parser.add_argument(
        "--threads", default=None, help="CPU: torch threads per run and per pack (default 1,2; --tiny 1)"
    )
    parser.add_argument("--ensemble", type=int, default=0, help="also time ensemble=N against one run")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU.")
    gpu = args.device == "cuda"
    OPTIONS[:] = shlex.split(args.options)
    if args.tiny:
        args.nets, args.sizes, args.iterations = args.nets or "tiny", args.sizes or "64", args.iterations or 10
    nets = (args.nets or ("skip_small,skip" if gpu else "skip_small")).split(",")
    sizes = [int(s) for s in (args.sizes or ("64,128,256" if gpu else "64,128")).split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    iterations = args.iterations or (200 if gpu else 40)
    threads = args.threads or ("1" if args.tiny else "1,2")
    thread_counts = [int(t) for t in threads.split(",")] if not gpu else [0]  # GPU: threads do not apply
    if not gpu:
        torch.set_num_threads(1)  # each run sets its own (cpu_threads) from here
    deadline = time.perf_counter() + args.budget if args.budget else float("inf")
    start = time.perf_counter()
    rows, cells, ensemble_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        packed(configs(nets[0], sizes[0], 2, 5, args.device), tmp)  # warm-up: imports, allocator, kernels
        for net, size, threads in [(n, z, t) for n in nets for z in sizes for t in thread_counts]:
            for k in ks:
                cell = {"net": net, "size": size, "threads": threads, "k": k}
                if time.perf_counter() > deadline:
                    cell["skipped"] = "budget"
                    rows.append(f"| {net} | {size} | {threads} | {k} | skipped (budget) | | | |")
                    cells.append(cell)
                    continue
                cfgs = configs(net, size, k, iterations, args.device, threads=threads)
                if gpu:
                    torch.cuda.reset_peak_memory_stats()
                t_pack = packed(cfgs, tmp)
                peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else None
                t_seq = one_by_one(cfgs, tmp)
                its = k * iterations
                cell.update(packed_its=its / t_pack, sequential_its=its / t_seq, ratio=t_seq / t_pack, peak_mb=peak)
                cells.append(cell)
                print(
                    f"{net} {size} px {threads} threads K={k}: packed {its / t_pack:.1f} it/s, one by one "
                    f"{its / t_seq:.1f} it/s, ratio {t_seq / t_pack:.2f}",
                    flush=True,
                )
                rows.append(
                    f"| {net} | {size} | {threads} | {k} | {its / t_seq:.1f} | {its / t_pack:.1f} | "
                    f"**{t_seq / t_pack:.2f}** | {f'{peak:.0f}' if peak is not None else 'n/a'} |"
                )
            if args.ensemble > 1 and time.perf_counter() < deadline:
                e = ensemble_cell(net, size, args.ensemble, iterations, args.device, tmp, threads)
                cells.append(e)
                print(f"{net} {size} px {threads} threads ensemble={args.ensemble}: {e['ratio']:.2f}x", flush=True)
                ensemble_rows.append(
                    f"| {net} | {size} | {threads} | {args.ensemble} | {e['one_run_s']:.2f} | {e['ensemble_s']:.2f} | "
                    f"**{e['ratio']:.2f}** |"
                )
    text = "\n".join(
        [
            "## Packed runs (`experiments/bench_packing.py`)",
            "",
            f"Machine: {machine()}, device `{args.device}`, options `{args.options or 'none'}`. "
            "Command: `python experiments/bench_packing.py "
            f"{shlex.join(argv if argv is not None else sys.argv[1:])}`; {(time.perf_counter() - start) / 60:.1f} min. "
            f"K denoising runs of {iterations} iterations differing in seed; it/s = DIP iterations per second summed "
            "over the K runs (loop time only, set-up excluded); ratio = packed / one by one (> 1: packing is faster). "
            + (
                "On the CPU a pack shares the optimizer step and backtracking; with 2 threads or more its runs' "
                "forward and backward passes run on that many threads (one intra-op thread each), while a run on its "
                "own spends its threads inside each kernel."
                if not gpu
                else "On the GPU a pack's nets run as one vmapped (grouped-convolution) forward and backward."
            ),
            "",
            "| net | size | threads | K | one by one it/s | packed it/s | ratio | peak GPU MB (packed) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            *(
                [
                    "",
                    f"`ensemble={args.ensemble}` (its members in one pack) against one run of the same config: loop "
                    f"seconds, ratio = ensemble / one run ({args.ensemble} runs one by one would take "
                    f"{args.ensemble}x).",
                    "",
                    "| net | size | threads | N | one run s | ensemble s | ratio |",
                    "|---|---|---|---|---|---|---|",
                    *ensemble_rows,
                ]
                if ensemble_rows
                else []
            ),
        ]
    )
    print(text)
    result = {"cells": cells, "markdown": text, "device": args.device, "machine": machine()}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if not args.no_record:
        record("bench_packing" + ("_gpu" if gpu else ""), text)
    return result


if __name__ == "__main__":
    main()
