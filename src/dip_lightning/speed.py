"""Speed options of the DIP loop: numeric precision, memory layout and torch.compile of the net.

All are top-level config values, off by default (true fp32, NCHW, eager); `experiments/bench_gpu.py` measures what
each gains on a GPU and how far it moves the PSNR, and docs/speed.md "GPU" recommends settings from that table.

- precision=fp32: float32 throughout, TF32 off for convolutions and matrix products (PyTorch itself lets cuDNN use
  TF32 by default; fp32 here means the full 23-bit mantissa, so results do not depend on the GPU generation).
- precision=tf32: float32 tensors, TF32 tensor cores for convolutions and matrix products (Ampere and newer).
- precision=bf16: the net's forward under bfloat16 autocast (weights, optimizer state, loss, metrics, averaging and
  the best iterate stay float32). bf16 has float32's range, so it needs no loss scaling.
- precision=fp16 is refused: float16 needs a gradient scaler, whose overflow check reads a flag on the host every
  iteration, which is what the on-device loop avoids.
- channels_last: the net's weights and input in NHWC layout, what tensor-core convolutions read natively.
- compile: torch.compile of the net (modes default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs); the
  first iterations compile.
- cuda_graph: the whole iteration captured once as a CUDA graph and replayed (loop/cuda_graph.py); CUDA only. With
  compile=default or max-autotune-no-cudagraphs the capture holds the compiled net's fused kernels: the graph removes
  the host's launch cost, the fusion can cut the memory traffic of the elementwise ops (BatchNorm, LeakyReLU,
  padding), 73% of a 512 px iteration's bytes by experiments/step_anatomy.py's count.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DIPError

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OWN_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # compile modes that capture CUDA graphs of their own
LIGHTNING_FP32 = (None, 32, "32", "32-true")


@dataclass(frozen=True)
class SpeedOptions:
    precision: str = "fp32"
    channels_last: bool = False
    compile: str | None = None  # None: eager; else a torch.compile mode
    cuda_graph: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "SpeedOptions":
        """Read and check `precision`, `channels_last`, `compile` (and that trainer.precision is left alone)."""
        precision = str(cfg.get("precision") or "fp32").lower()
        if precision in ("fp16", "16", "16-mixed", "float16", "half"):
            raise DIPError(
                f"precision={cfg.get('precision')!r} is not supported: float16 needs a gradient scaler "
                "whose overflow check syncs the host every iteration. Use precision=bf16 (same speed on "
                "Ampere and newer GPUs, float32's range, no scaling) or tf32."
            )
        if precision not in PRECISIONS:
            raise DIPError(f"precision={cfg.get('precision')!r} is not known; expected one of {', '.join(PRECISIONS)}.")
        trainer_precision = (cfg.get("trainer") or {}).get("precision")
        if trainer_precision not in LIGHTNING_FP32:
            raise DIPError(
                f"trainer.precision={trainer_precision!r} is not used by dip-run (its loop does its own "
                "mixed precision); leave trainer.precision unset and set precision=bf16 or tf32."
            )
        compile_ = cfg.get("compile")
        if compile_ in (None, False, "false", "False", "none", "off"):
            compile_ = None
        elif compile_ is True or compile_ in ("true", "True"):
            compile_ = "default"
        elif compile_ not in COMPILE_MODES:
            raise DIPError(f"compile={compile_!r} is not known; expected false or one of {', '.join(COMPILE_MODES)}.")
        channels_last, graph = cfg.get("channels_last", False), cfg.get("cuda_graph", False)
        for key, value in (("channels_last", channels_last), ("cuda_graph", graph)):
            if not isinstance(value, bool):
                raise DIPError(f"{key}={value!r} is not valid; expected true or false.")
        if graph and compile_ in OWN_GRAPH_MODES:
            raise DIPError(
                f"cuda_graph=true and compile={compile_} do not combine: compile={compile_} captures CUDA graphs "
                "of its own (of the net alone), and a CUDA graph cannot be captured inside another. cuda_graph=true "
                "captures the whole iteration with the compiled net in it: use it with compile=default or "
                f"compile=max-autotune-no-cudagraphs, or use compile={compile_} without cuda_graph."
            )
        return cls(precision, channels_last, compile_, graph)

    def apply_backend_flags(self) -> None:
        """TF32 on or off, process-wide (cuDNN convolutions and cuBLAS matrix products)."""
        tf32 = self.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32

    def autocast(self, device: torch.device):
        if self.precision == "bf16":  # no cast cache inside a captured graph: its casts must replay every time
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not self.cuda_graph)
        return contextlib.nullcontext()

    def describe(self) -> str:
        parts = [self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append(f"compile={self.compile}")
        if self.cuda_graph:
            parts.append("cuda_graph")
        return ", ".join(parts)
