"""The whole DIP iteration as one CUDA graph (`cuda_graph=true`): captured once, then replayed every iteration.

Measured on an H200 (experiments/RESULTS.md, GPU check): at 256 px the eager skip128x5 iteration takes 12-18 ms of
which the GPU works ~4.6 ms; the host launching ~400 kernels one by one is the rest. A replayed graph launches them
all at once: the same iteration of a plain loop ran 2.9x faster.

What the graph holds: the jittered input (from a noise buffer the task fills outside the graph, so the jitter keeps
its own seeded generator), forward, loss, backward, backtracking's decision and snapshot, output averaging, the
PSNRs and the optimizer step (Adam with capturable=True). What stays outside: drawing the jitter, the iteration
hooks (best iterate, early stoppers), which read the graph's static outputs right after each replay, and the
history copy. Warm-up iterations run eagerly on a side stream first, as CUDA graph capture requires (cuDNN's
algorithm choice, the allocator, Adam's state and backtracking's flat buffer all settle there).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from ..errors import DIPError

WARMUP = 3  # eager iterations before the capture


def check_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise DIPError(
            f"cuda_graph=true needs a CUDA device, and this run is on {device.type}: set "
            "trainer.accelerator=gpu, or cuda_graph=false."
        )


def warmup_stream(device: torch.device):
    """A side stream for the warm-up iterations (joined back to the current stream on exit)."""

    @contextlib.contextmanager
    def on_side_stream():
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(device).wait_stream(side)

    return on_side_stream()


class IterationGraph:
    """`body()` captured as a CUDA graph; `replay()` runs it again and returns the tensors it returned (static:
    overwritten by the next replay, so a reader copies what it keeps)."""

    def __init__(self, body: Callable[[], Any]):
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = body()

    def replay(self) -> Any:
        self.graph.replay()
        return self.outputs


def capture(body: Callable[[], Any]) -> IterationGraph:
    return IterationGraph(body)
