"""What one DIP iteration is made of: kernels, FLOPs and bytes moved, per kind of operation, and the time they allow
on a GPU at its peak rates (a roofline floor, not a measurement of any GPU).

    python experiments/step_anatomy.py                 # skip128x5 at 256 and 512 px; records RESULTS.md
    python experiments/step_anatomy.py --sizes 64 --no-record
    python experiments/step_anatomy.py --profile cuda --precision tf32 --channels-last   # + measured time per kind

The iteration (the framework's hot loop without its bookkeeping: jittered input, forward, MSE, backward, Adam) runs
on the `meta` device, so nothing is computed and any size runs in seconds on a CPU. Every ATen operation that
reaches the dispatcher is counted once: its FLOPs (torch's FLOP counter: convolutions and matrix products) and the
bytes of the tensors it reads and writes (views move nothing and are not counted). A GPU runs each operation as one
or a few kernels, cuDNN's convolutions at their best rate, the rest bound by memory bandwidth; the floor of an
operation is the larger of FLOPs / peak rate and bytes / bandwidth, and the iteration's floor their sum. Kernel
fusion (torch.compile) can remove the bytes of the elementwise and normalisation operations that sit between two
convolutions, never the convolutions' own, so the table also shows what is left without them.

`--profile DEVICE` adds what the same iteration takes there, per kind of operation: torch.profiler's self time of
each ATen operation (on CUDA the time of the kernels it launched), averaged over profiled iterations after a
warm-up, in the given precision and layout. The kernels are those a CUDA graph replays, so on a GPU the column says
where a `cuda_graph=true` iteration spends its time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from _harness import compose  # noqa: E402
from _record import machine, record  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dip_lightning.config.compose import build  # noqa: E402

# Datasheet peak rates (dense TF32 tensor cores, HBM bandwidth) of the GPUs this project borrows.
GPUS = {"H100 SXM": (494.7e12, 3.35e12), "H200": (494.7e12, 4.8e12)}
MEASURED_H200_MS = {256: 5.24, 512: 13.63}  # RESULTS.md, 2nd GPU session: tf32 + channels_last + cuda_graph

KINDS = (  # (kind, substrings of the ATen op name), first match wins
    ("convolution", ("conv",)),  # cuDNN, mkldnn and the slow CPU kernels alike
    ("batch norm", ("batch_norm",)),
    ("padding", ("pad",)),
    ("up-sampling", ("upsample",)),
    ("concatenation", ("cat",)),
    ("optimizer (Adam)", ("_foreach", "addcdiv", "addcmul", "lerp", "sqrt")),
)


def kind_of(name: str) -> str:
    return next((kind for kind, keys in KINDS if any(k in name for k in keys)), "other elementwise")


# Not device work: allocation, the profiler's markers, and Adam reading its step count (a host tensor) as a number
HOST_ONLY = ("empty", "_record_function_enter_new", "_record_function_exit", "_local_scalar_dense")


def moves_no_data(func) -> bool:
    """A view (its result aliases an input without writing it): no kernel, no bytes."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def tensor_bytes(values) -> int:
    flat, _ = torch.utils._pytree.tree_flatten(values)
    return sum(t.numel() * t.element_size() for t in flat if isinstance(t, torch.Tensor))


class ByteCounter(TorchDispatchMode):
    """Per ATen op: how many times it ran and the bytes of its tensor arguments and results."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not moves_no_data(func) and name not in HOST_ONLY:
            self.calls[name] += 1
            self.bytes[name] += tensor_bytes((args, kwargs)) + tensor_bytes(out)
        return out


def skip128x5():
    cfg = compose(["net=skip"])
    return build(cfg.net, output_channels=3), int(cfg.net.input_depth)


def make_iteration(size: int, device: str, precision: str = "fp32", channels_last: bool = False):
    """One DIP iteration of skip128x5 at `size` px on `device` (jitter, forward, MSE, backward, Adam), as a
    function; on a real device with random inputs, the precision (fp32, tf32, bf16 autocast) and layout given."""
    net, depth = skip128x5()
    net = net.to(device).train()
    z = torch.rand(1, depth, size, size, device=device) * 0.1
    target = torch.rand(1, 3, size, size, device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        z = z.contiguous(memory_format=torch.channels_last)
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    opt = torch.optim.Adam(net.parameters(), lr=0.01, foreach=True)
    bf16 = precision == "bf16"
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def iteration():
        noise = torch.randn_like(z)
        with autocast:
            out = net(z + 0.0333 * noise)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return iteration


def count_iteration(size: int) -> dict[str, dict]:
    """Counts of one iteration (after Adam's state exists) per ATen op: calls, bytes, FLOPs."""
    iteration = make_iteration(size, "meta")
    iteration()  # Adam's state is created on the first step: count a later one
    counter, flops = ByteCounter(), FlopCounterMode(display=False)
    with flops, counter:
        iteration()
    flop_by_op = {str(op).split(".")[-1]: n for op, n in flops.get_flop_counts()["Global"].items()}
    return {
        name: {"calls": counter.calls[name], "bytes": counter.bytes[name], "flops": flop_by_op.get(name, 0)}
        for name in counter.calls
    }


def profile_iteration(size: int, device: str, precision: str, channels_last: bool, warmup=20, steps=10) -> dict:
    """Seconds per iteration per ATen op on `device`: torch.profiler's self time (CUDA: of the op's kernels)."""
    from torch.profiler import ProfilerActivity, profile

    iteration = make_iteration(size, device, precision, channels_last)
    cuda = device == "cuda"
    for _ in range(warmup):  # cuDNN's algorithm choice, the allocator, Adam's state
        iteration()
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            iteration()
        if cuda:
            torch.cuda.synchronize()
    seconds: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        if not evt.key.startswith("aten::"):  # kernels and runtime calls are counted under the op that ran them
            continue
        us = getattr(evt, "self_device_time_total", None) if cuda else evt.self_cpu_time_total
        if us is None:  # torch < 2.4 names it after CUDA
            us = evt.self_cuda_time_total
        seconds[evt.key.split("::", 1)[1]] += us / 1e6 / steps
    return seconds


def floor_seconds(flops: float, nbytes: float, gpu: str) -> float:
    peak, bandwidth = GPUS[gpu]
    return max(flops / peak, nbytes / bandwidth)


def table(size: int, ops: dict[str, dict], measured: dict[str, float] | None = None, where: str = "") -> list[str]:
    kinds: dict[str, dict] = defaultdict(
        lambda: {"calls": 0, "bytes": 0, "flops": 0, "floor": defaultdict(float), "measured": 0.0}
    )
    for name, secs in (measured or {}).items():
        kinds[kind_of(name)]["measured"] += secs
    for name, c in ops.items():
        k = kinds[kind_of(name)]
        k["calls"] += c["calls"]
        k["bytes"] += c["bytes"]
        k["flops"] += c["flops"]
        for gpu in GPUS:  # each op's own floor: a convolution is bound by FLOPs, an elementwise op by bytes
            k["floor"][gpu] += floor_seconds(c["flops"], c["bytes"], gpu)
    order = [k for k, _ in KINDS if k in kinds] + [k for k in kinds if k not in dict(KINDS)]
    gpu_cols = " | ".join(f"floor on {g} (ms)" for g in GPUS)
    m_col = f" measured on {where} (ms) |" if measured else ""
    lines = [
        f"**{size}x{size} px** (skip128x5, 3 channels out, Adam)",
        "",
        f"| operations | ATen calls | GFLOP | GB moved | {gpu_cols} |{m_col}",
        "|---|---|---|---|" + "---|" * (len(GPUS) + bool(measured)),
    ]
    total = {"calls": 0, "bytes": 0, "flops": 0, "floor": defaultdict(float), "measured": 0.0}
    for kind in order:
        k = kinds[kind]
        floors = " | ".join(f"{k['floor'][g] * 1e3:.2f}" for g in GPUS)
        m = f" {k['measured'] * 1e3:.2f} |" if measured else ""
        lines.append(f"| {kind} | {k['calls']} | {k['flops'] / 1e9:.1f} | {k['bytes'] / 1e9:.2f} | {floors} |{m}")
        for key in ("calls", "bytes", "flops", "measured"):
            total[key] += k[key]
        for g in GPUS:
            total["floor"][g] += k["floor"][g]
    floors = " | ".join(f"**{total['floor'][g] * 1e3:.2f}**" for g in GPUS)
    m = f" **{total['measured'] * 1e3:.2f}** |" if measured else ""
    lines.append(
        f"| **all** | {total['calls']} | {total['flops'] / 1e9:.1f} | {total['bytes'] / 1e9:.2f} | {floors} |{m}"
    )
    conv = kinds["convolution"]
    lines += [
        "",
        "- Convolutions alone (what fusion cannot remove): "
        + ", ".join(f"{conv['floor'][g] * 1e3:.2f} ms on {g}" for g in GPUS)
        + f"; the other operations move {(total['bytes'] - conv['bytes']) / total['bytes']:.0%} of the bytes.",
    ]
    if size in MEASURED_H200_MS:
        measured = MEASURED_H200_MS[size]
        lines.append(
            f"- Measured on an H200 (`precision=tf32 channels_last=true cuda_graph=true`): {measured:.2f} ms per "
            f"iteration, {measured / (total['floor']['H200'] * 1e3):.1f}x this floor."
        )
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512", help="comma-separated image sizes")
    parser.add_argument("--profile", default=None, help="also time the iteration on this device: cpu | cuda")
    parser.add_argument("--precision", default="fp32", help="for --profile: fp32 | tf32 | bf16")
    parser.add_argument("--channels-last", action="store_true", help="for --profile: NHWC net and input")
    parser.add_argument("--json", default=None, help="also write the tables' markdown and numbers here")
    parser.add_argument("--no-record", action="store_true", help="print only, do not rewrite RESULTS.md")
    args = parser.parse_args(argv)
    if args.profile == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --profile cuda but torch sees no GPU; use --profile cpu, or no --profile.")
    if args.profile not in (None, "cpu", "cuda") or args.precision not in ("fp32", "tf32", "bf16"):
        raise SystemExit(
            f"error: --profile {args.profile!r} --precision {args.precision!r}: expected cpu or cuda, and one of "
            "fp32, tf32, bf16."
        )
    command = shlex.join(["python", "experiments/step_anatomy.py", *(argv if argv is not None else sys.argv[1:])])
    text = [
        "## Anatomy of one DIP iteration (`experiments/step_anatomy.py`)",
        "",
        f"Command: `{command}`."
        " Counted on the meta device (no GPU involved): every ATen operation of one iteration (jitter, forward, "
        "MSE, backward, Adam) with its FLOPs and the bytes it reads and writes in fp32; the floor of an operation "
        "is max(FLOPs / dense TF32 peak, bytes / HBM bandwidth) from the datasheets (H100 SXM: 495 TFLOP/s, "
        "3.35 TB/s; H200: 495 TFLOP/s, 4.8 TB/s), the iteration's floor their sum. A floor, not a forecast: real "
        "convolutions reach a fraction of the peak.",
        "",
    ]
    where = ""
    if args.profile:
        where = machine() + f", {args.precision}" + (" + channels_last" if args.channels_last else "")
    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        ops = count_iteration(size)
        measured = profile_iteration(size, args.profile, args.precision, args.channels_last) if args.profile else None
        results[size] = {"ops": ops, "measured": measured}
        text += [*table(size, ops, measured, where), ""]
    markdown = "\n".join(text)
    print(markdown)
    if args.json:
        Path(args.json).write_text(json.dumps({"markdown": markdown, "sizes": results, "where": where}, indent=1))
    if not args.no_record:
        record("step_anatomy", markdown)
    return markdown


if __name__ == "__main__":
    main()
