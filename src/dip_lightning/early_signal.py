"""Ctrl-C and SIGTERM from dip-run's start until a run's own guard (checkpoint/signals.SignalGuard) takes over.

Before its loop a run is imports and set-up. Python's own Ctrl-C raises KeyboardInterrupt at whatever line runs,
and where that is a finalizer or a library's callback Python drops it (an "Exception ignored" note): the run then
went on to its end and exited 0. So dip-run notes the signal from its start (`install`) and the run's guard takes
it over (`take_over`): the loop acts on it at its first iteration, with a checkpoint, and dip-run exits 128 +
the signal. A second Ctrl-C still leaves at once. Standard library only: dip-run installs it before importing
anything heavy.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_replaced: dict[int, Any] | None = None  # the handlers the early guard replaced, while it holds
_caught: int | None = None


def _on_signal(signum, frame) -> None:
    global _caught
    if _caught is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: leave now
    _caught = signum


def install() -> None:
    """Note SIGTERM and Ctrl-C from now on (main thread only), until `take_over` or `end`."""
    global _replaced, _caught
    if threading.current_thread() is not threading.main_thread() or _replaced is not None:
        return
    _replaced = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _caught = None
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


def replaced() -> dict[int, Any]:
    """The handlers the early guard replaced while it holds ({} when it does not)."""
    return dict(_replaced or {})


def take_over() -> int | None:
    """For the guard that replaces this one: the signal noted so far (None: none); the early guard ends (its
    successor installs its own handlers)."""
    global _replaced, _caught
    caught, _replaced, _caught = _caught, None, None
    return caught


def end() -> int | None:
    """End the early guard where no run's guard took over: its replaced handlers back; the signal it noted."""
    held = _replaced
    caught = take_over()
    for signum, handler in (held or {}).items():
        signal.signal(signum, handler)
    return caught
