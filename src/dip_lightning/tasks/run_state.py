"""What of a task the next iteration depends on (`run_state`, put back by `load_run_state` on resume), and the
history the loop reads once per chunk (`record_chunk`, with its divergence check). A part of DIPTask (tasks/base.py)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .. import history
from ..errors import DIPError

# Columns of the per-iteration history (dip_lightning/history.py); PSNRs against the ground truth are NaN without one.
HISTORY = history.COLUMNS


class RunState:
    """DIPTask's running state and its history."""

    #: the buffers (registered by `prepare`) that change as the run goes: part of `run_state`
    RUN_BUFFERS = ("out_avg", "last_out", "n_backtracks", "best_good_psnr")

    def run_state(self) -> dict[str, Any]:
        """Everything of the task that the next iteration depends on: the iteration count, the net's weights, the
        averaged and last output and backtracking's state (RUN_BUFFERS), the jitter generator's state and the
        history. A checkpoint (checkpoint/state.py) stores it beside what the task does not own (the optimizer state and
        backtracking's snapshot, which the loop's trainable keeps; the callbacks' states; the process's RNG);
        `load_run_state` puts it back.

        The tensors are the live ones, as in `state_dict()`: save or copy them before the run goes on. A subclass
        with running state of its own (anything a resumed run would otherwise recompute differently) extends both
        methods, calling super(), under keys of its own."""
        return {
            "iteration": self.iteration,
            "net": self.net.state_dict(),
            "buffers": {name: getattr(self, name) for name in self.RUN_BUFFERS},
            "jitter_gen": self.jitter_gen.get_state(),
            "history": self.history,
            **({"z": self.z} if self.input_changes else {}),  # optimised or replaced: part of the state
        }

    def load_run_state(self, state: dict[str, Any]) -> None:
        """Put a `run_state()` back into this task, prepared (`prepare`) and on its device (`on_fit_start`); the
        state's tensors may be on any device. A state that does not fit this task's net or output shape is a
        DIPError."""
        try:
            self.net.load_state_dict(state["net"])
        except RuntimeError as err:  # the run identity check catches a changed net first: a last line of defence
            raise DIPError(f"the state was written for another net ({str(err).splitlines()[0]})") from None
        for name in self.RUN_BUFFERS:
            saved, buffer = state["buffers"][name], getattr(self, name)
            if buffer.shape != saved.shape:
                raise DIPError(
                    f"the state holds a {tuple(saved.shape)} {name} but this task makes {tuple(buffer.shape)} "
                    "(another image or crop)"
                )
            buffer.copy_(saved)
        self.iteration = int(state["iteration"])
        self.jitter_gen.set_state(state["jitter_gen"])
        self.history = history.upgrade({k: list(v) for k, v in state["history"].items()})  # older names: RENAMED
        if self.input_changes:
            if "z" not in state:
                raise DIPError(
                    "the state was written without task.optimize_input (it holds no optimised z) or without this "
                    "regularizer, which changes z"
                )
            with torch.no_grad():
                self.z.copy_(state["z"])
        self._check_count = None  # derived again from the restored iteration and backtracks

    # --------------------------------------------------------------------------------------------- chunk end
    def record_chunk(self, values: torch.Tensor, lr: Callable[[], float]) -> None:
        """Append a chunk's history rows (read to the host), after the divergence check (`lr()` names the
        learning rate in its error)."""
        n = values.shape[0]
        first = self.iteration - n
        loss = history.column(values, history.LOSS)
        if not self.backtracking and not torch.isfinite(loss).all():
            bad_at = first + int((~torch.isfinite(loss)).nonzero()[0])
            raise DIPError(
                f"The loss became non-finite (divergence) at iteration {bad_at} with optimizer lr={lr():g}. Lower "
                "optimizer.lr, or set task.backtracking=true to restore the last good weights and continue."
            )
        self.history[history.ITERATION].extend(range(first, self.iteration))
        for key in HISTORY:
            self.history[key].extend(history.column(values, key).tolist())
        self.last_chunk = {key: history.column(values, key)[-1].item() for key in HISTORY}
