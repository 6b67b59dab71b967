"""What the Trainer iterates over: chunk sizes, i.e. how many DIP iterations one Lightning step runs.

Running many DIP iterations per Lightning step keeps the Trainer's per-step cost (a few ms) out of the hot loop.
With chunk='auto' the size adapts so that one chunk takes about `target_seconds`: the host then reads metrics,
updates the progress bar and checks stopping about once a second, whatever the device speed.

Checkpoints are written at chunk ends (loop/engine.py), so a chunk also ends at every multiple of each run's
`checkpoint_every` (`checkpoints`: (start iteration, every) per run): checkpoint_every=200 writes at 200, 400, ...,
not at whichever chunk end comes first after them (227 with chunk=auto), a resumed run's included.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

from ..errors import DIPError


class ChunkSchedule:
    def __init__(
        self,
        total: int,
        chunk: int | str = "auto",
        target_seconds: float = 1.0,
        max_chunk: int = 500,
        checkpoints: Sequence[tuple[int, int | None]] = (),
    ):
        """`checkpoints`: (the iteration a run starts at, its checkpoint_every or None) for each run of the loop."""
        if chunk != "auto" and (not isinstance(chunk, int) or chunk < 1):
            raise DIPError(f"chunk={chunk!r} is not valid; expected 'auto' or a positive number of iterations.")
        self.total = max(int(total), 0)
        self.chunk = chunk
        self.target_seconds = target_seconds
        self.max_chunk = max_chunk
        self.checkpoints = [(int(start), int(every)) for start, every in checkpoints if every]

    def to_checkpoint(self, done: int) -> int:
        """Iterations from `done` (run in this loop) to the next multiple of any run's checkpoint_every."""
        return min((every - (start + done) % every for start, every in self.checkpoints), default=self.total - done)

    def __iter__(self) -> Iterator[int]:
        done = 0
        size = 1 if self.chunk == "auto" else int(self.chunk)
        last, prev = None, 1
        while done < self.total:
            if self.chunk == "auto" and last is not None:
                # Lightning prefetches one batch, so this measures the chunk before the previous one: good enough.
                per_iter = (time.perf_counter() - last) / max(prev, 1)
                wanted = int(self.target_seconds / max(per_iter, 1e-6))
                size = max(1, min(self.max_chunk, wanted, 2 * size))
            n = min(size, self.total - done, self.to_checkpoint(done))  # size goes on growing past a cut chunk
            last, prev = time.perf_counter(), n
            done += n
            yield n
