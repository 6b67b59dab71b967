"""Speed of skip128x5 DIP denoising: iterations/s and peak memory, dip-run's loop against a plain PyTorch loop, with
channels_last on/off, and what the memory allocator and the thread count change.

Every measurement runs in its own subprocess (the allocator must be chosen before Python starts: GLIBC_TUNABLES,
LD_PRELOAD), and the variants are interleaved round-robin, several rounds, so that load from other processes on a
shared machine hits all of them alike; the table reports ratios of medians against the reference variant
(plain loop, tuned glibc malloc, 1 thread on CPU, channels_last off) of the same size.

    python experiments/bench_speed.py                       # 128 and 256 px on this CPU (~10 min on 2 cores)
    python experiments/bench_speed.py --threads 0           # reference with torch's default threads (idle box)
    python experiments/bench_speed.py --sizes 512,1024      # GPU sizes (--device cuda, the default with CUDA)
    python experiments/bench_speed.py --rounds 3 --steps 30 --no-record
    python experiments/bench_speed.py --sizes 128 --load 1  # threads idle and beside 1 busy process

The same net (seed), image, observation and z are built for both loops exactly as bench_overhead.py does
(`framework_run` / `plain_run`, with _plain_loop.plain_dip_loop).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TUNED = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
ALLOCATORS = {"glibc default": {}, "glibc tuned": {"GLIBC_TUNABLES": TUNED}, "tcmalloc": {"LD_PRELOAD": TCMALLOC}}


# ------------------------------------------------------------------------------------------------ the worker
def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: warm-up, then `steps` timed iterations; peak memory."""
    import resource

    import torch

    sys.path.insert(0, str(HERE))
    from bench_overhead import framework_run, plain_run  # noqa: E402

    if spec["threads"] == "free":  # dip-run's default: the CPUs other work leaves free (dip_lightning/cpu.py)
        from dip_lightning.cpu import set_threads

        set_threads(None)
    elif spec["threads"]:
        torch.set_num_threads(int(spec["threads"]))
    device = spec["device"]
    overrides = ["net=skip", f"data.crop={spec['size']}"]
    if spec["loop"] == "framework":
        framework_run(overrides, spec["warmup"], device)  # warm-up: allocator, thread pool, kernels
        metrics, _ = framework_run(overrides, spec["steps"], device)
        seconds, psnr = metrics["seconds"], metrics["psnr_final"]
    else:
        _, cfg = _compose(overrides, device)
        if spec["channels_last"]:
            _patch_channels_last()
        plain_run(cfg, spec["warmup"], device)
        res = plain_run(cfg, spec["steps"], device)
        seconds, psnr = res["seconds"], res["psnr_gt"]
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "seconds_per_step": seconds / spec["steps"],
        "peak_mb": peak_mb,
        "psnr": psnr,
        "threads": torch.get_num_threads(),
    }


def _compose(overrides, device):
    from _harness import compose
    from _plain_loop import PLAIN_SETTINGS

    return None, compose([*overrides, *PLAIN_SETTINGS, f"trainer.accelerator={device}"])


def _patch_channels_last() -> None:
    """Run the plain loop with the net's weights and z in channels_last layout (NHWC)."""
    import _plain_loop
    import torch

    original = _plain_loop.plain_dip_loop

    def loop(net, z, observed, clean, iterations, **kw):
        net = net.to(memory_format=torch.channels_last)
        return original(net, z.contiguous(memory_format=torch.channels_last), observed, clean, iterations, **kw)

    import bench_overhead

    bench_overhead.plain_dip_loop = loop


# ------------------------------------------------------------------------------------------------ the driver
def variants(sizes: list[int], device: str, threads: int) -> list[dict]:
    """The measurements of one round. The reference is the plain loop, tuned glibc, `threads` threads, NCHW,
    OpenMP's default wait policy (spin, then sleep)."""
    out = []
    for i, size in enumerate(sizes):
        base = {
            "size": size,
            "loop": "plain",
            "channels_last": False,
            "threads": threads,
            "alloc": "glibc tuned",
            "omp_wait": None,
        }
        out.append({**base, "name": "plain loop (reference)"})
        out.append({**base, "loop": "framework", "name": "dip-run loop"})
        out.append({**base, "channels_last": True, "name": "plain, channels_last"})
        if device == "cpu":
            out.append({**base, "alloc": "glibc default", "name": "plain, glibc malloc default"})
            if Path(TCMALLOC).exists():
                out.append({**base, "alloc": "tcmalloc", "name": "plain, tcmalloc"})
            if i == 0 and (os.cpu_count() or 1) > 1:  # the slow cells on a busy machine: smallest size only
                other = 0 if threads == 1 else 1
                out.append({**base, "threads": other, "name": "plain, " + ("all cores" if other == 0 else "1 thread")})
                # OpenMP threads that sleep at once instead of spinning while they wait for a peer that another
                # process has descheduled (what dip-run sets by default)
                out.append(
                    {**base, "threads": 0, "omp_wait": "PASSIVE", "name": "plain, all cores, OMP_WAIT_POLICY=PASSIVE"}
                )
                out.append({**base, "threads": "free", "name": "plain, the free CPUs (dip-run's default)"})
    return out


def measure(spec: dict, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD", "OMP_WAIT_POLICY")}
    env.update(ALLOCATORS[spec["alloc"]])
    if spec.get("omp_wait"):
        env["OMP_WAIT_POLICY"] = spec["omp_wait"]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['name']} at {spec['size']} px failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start
    return result


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", default=None, help="comma-separated image sizes (default 128,256 on CPU, 512,1024 on a GPU)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians are reported)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default by size)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the reference (default: 1 on CPU, where a machine shared with other "
        "processes makes OpenMP's threads wait on each other; 0 = torch's default)",
    )
    parser.add_argument("--no-record", action="store_true", help="print only, do not rewrite RESULTS.md")
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        help="measure the thread cells twice: on the idle machine and beside this many busy processes (other work)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"error: --device {args.device!r} is not known; expected cpu or cuda.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU; use --device cpu.")
    try:
        sizes = [int(s) for s in (args.sizes or ("512,1024" if args.device == "cuda" else "128,256")).split(",")]
    except ValueError:
        raise SystemExit(f"error: --sizes {args.sizes!r} is not valid; expected sizes like 128,256.") from None
    if any(s < 32 or s % 32 for s in sizes):
        raise SystemExit(f"error: --sizes {args.sizes!r}: each size must be a multiple of 32 (skip128x5).")
    if args.device == "cpu" and max(sizes) > 256:
        print("note: 512/1024 px on a CPU take seconds per step; these are GPU sizes.", file=sys.stderr)

    sys.path.insert(0, str(HERE))
    from _record import machine, record

    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    specs = variants(sizes, args.device, threads)
    for spec in specs:
        spec.update(
            device=args.device,
            warmup=args.warmup,
            steps=args.steps or max(3, int(8 * (128 / spec["size"]) ** 2))
            if args.device == "cpu"
            else args.steps or 50,
        )
    if args.load:  # the thread cells, each measured on the idle machine and beside `load` busy processes
        specs = [s for s in specs if s["loop"] == "plain" and s["alloc"] == "glibc tuned" and not s["channels_last"]]
        specs += [{**s, "busy": args.load, "name": f"{s['name']} [{args.load} busy]"} for s in specs]
    results: dict[tuple, list[dict]] = {}
    start = time.perf_counter()
    for rnd, spec in itertools.product(range(args.rounds), specs):
        key = (spec["size"], spec["name"])
        load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(spec.get("busy", 0))]
        try:
            r = measure(spec, timeout=1800)
        finally:
            for p in load:
                p.kill()
        results.setdefault(key, []).append(r)
        print(
            f"round {rnd + 1} {spec['size']} px {spec['name']}: {r['seconds_per_step']:.3f} s/step, peak "
            f"{r['peak_mb']:.0f} MB, PSNR {r['psnr']:.3f} ({r['threads']} threads)",
            flush=True,
        )
    total = time.perf_counter() - start

    rows = []
    for spec in specs:
        runs = results[(spec["size"], spec["name"])]
        busy = f" [{spec['busy']} busy]" if spec.get("busy") else ""
        ref = results[(spec["size"], "plain loop (reference)" + busy)]
        per_round = [r["seconds_per_step"] / q["seconds_per_step"] for r, q in zip(runs, ref)]
        med = statistics.median(r["seconds_per_step"] for r in runs)
        psnr_diff = (
            "n/a"
            if spec["loop"] == "framework"
            else f"{max(abs(r['psnr'] - q['psnr']) for r, q in zip(runs, ref)):.1e}"
        )
        rows.append(
            f"| {spec['size']} | {spec['name']} | {runs[0]['threads']} | {1 / med:.2f} | {med:.3f} | "
            f"{statistics.median(per_round):.3f} ({min(per_round):.2f}-{max(per_round):.2f}) | "
            f"{statistics.median(r['peak_mb'] for r in runs):.0f} | {psnr_diff} |"
        )
    mem = "peak GPU memory allocated (MB)" if args.device == "cuda" else "peak RSS of the process (MB)"
    text = "\n".join(
        [
            "## Speed of skip128x5 denoising (`experiments/bench_speed.py`)"
            + (": threads on a machine shared with other work" if args.load else ""),
            "",
            f"Machine: {machine()}, device `{args.device}`. Command: `python experiments/bench_speed.py"
            f"{' --sizes ' + args.sizes if args.sizes else ''} --rounds {args.rounds}"
            f"{f' --steps {args.steps}' if args.steps else ''}{f' --load {args.load}' if args.load else ''}`; "
            f"{total / 60:.1f} min; reference threads: {threads or 'torch default'}.",
            f"Each cell: its own subprocess (allocator set before Python starts), {args.warmup} warm-up steps, then "
            "the timed steps; variants interleaved round-robin over "
            f"{args.rounds} rounds, so load from other users of this shared machine falls on all of them alike "
            "(absolute it/s vary with that load; the ratios are the result). Ratio = time per step / the plain loop's "
            "(tuned glibc, the reference's threads, NCHW) of the same size and round: < 1 is faster. PSNR diff = "
            "largest |PSNR after the timed steps - the reference's| (0 = identical results; n/a for dip-run's loop, "
            "whose result is read out differently: bench_overhead.py compares the two loops' results)."
            + (
                f" '[{args.load} busy]': measured while {args.load} other process(es) each kept a core busy (a "
                "`while True: pass` loop), against the reference measured the same way."
                if args.load
                else ""
            ),
            "",
            f"| size | variant | threads | it/s | s/step | time ratio (range) | {mem} | PSNR diff (dB) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if not args.no_record:
        record("bench_speed_load" if args.load else "bench_speed", text)


if __name__ == "__main__":
    main()
