"""A callback that timestamps chunk ends, so a benchmark can leave warm-up (cuDNN autotuning, compilation) out."""

from __future__ import annotations

import time

from dip_lightning.callbacks.roles import RunHook


class ChunkTimer(RunHook):
    """(iteration, seconds) at every chunk end; the chunk's history read has synchronised the device there."""

    last: "ChunkTimer | None" = None  # the instance of the latest run (dip-run builds it from the config)

    def __init__(self):
        self.marks: list[tuple[int, float]] = []
        ChunkTimer.last = self

    def on_chunk_end(self, run) -> None:
        self.marks.append((run.task.iteration, time.perf_counter()))

    def seconds_per_iteration(self, after: int) -> float:
        """Time per iteration from the first chunk end at or after iteration `after` to the last chunk end."""
        start = next((m for m in self.marks if m[0] >= after), None)
        end = self.marks[-1]
        if start is None or end[0] <= start[0]:
            raise ValueError(f"no chunk ends after iteration {after} to time (marks: {self.marks[:5]}...)")
        return (end[1] - start[1]) / (end[0] - start[0])
