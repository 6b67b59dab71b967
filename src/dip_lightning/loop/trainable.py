"""What the loop trains: the nets of its K runs and their optimizer state, behind one interface.

- SingleNet: one run's net and its torch optimizer (any torch.optim optimizer; capturable Adam under cuda_graph).
  Backtracking's snapshot is one flat buffer that the weights and the optimizer state are views of
  (loop/flat_state.py): saving and restoring are one kernel each.
- StackedNets (loop/stacked.py): K nets of one architecture as (K, N) buffers, with Adam written for them; a
  pack of runs.

Both take the same calls from the loop (loop/iteration.py): `fit(inputs, losses, autocast)` (forward, the
losses, backward: `fit_in_turn`, or a CPU pack's runs on a thread each), `zero_grad()`, `step(active)`,
backtracking's `save(bad)` / `restore(bad)` (clean mode) and `keep_weights(bad, unchanged)` (reference mode),
`close()`, and per run k the checkpoint's parts in the unpacked format: `optimizer_state(k)`,
`load_optimizer_state(k, state)`, `snapshot_row(k)`, `load_snapshot_row(k, flat)`. `bad` is one value per run: a
0-d tensor for SingleNet, a (K,) tensor for StackedNets.
"""

from __future__ import annotations

from typing import Any

import torch

from .flat_state import fit_snapshot, flatten_training_state


def fit_in_turn(trainable, inputs: list, losses: list, autocast) -> tuple[torch.Tensor, list]:
    """Forward every run under `autocast()`, each run's loss (`losses[k](its output in float32)` -> (loss, fit)),
    one backward: the outputs (K, 1, C, H, W) and the fits."""
    with autocast():
        outs = trainable.forward(inputs)
    fits = [loss(outs[k].float()) for k, loss in enumerate(losses)]  # float32 from here (no-op without autocast)
    trainable.backward([loss for loss, _ in fits])
    return outs, fits


class SingleNet:
    def __init__(self, task, optimizer: torch.optim.Optimizer):
        self.task, self.optimizer = task, optimizer
        self._flat: torch.Tensor | None = None  # the flat buffer the weights and optimizer state are views of
        self._snapshot: torch.Tensor | None = None  # backtracking: the flat training state of the last good step
        self._state_count = 0
        self._n_weights = 0  # how many of the flat buffer's values are weights (they come first)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.task._forward(inputs[0]).unsqueeze(0)  # a view: no kernel

    def backward(self, losses: list[torch.Tensor]) -> None:
        losses[0].backward()

    def fit(self, inputs: list, losses: list, autocast) -> tuple[torch.Tensor, list]:
        return fit_in_turn(self, inputs, losses, autocast)

    def close(self) -> None:
        pass

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, active: torch.Tensor | None = None) -> None:
        self.optimizer.step()

    def lr_of(self, k: int = 0) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # Backtracking keeps a copy of the weights and optimizer state from the last good iteration. It is updated
    # and, after a collapse, restored with torch.where: no host sync, and NaNs from a divergence do not leak in.
    def _flatten(self) -> None:
        """The weights and optimizer state as views of one flat buffer, again whenever the optimizer's state has
        changed (Adam's appears at step 0; a resume restores it), with a snapshot that fits it."""
        if self._flat is None or len(self.optimizer.state) != self._state_count:
            net = self.task.net
            self._flat = flatten_training_state(net, self.optimizer)
            self._state_count = len(self.optimizer.state)
            self._snapshot = fit_snapshot(self._snapshot, self._flat)
            self._n_weights = sum(p.numel() for p in net.parameters())  # the weights lead the flat buffer

    @torch.no_grad()
    def save(self, bad: torch.Tensor) -> None:
        self._flatten()
        self._snapshot.copy_(torch.where(bad, self._snapshot, self._flat))

    @torch.no_grad()
    def restore(self, bad: torch.Tensor) -> None:
        self._flat.copy_(torch.where(bad, self._snapshot, self._flat))

    @torch.no_grad()
    def keep_weights(self, bad: torch.Tensor, unchanged: torch.Tensor) -> None:
        """backtrack_mode=reference, before the step: a checked good iterate's weights become the snapshot; after
        a collapse the weights go back to it, while the optimizer's state and this step's gradient stay."""
        self._flatten()
        weights, snapshot = self._flat[: self._n_weights], self._snapshot[: self._n_weights]
        snapshot.copy_(torch.where(unchanged, snapshot, weights))
        weights.copy_(torch.where(bad, snapshot, weights))

    # ------------------------------------------------------------------------------ the checkpoint's parts
    def optimizer_state(self, k: int = 0) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, k: int, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def snapshot_row(self, k: int = 0) -> torch.Tensor | None:
        return self._snapshot

    def load_snapshot_row(self, k: int, snapshot: torch.Tensor | list | None) -> None:
        """A checkpoint's snapshot: a flat tensor (a list of tensors before the flat buffer: fit_snapshot reads
        it); copied, so the caller's state stays as it was."""
        if snapshot is None:
            return
        to = self.task.device
        self._snapshot = (
            [t.to(to, copy=True) for t in snapshot] if isinstance(snapshot, list) else snapshot.to(to, copy=True)
        )
        self._state_count = -1  # flatten the restored weights and optimizer state again at the next step
