"""Signals during a run: SIGTERM (SLURM preemption), Ctrl-C and submitit's preemption signal, noted and acted upon
where the state is consistent, and `Interrupted`, the run stopped by one after writing its checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from .. import early_signal

log = logging.getLogger("dip_lightning")


def under_submitit() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def preemption_signal() -> int | None:
    """The signal submitit's SLURM jobs get before their time limit or a preemption (SUBMITIT_PREEMPT_SIGNAL, USR2
    by default, sent by `sbatch --signal`); None outside such a job."""
    if not under_submitit():
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", None)


class Interrupted(Exception):
    """The run was stopped by a signal after writing its checkpoint."""

    def __init__(self, signum: int, iteration: int, path: Path | None, run_dir: Path | None):
        self.signum, self.iteration, self.path, self.run_dir = signum, iteration, path, run_dir
        super().__init__(
            f"Interrupted by {signal.Signals(signum).name} at iteration {iteration}; checkpoint "
            f"written to {path}. Continue with the same overrides plus resume={run_dir}"
        )


class SignalGuard:
    """SIGTERM (SLURM preemption) and Ctrl-C noted while the loop runs, acted upon at the next iteration, where the
    state is consistent; a second Ctrl-C leaves at once. Replaces Lightning's SIGTERM handler for the loop. In a
    submitit SLURM job, submitit's preemption signal too (USR2, sent before the time limit: sweeps/slurm.py), whose
    handler requeues the job once the checkpoint is written. After the loop, the same guard holds a signal while
    the outputs are written (`then`), and `deliver()` sends it on (the preemption signal not: the run is complete,
    and a requeue would only run it again)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, then: str = "writing the checkpoints after this iteration"):
        self.caught: int | None = None
        self.then = then  # what happens next, for the log line
        self._old: dict[int, Any] = {}

    @classmethod
    def signals(cls) -> tuple[int, ...]:
        preemption = preemption_signal()
        return cls.SIGNALS + ((preemption,) if preemption is not None else ())

    @classmethod
    def handlers(cls) -> dict[int, Any]:
        """The handlers in place now; while dip-run's early guard holds (dip_lightning/early_signal.py), those it
        replaced."""
        replaced = early_signal.replaced()
        return {signum: replaced.get(signum, signal.getsignal(signum)) for signum in cls.signals()}

    def install(self, restore_to: dict[int, Any] | None = None) -> None:
        """`restore_to`: the handlers `restore` puts back (default: those installed now). A signal dip-run's early
        guard noted before this one is this guard's: the loop acts on it first."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._old = dict(restore_to) if restore_to is not None else self.handlers()
        self.caught = self.caught or early_signal.take_over()  # one noted before the run: the loop acts on it first
        for signum in self.signals():
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.caught is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now, without a checkpoint
        self.caught = signum
        log.warning("got %s: %s", signal.Signals(signum).name, self.then)

    def deliver(self) -> None:
        """Send a held signal on to the handlers put back by `restore` (call that first)."""
        if self.caught is not None:
            log.error("%s came while the outputs were written; they are complete.", signal.Signals(self.caught).name)
            if self.caught in self.signals()[len(self.SIGNALS) :]:
                return  # the preemption signal: the job ends now, with its result, instead of being requeued
            os.kill(os.getpid(), self.caught)

    def restore(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}
