"""The weights and optimizer state as views of one flat buffer, for backtracking.

Backtracking copies the whole training state (weights, Adam's moments) at every good iteration and copies it back
after a collapse, with torch.where so that the device never waits on the host. Done tensor by tensor, that is two
small kernels per tensor and per iteration: skip128x5 has 112 weight and 224 Adam tensors, so backtracking doubled
the operations dispatched per iteration (1404 -> 2768 counted by torch.profiler on the CPU), which is what bounds a
GPU's DIP speed at these sizes. With every tensor a view of one buffer, saving and restoring are one kernel each.

The views keep each tensor's strides (channels_last included), and the Parameter objects stay the same, so the
optimizer, the net's state dict and torch.compile see the same tensors as before.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DIPError


def training_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[object, str | None]]:
    """(owner, key) of every tensor backtracking restores: each weight (key None), then each weight's
    per-element optimizer state: every state tensor of the weight's shape, so Adam and AdamW keep exp_avg and
    exp_avg_sq (and max_exp_avg_sq with amsgrad), SGD with momentum its momentum_buffer, plain SGD nothing. Step
    counts are not restored (tests/test_speed.py checks each of these optimizers)."""
    params = list(net.parameters())
    out: list[tuple[object, str | None]] = [(p, None) for p in params]
    for p in params:
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value) and key != "step" and value.shape == p.shape:
                out.append((p, key))
    return out


def flatten_training_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Move the weights and optimizer state into one flat buffer (values unchanged) and return the buffer."""
    entries = training_state(net, optimizer)
    tensors = [p.data if key is None else optimizer.state[p][key] for p, key in entries]
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1 or any(not _dense(t) for t in tensors):
        raise DIPError(
            f"Backtracking needs the net's weights and optimizer state in one dtype and dense layout; "
            f"found {sorted(map(str, dtypes))}. Set task.backtracking=false for this net."
        )
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    offset = 0
    for (p, key), t in zip(entries, tensors):
        view = flat.as_strided(t.shape, t.stride(), offset)
        view.copy_(t)
        if key is None:
            p.data = view
        else:
            optimizer.state[p][key] = view
        offset += t.numel()
    return flat


def _dense(t: torch.Tensor) -> bool:
    """Whether `t` covers exactly numel() elements of memory (contiguous in some dimension order)."""
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    return t.numel() == 0 or span == t.numel()


def fit_snapshot(snapshot: torch.Tensor | list | None, flat: torch.Tensor) -> torch.Tensor:
    """The backtracking snapshot for `flat`: a copy of it at the start; the same snapshot when it already matches
    (a resumed run); extended with zeros when the optimizer's state has just appeared (it was zero before)."""
    if isinstance(snapshot, list):  # checkpoints before the flat buffer: the same order, one tensor per entry
        snapshot = torch.cat([t.reshape(-1) for t in snapshot]).to(flat.device)
    if snapshot is None:
        return flat.clone()
    if snapshot.numel() == flat.numel():
        return snapshot
    if snapshot.numel() < flat.numel():
        return torch.cat([snapshot, torch.zeros(flat.numel() - snapshot.numel(), dtype=flat.dtype, device=flat.device)])
    raise DIPError(
        f"The backtracking snapshot holds {snapshot.numel()} values but the net and optimizer have "
        f"{flat.numel()}; resume with the overrides of the interrupted run."
    )
