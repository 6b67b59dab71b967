"""The roles a DIP callback can take, and what the loop (dip_lightning/loop/engine.py) calls on each.

A callback takes a role by subclassing its class; the loop finds callbacks by these classes, never by probing for
methods. Every run of a pack has its own callback objects, so a callback always sees one run.

- IterationHook: runs on the device after every iteration's optimizer step (`on_dip_iteration`), keeps its
  running state in tensors (no host read in the hot loop) and hands that state to the checkpoint
  (`state_dict` / `load_state_dict`). BestIterate is one.
- StoppingRule: an IterationHook that chooses the run's result and may end the run. The loop asks
  `should_stop()` once per chunk (its one host read) and stops that run alone; after the loop, `stop_result(task)`
  gives the chosen iterate. `attach(task)` runs once before the first iteration (a rule that changes the run, as
  self-validation's held-out pixels do, does it there).
- RunHook: host-side work once per chunk (`on_chunk_end`) between `on_run_start` and `on_run_end`: progress, image
  snapshots. It gets the run (train.PreparedRun: its task, loggers, config and folder).

Any other object under `callbacks:` is handed to Lightning's Trainer as a plain Lightning callback (single runs
only: its hooks see the loop's LightningModule, whose `tasks` hold the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..tasks.base import DIPTask, Iteration
    from ..train import PreparedRun


class IterationHook:
    """On-device work after every iteration; its tensors are part of the run's checkpoint."""

    def on_dip_iteration(self, task: "DIPTask", it: "Iteration") -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StoppingRule(IterationHook):
    """Chooses the run's result; with `stop` true it also ends the run once its rule has fired."""

    reason = "rule"
    uses_ground_truth = False
    stop = True

    def attach(self, task: "DIPTask") -> None:
        """Before the first iteration, once the task is prepared: change the run if the rule needs to."""

    def fired(self) -> bool:
        """Whether the rule has fired (a host read: the loop asks once per chunk)."""
        raise NotImplementedError

    def should_stop(self) -> bool:
        """Whether the loop should end this run now."""
        return self.stop and self.fired()

    def stop_result(self, task: "DIPTask") -> dict | None:
        """The chosen iterate (`image`, `candidates`, stop_step, ...); None when nothing was chosen."""
        raise NotImplementedError


class RunHook:
    """Host-side work once per chunk of one run."""

    def on_run_start(self, run: "PreparedRun") -> None:
        pass

    def on_chunk_end(self, run: "PreparedRun") -> None:
        pass

    def on_run_end(self, run: "PreparedRun") -> None:
        """Called when the run's loop ends, whether it finished, stopped or failed."""


def iteration_hooks(callbacks: list) -> list[IterationHook]:
    return [c for c in callbacks if isinstance(c, IterationHook)]


def stopping_rules(callbacks: list) -> list[StoppingRule]:
    return [c for c in callbacks if isinstance(c, StoppingRule)]


def run_hooks(callbacks: list) -> list[RunHook]:
    return [c for c in callbacks if isinstance(c, RunHook)]


def lightning_callbacks(callbacks: list) -> list:
    """The callbacks that take no DIP role: what the Trainer gets."""
    return [c for c in callbacks if not isinstance(c, (IterationHook, RunHook))]
