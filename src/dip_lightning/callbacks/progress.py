"""Progress once per chunk: a Rich bar on a terminal (one row per run of a pack), a plain log line (every few
seconds) otherwise."""

from __future__ import annotations

import logging
import math
import time

from .. import history as h
from .roles import RunHook

log = logging.getLogger("dip_lightning")


class _SharedBar:
    """One Rich display for every run of the process that shows progress: Rich allows one live display at a time,
    and a pack's runs advance together."""

    progress = None
    users = 0

    @classmethod
    def open(cls):
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return None
        if cls.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            cls.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            cls.progress.start()
        cls.users += 1
        return cls.progress

    @classmethod
    def close(cls) -> None:
        cls.users -= 1
        if cls.users <= 0 and cls.progress is not None:
            cls.progress.stop()
            cls.progress, cls.users = None, 0


class DIPProgress(RunHook):
    def __init__(self, log_seconds: float = 5.0):
        self.log_seconds = log_seconds
        self._bar = None

    def on_run_start(self, run) -> None:
        task = run.task
        self._t0 = self._last_log = time.perf_counter()
        self._start_iteration = task.iteration
        self.total = None if math.isinf(run.iterations) else int(run.iterations)
        self._label = "DIP" if run.label is None else f"DIP {run.label}"
        self._bar = _SharedBar.open()
        if self._bar is not None:
            self._row = self._bar.add_task(self._label, total=self.total, completed=task.iteration, info="")

    def _info(self, task) -> str:
        elapsed = time.perf_counter() - self._t0
        rate = (task.iteration - self._start_iteration) / max(elapsed, 1e-9)
        m = getattr(task, "last_chunk", {})
        parts = [
            f"it {task.iteration}",
            f"{rate:.1f} it/s",
            f"loss {m.get(h.LOSS, math.nan):.4g}",
            f"{h.PSNR_FIT} {m.get(h.PSNR_FIT, math.nan):.2f}",
        ]
        if m.get(h.PSNR_GT) == m.get(h.PSNR_GT):
            parts.append(f"{h.PSNR_GT} {m[h.PSNR_GT]:.2f}")
            if m.get(h.PSNR_GT_AVG) != m.get(h.PSNR_GT):
                parts.append(f"{h.PSNR_GT_AVG} {m[h.PSNR_GT_AVG]:.2f}")
        return "  ".join(parts)

    def on_chunk_end(self, run) -> None:
        task = run.task
        if self._bar is not None:
            self._bar.update(self._row, completed=task.iteration, info=self._info(task))
        elif time.perf_counter() - self._last_log >= self.log_seconds or task.iteration == self.total:
            self._last_log = time.perf_counter()
            prefix = "" if run.label is None else f"{run.label}: "
            log.info("%s%s/%s  %s", prefix, task.iteration, self.total, self._info(task))

    def on_run_end(self, run) -> None:
        if self._bar is not None:
            self._bar = None
            _SharedBar.close()
