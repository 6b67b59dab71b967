"""After each job of a sweep, what it held is freed before its worker process takes the next job.

A failed job's exception keeps its frames, and with them its net, images and optimizer state, in reference cycles
that only Python's cycle collector frees, and it runs when Python's own allocation counts say so, not when the GPU
is full: the next job in the same worker then ran out of memory although it fits alone (a 512 px job's OOM, then a
64 px job "can't allocate"). So at every job's end (a Hydra callback, conf/train.yaml): the failed job's traceback
is written to its log and dropped, the cycles are collected, and CUDA's cached blocks are given back.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback

from ..run.job import release

log = logging.getLogger("dip_lightning")


class ReleaseAfterJob(Callback):
    def on_job_end(self, config, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if HydraConfig.get().mode != RunMode.MULTIRUN:  # a single run: the process ends, its traceback is shown
            return
        error = getattr(job_return, "_return_value", None) if job_return.status == JobStatus.FAILED else None
        if isinstance(error, BaseException):
            log.error("job crashed", exc_info=(type(error), error, error.__traceback__))  # into the job's log
        release(error if isinstance(error, BaseException) else None)
