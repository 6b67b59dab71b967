"""K nets of one architecture trained as one: weights and Adam's moments as (K, N) buffers, one row per run.

Why stacked weights with `torch.func.functional_call` (+ `vmap` on CUDA) rather than grouped convolutions or CUDA
streams: it works for every net in `nets/` unchanged (vmap turns each conv with per-run weights into one grouped
conv, and BatchNorm over a vmapped batch keeps each run's own batch statistics, as an unpacked run has); streams
would keep launching every kernel once per run, which is the cost packing removes. Each run's own net module stays
usable: its parameters become views of its row, so its state dict, final output and checkpoint read the live
weights.

On the CPU the nets run one after another (`batched=False`): each run's own module, whose weights and gradients are
views of its rows (backward accumulates into the gradient buffer in place, as DDP's bucket views do), so the
optimizer step and backtracking still run once for the whole pack. Grouped convolutions were slower there than
separate ones (a prototype: 0.53-0.80x of one by one for K=1-8 with skip_small at 64-128 px on 2 CPU cores).

The optimizer is Adam, written here for (K, N) buffers with a per-run learning rate: the same formula, in the same
order, as torch.optim.Adam's single-tensor step (lerp of the first moment, mul/addcmul of the second, bias
corrections, addcdiv).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


class StackedNets:
    def __init__(
        self,
        nets: Sequence[nn.Module],
        lrs: Sequence[float],
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        batched: bool = True,
    ):
        ref = nets[0]
        self.k = len(nets)
        named = list(ref.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        # the functional copy: no weights of its own, BatchNorm without running statistics (dip-run never uses them:
        # BatchNorm stays in training mode) so that vmap sees no in-place update of an unbatched buffer
        self.base = copy.deepcopy(ref).to("meta")
        replace_all_batch_norm_modules_(self.base)
        self.base.train()
        self.buffers = {n: b for n, b in ref.named_buffers() if n.rsplit(".", 1)[-1] not in BN_STATS}  # fixed ones
        self.weight = torch.stack([torch.cat([p.detach().reshape(-1) for p in net.parameters()]) for net in nets])
        self.weight.requires_grad_(batched)  # vmap: gradients reach it through the stacked views
        self.grad = torch.zeros_like(self.weight, requires_grad=False)  # one run at a time: their p.grad views
        for k, net in enumerate(nets):  # each run's module reads its row from now on
            for p, view, grad in zip(
                net.parameters(), self.row_views(self.weight.detach(), k), self.row_views(self.grad, k)
            ):
                p.data = view
                p.grad = grad
        self.nets = list(nets)
        self.exp_avg = torch.zeros_like(self.weight, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.steps = 0
        # float64, as torch.optim.Adam computes lr / bias_correction in Python before the float32 kernel sees it
        self.lr = torch.tensor([float(lr) for lr in lrs], dtype=torch.float64, device=self.weight.device).view(-1, 1)
        self.betas, self.eps, self.weight_decay = tuple(betas), float(eps), float(weight_decay)
        self.batched = batched
        self.snapshot: list[torch.Tensor] | None = None

    def row_views(self, flat: torch.Tensor, k: int) -> list[torch.Tensor]:
        """Row k of a (K, N) buffer as one view per parameter, in the net's parameter order."""
        return [flat[k, o : o + n].view(shape) for o, n, shape in zip(self.offsets, self.sizes, self.shapes)]

    def stacked(self) -> dict[str, torch.Tensor]:
        """name -> (K, *shape): the weights as vmap takes them (views of the weight buffer: gradients flow to it)."""
        return {
            name: self.weight[:, o : o + n].view(self.k, *shape)
            for name, o, n, shape in zip(self.names, self.offsets, self.sizes, self.shapes)
        }

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (K, 1, C, H, W), one input per run -> (K, 1, C_out, H', W')."""
        if self.batched:
            return vmap(lambda p, x: functional_call(self.base, (p, self.buffers), (x,)))(self.stacked(), z)
        return torch.stack([net(z[k]) for k, net in enumerate(self.nets)])

    def zero_grad(self) -> None:
        if self.batched:
            self.weight.grad = None
        else:
            self.grad.zero_()

    def gradient(self) -> torch.Tensor:
        return self.weight.grad if self.batched else self.grad

    @torch.no_grad()
    def adam_step(self, active: torch.Tensor | None = None) -> None:
        """One Adam step for every run at its own learning rate; rows where `active` is False keep their state."""
        self.steps += 1
        w = self.weight.detach()
        grad = self.gradient()
        if self.weight_decay:
            grad = grad.add(w, alpha=self.weight_decay)
        beta1, beta2 = self.betas
        exp_avg = torch.lerp(self.exp_avg, grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        step_size = (self.lr / bias_correction1).to(w.dtype)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        new_w = w.addcdiv(exp_avg * -step_size, denom)  # torch: addcdiv(exp_avg, denom, value=-step_size)
        for old, new in ((w, new_w), (self.exp_avg, exp_avg), (self.exp_avg_sq, exp_avg_sq)):
            old.copy_(new if active is None else torch.where(active[:, None], new, old))

    # Backtracking: the whole state of each run, saved at its good iterations and restored after a collapse,
    # one torch.where per buffer for the whole pack.
    def _state(self) -> list[torch.Tensor]:
        return [self.weight.detach(), self.exp_avg, self.exp_avg_sq]

    @torch.no_grad()
    def save(self, bad: torch.Tensor) -> None:
        if self.snapshot is None:
            self.snapshot = [t.clone() for t in self._state()]
        for snap, t in zip(self.snapshot, self._state()):
            snap.copy_(torch.where(bad[:, None], snap, t))

    @torch.no_grad()
    def restore(self, bad: torch.Tensor) -> None:
        for snap, t in zip(self.snapshot, self._state()):
            t.copy_(torch.where(bad[:, None], snap, t))
