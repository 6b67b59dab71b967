"""Progress once per chunk: a Rich bar on a terminal, a plain log line (every few seconds) otherwise."""

from __future__ import annotations

import logging
import math
import time

from pytorch_lightning import Callback

from .. import history as h

log = logging.getLogger("dip_lightning")


class DIPProgress(Callback):
    def __init__(self, log_seconds: float = 5.0):
        self.log_seconds = log_seconds
        self._bar = None

    def on_train_start(self, trainer, task) -> None:
        from rich.console import Console

        self._t0 = self._last_log = time.perf_counter()
        self._start_iteration = task.iteration
        self.total = trainer.datamodule.iterations if trainer.datamodule is not None else None
        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]DIP"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("dip", total=self.total, completed=task.iteration, info="")

    def _info(self, task) -> str:
        elapsed = time.perf_counter() - self._t0
        rate = (task.iteration - self._start_iteration) / max(elapsed, 1e-9)
        m = getattr(task, "last_chunk", {})
        parts = [
            f"it {task.iteration}",
            f"{rate:.1f} it/s",
            f"loss {m.get(h.LOSS, math.nan):.4g}",
            f"psnr_obs {m.get(h.PSNR_OBSERVED, math.nan):.2f}",
        ]
        if m.get(h.PSNR_GT) == m.get(h.PSNR_GT):
            parts.append(f"psnr_gt {m[h.PSNR_GT]:.2f}")
            if m.get(h.PSNR_GT_AVG) != m.get(h.PSNR_GT):
                parts.append(f"psnr_avg {m[h.PSNR_GT_AVG]:.2f}")
        return "  ".join(parts)

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=task.iteration, info=self._info(task))
        elif time.perf_counter() - self._last_log >= self.log_seconds or task.iteration == self.total:
            self._last_log = time.perf_counter()
            log.info("%s/%s  %s", task.iteration, self.total, self._info(task))

    def on_train_end(self, trainer, task) -> None:
        self._close()

    def on_exception(self, trainer, task, exception) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
