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
  snapshots. It gets the run as the loop holds it (loop.engine.Member: its task, loggers, iteration count, label).

Every role has a `config_name`: its key under `callbacks:` (dip-run passes it in with `named`), which files its
checkpoint state and labels a second rule's metrics; None for one built outside a config (its class name is used).

Every role is a Lightning callback, so a task fitted by a plain `pl.Trainer(callbacks=[...])` finds its DIP
callbacks among the Trainer's (dip-run passes a single run's that way). Any other object under `callbacks:` is a
plain Lightning callback: the Trainer calls it on the task it fits (single runs only; a pack trains K tasks). An
object that defines a role's method (on_dip_iteration, should_stop, on_chunk_end, ...) without taking the role is
refused (`configured`): the loop would never call it.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pytorch_lightning as pl
import torch
from torch import nn

from ..errors import DIPError

if TYPE_CHECKING:
    from ..loop.engine import Member
    from ..tasks.base import DIPTask


R = TypeVar("R", bound="Role")


@dataclass
class Iteration:
    """What an on-device iteration hook sees of one iteration (all tensors stay on the device; `step` is a host
    int)."""

    step: int
    out: torch.Tensor  # the raw output of this iteration (from the jittered input)
    output: torch.Tensor  # the running result: the averaged output when averaging is on, else `out`
    psnr_out: torch.Tensor | None  # PSNR of `out` against the ground truth, None without one
    psnr_output: torch.Tensor | None  # PSNR of `output` against the ground truth, None without one
    _weights: torch.Tensor | None = None  # the net's weights after this step, flat: made once for every hook

    def flat_weights(self, net: nn.Module) -> torch.Tensor:
        """The net's weights after this iteration's step as one flat tensor (one copy, shared by the hooks)."""
        if self._weights is None:
            self._weights = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
        return self._weights

    def best_candidate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(PSNR, image) of the better of the raw and the averaged output: what "the best iterate" ranks."""
        if self.output is self.out:
            return self.psnr_out, self.out
        averaged_better = self.psnr_output > self.psnr_out
        return (
            torch.where(averaged_better, self.psnr_output, self.psnr_out),
            torch.where(averaged_better, self.output, self.out),
        )


class Role(pl.Callback):
    """What every role shares: the name the callback is configured under."""

    #: its key under `callbacks:`; None when built outside a config (then its class name stands in)
    config_name: str | None = None

    @property
    def state_key(self) -> str:
        """Lightning's key for its state: two rules of one class under different config names keep their own."""
        return self._generate_state_key(name=self.config_name) if self.config_name else super().state_key

    def named(self: R, name: str | None) -> R:
        """This callback, configured under `name` (what its checkpoint state is filed under); returns self."""
        self.config_name = name
        return self


class IterationHook(Role):
    """On-device work after every iteration; its tensors are part of the run's checkpoint.

    `on_dip_iteration` runs after every optimizer step, inside the hot loop: it keeps its state in tensors on the
    output's device and never reads one back to the host (no .item(), float(t), .cpu(), .tolist(), `if t:`), else a
    GPU run waits for every iteration. Creating that state on the first call may read the host once.
    `state_dict` returns every tensor and value it needs to go on after a resume; `load_state_dict` takes it back
    (before the first iteration of the resumed run)."""

    def on_dip_iteration(self, task: "DIPTask", it: "Iteration") -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StoppingRule(IterationHook):
    """Chooses the run's result; with `stop` true it also ends the run once its rule has fired.

    Its `on_dip_iteration` scores the iteration on the device and keeps, in tensors, the iterate it would return
    and the step where its rule fired; `fired()` reads that back (the loop's one host read per chunk);
    `stop_result(task)`, after the loop, returns the choice as a dict: `image` (the chosen output, (1, C, H, W) in
    [0, 1]), `candidates` ({kind: image}, each scored as psnr_stop_<kind> unless the rule uses the ground truth),
    stop_step, stop_reason, stop_iteration and any further numbers for metrics.json; or None when nothing was
    chosen. Its state_dict holds all of that, so a resumed run chooses what an uninterrupted one does."""

    #: its stop_reason in metrics.json, and the prefix of a second rule's metrics
    reason = "rule"
    #: it scores against the ground truth (a run without one cannot use it)
    uses_ground_truth = False
    #: end the run once the rule has fired; false: only report where it would have stopped
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


class RunHook(Role):
    """Host-side work once per chunk of one run (it may read the host: a chunk's history is on the host by then)."""

    def on_run_start(self, run: "Member") -> None:
        pass

    def on_chunk_end(self, run: "Member") -> None:
        pass

    def on_run_end(self, run: "Member") -> None:
        """Called when the run's loop ends, whether it finished, stopped or failed."""


#: the methods the loop calls on each role (the most specific role first): a callback that defines one must take
#: the role
ROLE_METHODS = {
    StoppingRule: ("should_stop", "stop_result"),
    IterationHook: ("on_dip_iteration",),
    RunHook: ("on_run_start", "on_chunk_end", "on_run_end"),
}


def roles_of(callback) -> set[type]:
    """The roles `callback` takes (its classes among IterationHook, StoppingRule and RunHook); empty: a plain
    Lightning callback."""
    return {role for role in ROLE_METHODS if isinstance(callback, role)}


def _defined(callback, role: type) -> list[str]:
    return [m for m in ROLE_METHODS[role] if callable(getattr(type(callback), m, None))]


def claimed_roles(callback) -> set[type]:
    """The roles whose methods `callback`'s class defines, whether or not it takes them."""
    return {role for role in ROLE_METHODS if _defined(callback, role)}


def configured(callback, name: str):
    """A callback built from `callbacks.<name>`: named when it takes a role. One that defines a role's method
    without taking the role (a class that forgot to subclass IterationHook) is refused: the loop would never call
    it, and Lightning would ignore it."""
    missing = claimed_roles(callback) - roles_of(callback)
    if missing:
        role = next(r for r in ROLE_METHODS if r in missing)
        raise DIPError(
            f"callbacks.{name} ({type(callback).__qualname__}) defines {', '.join(_defined(callback, role))} but "
            f"is not a {role.__name__}: the loop would never call it. Subclass "
            f"dip_lightning.callbacks.roles.{role.__name__} "
            "(dip_lightning/callbacks/roles.py says what each role is called with)."
        )
    return callback.named(name) if roles_of(callback) else callback


def iteration_hooks(callbacks: list) -> list[IterationHook]:
    return [c for c in callbacks if isinstance(c, IterationHook)]


def stopping_rules(callbacks: list) -> list[StoppingRule]:
    return [c for c in callbacks if isinstance(c, StoppingRule)]


def run_hooks(callbacks: list) -> list[RunHook]:
    return [c for c in callbacks if isinstance(c, RunHook)]


def lightning_callbacks(callbacks: list) -> list:
    """The callbacks that take no DIP role: what the Trainer gets."""
    return [c for c in callbacks if not isinstance(c, (IterationHook, RunHook))]


@functools.lru_cache(maxsize=None)
def target_is_stopping_rule(target: Any) -> bool | None:
    """Whether a config's `_target_` names a StoppingRule class (the package's or a user's own): True or False, or
    None where that cannot be told (not importable here, or a factory function rather than a class). Not a text:
    False."""
    if not isinstance(target, str):
        return False
    try:
        obj = locate(target)
    except Exception:
        return None
    return issubclass(obj, StoppingRule) if isinstance(obj, type) else None


def locate(path: str) -> Any:
    """The object a dotted `_target_` names (Hydra's lookup, without its error log)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)
