"""K nets of one architecture trained as one: weights and Adam's moments as (K, N) buffers, one row per run.

Why stacked weights with `torch.func.functional_call` (+ `vmap` on CUDA) rather than grouped convolutions or CUDA
streams: it works for every net in `nets/` unchanged (vmap turns each conv with per-run weights into one grouped
conv, and BatchNorm over a vmapped batch keeps each run's own batch statistics, as an unpacked run has); streams
would keep launching every kernel once per run, which is the cost packing removes. Each run's own net module stays
usable: its parameters become views of its row, so its state dict, final output and checkpoint read the live
weights.

On the CPU each run goes through its own module (`batched=False`), whose weights and gradients are views of its
rows (backward accumulates into the gradient buffer in place, as DDP's bucket views do), so the optimizer step and
backtracking still run once for the whole pack. Grouped convolutions were slower there than separate ones (0.56-0.59x
for K=4 with skip_small at 64-128 px, one thread). With `workers` > 1 the runs' forward and backward passes run on
that many threads, one intra-op thread each (torch releases the GIL in its kernels; each run's autograd graph is its
own): DIP's small images keep a core busy poorly through intra-op threads (1.13x with 2 threads at 64 px), and
several runs keep every core busy. Each run computes exactly what it computes alone on one thread.

The optimizer is Adam, written here for (K, N) buffers with a per-run learning rate: the same formula, in the same
order, as torch.optim.Adam's single-tensor step (lerp of the first moment, mul/addcmul of the second, bias
corrections, addcdiv). Under cuda_graph (`capturable`) the step count lives on the device, so a captured step's
bias corrections follow it, as torch's capturable Adam's do.

StackedNets takes the same calls from the loop as loop/trainable.SingleNet (see there).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

from .trainable import fit_in_turn

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
        forwards: Sequence[Callable] | None = None,
        compile_mode: str | None = None,
        capturable: bool = False,
        workers: int = 1,
    ):
        ref = nets[0]
        self.k = len(nets)
        named = list(ref.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.strides = [p.stride() for _, p in named]  # channels_last weights keep their layout in the rows
        self.sizes = [p.numel() for _, p in named]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        # the functional copy: no weights of its own, BatchNorm without running statistics (dip-run never uses them:
        # BatchNorm stays in training mode) so that vmap sees no in-place update of an unbatched buffer
        self.base = copy.deepcopy(ref).to("meta")
        replace_all_batch_norm_modules_(self.base)
        self.base.train()
        self.buffers = {n: b for n, b in ref.named_buffers() if n.rsplit(".", 1)[-1] not in BN_STATS}  # fixed ones
        self.weight = torch.empty(self.k, sum(self.sizes), device=next(ref.parameters()).device)
        for k, net in enumerate(nets):
            for p, view in zip(net.parameters(), self.row_views(self.weight, k)):
                view.copy_(p.detach())
        self.weight.requires_grad_(batched)  # vmap: gradients reach it through the stacked views
        self.grad = torch.zeros_like(self.weight, requires_grad=False)  # one run at a time: their p.grad views
        for k, net in enumerate(nets):  # each run's module reads its row from now on
            for p, view, grad in zip(
                net.parameters(), self.row_views(self.weight.detach(), k), self.row_views(self.grad, k)
            ):
                p.data = view
                p.grad = grad
        self.nets = list(nets)
        self.forwards = list(forwards) if forwards is not None else self.nets  # a run's compiled net, or the net
        self.exp_avg = torch.zeros_like(self.weight, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.steps = 0
        self.capturable = capturable
        self.step_count = torch.zeros((), dtype=torch.float64, device=self.weight.device)  # capturable: on device
        # float64, as torch.optim.Adam computes lr / bias_correction in Python before the float32 kernel sees it
        self.lr = torch.tensor([float(lr) for lr in lrs], dtype=torch.float64, device=self.weight.device).view(-1, 1)
        self.betas, self.eps, self.weight_decay = tuple(betas), float(eps), float(weight_decay)
        self.batched = batched
        self.snapshot: list[torch.Tensor] | None = None
        self.workers = 1 if batched else max(1, min(int(workers), self.k))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dip-pack") if self.workers > 1 else None

        def vmapped(params, z):
            return vmap(lambda p, x: functional_call(self.base, (p, self.buffers), (x,)))(params, z)

        # dynamic=False: one pack has one image size (as a single run's compiled net)
        self._vmapped = torch.compile(vmapped, mode=compile_mode, dynamic=False) if compile_mode else vmapped

    def row_views(self, flat: torch.Tensor, k: int) -> list[torch.Tensor]:
        """Row k of a (K, N) buffer as one view per parameter, in the net's parameter order and memory layout."""
        row = flat[k]
        return [
            row.as_strided(shape, stride, row.storage_offset() + o)
            for o, shape, stride in zip(self.offsets, self.shapes, self.strides)
        ]

    def stacked(self) -> dict[str, torch.Tensor]:
        """name -> (K, *shape): the weights as vmap takes them (views of the weight buffer: gradients flow to it)."""
        n = self.weight.shape[1]
        return {
            name: self.weight.as_strided((self.k, *shape), (n, *stride), self.weight.storage_offset() + o)
            for name, o, shape, stride in zip(self.names, self.offsets, self.shapes, self.strides)
        }

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """One input per run, each (1, C, H, W) -> (K, 1, C_out, H', W')."""
        if self.batched:
            return self._vmapped(self.stacked(), torch.stack(list(inputs)))
        return torch.stack([f(z) for f, z in zip(self.forwards, inputs)])

    def backward(self, losses: Sequence[torch.Tensor]) -> None:
        torch.stack(list(losses)).sum().backward()  # each run's gradient is its own loss's

    def fit(self, inputs: list, losses: list, autocast) -> tuple[torch.Tensor, list]:
        """Forward, loss and backward of every run: in turn, or each run on a worker thread."""
        if self._pool is None:
            return fit_in_turn(self, inputs, losses, autocast)

        def one(k: int):
            with autocast():  # autocast and grad mode are per thread
                out = self.forwards[k](inputs[k])
            fit = losses[k](out.float())
            fit[0].backward()  # into run k's rows of the gradient buffer only
            return out, fit

        done = list(self._pool.map(one, range(self.k)))
        return torch.stack([out for out, _ in done]), [fit for _, fit in done]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def zero_grad(self) -> None:
        if self.batched:
            self.weight.grad = None
        else:
            self.grad.zero_()

    def gradient(self) -> torch.Tensor:
        return self.weight.grad if self.batched else self.grad

    def lr_of(self, k: int) -> float:
        return float(self.lr[k])

    def step(self, active: torch.Tensor | None = None) -> None:
        self.adam_step(active)

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
        if self.capturable:  # the bias corrections from the step count on the device: a replayed graph follows it
            self.step_count += 1
            bias_correction1 = 1 - torch.pow(beta1, self.step_count)
            bias_correction2_sqrt = (1 - torch.pow(beta2, self.step_count)).sqrt()
        else:
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

    def _ensure_snapshot(self) -> None:
        if self.snapshot is None:
            self.snapshot = [t.clone() for t in self._state()]

    @torch.no_grad()
    def save(self, bad: torch.Tensor) -> None:
        self._ensure_snapshot()
        for snap, t in zip(self.snapshot, self._state()):
            snap.copy_(torch.where(bad[:, None], snap, t))

    @torch.no_grad()
    def restore(self, bad: torch.Tensor) -> None:
        for snap, t in zip(self.snapshot, self._state()):
            t.copy_(torch.where(bad[:, None], snap, t))

    @torch.no_grad()
    def keep_weights(self, bad: torch.Tensor, unchanged: torch.Tensor) -> None:
        """backtrack_mode=reference: a checked good iterate's weights become its snapshot; a collapsed run's
        weights go back to it (its Adam moments and this step's gradient stay)."""
        self._ensure_snapshot()
        w, snap = self.weight.detach(), self.snapshot[0]
        snap.copy_(torch.where(unchanged[:, None], snap, w))
        w.copy_(torch.where(bad[:, None], snap, w))

    # ---------------------------------------------------------- per-run checkpoint parts, the unpacked format
    def _adam(self, k: int) -> torch.optim.Adam:
        beta1, beta2 = self.betas
        return torch.optim.Adam(
            self.nets[k].parameters(),
            lr=self.lr_of(k),
            betas=(beta1, beta2),
            eps=self.eps,
            weight_decay=self.weight_decay,
        )

    def optimizer_state(self, k: int) -> dict[str, Any]:
        """Run k's Adam state as torch.optim.Adam's state_dict (so it resumes packed or not)."""
        adam = self._adam(k)
        for p, avg, sq in zip(
            self.nets[k].parameters(), self.row_views(self.exp_avg, k), self.row_views(self.exp_avg_sq, k)
        ):
            adam.state[p] = {"step": torch.tensor(float(self.steps)), "exp_avg": avg.clone(), "exp_avg_sq": sq.clone()}
        return adam.state_dict()

    def load_optimizer_state(self, k: int, state: dict[str, Any]) -> None:
        adam = self._adam(k)
        adam.load_state_dict(state)
        for p, avg, sq in zip(
            self.nets[k].parameters(), self.row_views(self.exp_avg, k), self.row_views(self.exp_avg_sq, k)
        ):
            if p in adam.state:
                avg.copy_(adam.state[p]["exp_avg"])
                sq.copy_(adam.state[p]["exp_avg_sq"])
                self.steps = int(adam.state[p]["step"])
        self.step_count.fill_(float(self.steps))

    # The unpacked snapshot's layout (loop/flat_state.py): every weight, then each weight's exp_avg and exp_avg_sq,
    # each tensor in its memory order (channels_last included), as SingleNet's flat buffer holds them.
    def _slices(self, k: int) -> list[tuple[torch.Tensor, slice]]:
        weights = [(self.snapshot[0], slice(o, o + n)) for o, n in zip(self.offsets, self.sizes)]
        moments = [(m, slice(o, o + n)) for o, n in zip(self.offsets, self.sizes) for m in self.snapshot[1:]]
        return weights + moments

    def snapshot_row(self, k: int) -> torch.Tensor | None:
        if self.snapshot is None:
            return None
        return torch.cat([buffer[k, part] for buffer, part in self._slices(k)])

    def load_snapshot_row(self, k: int, flat: torch.Tensor | list | None) -> None:
        if flat is None:
            return
        if isinstance(flat, list):  # checkpoints before the flat buffer: one tensor per entry, the same order
            flat = torch.cat([t.reshape(-1) for t in flat])
        self._ensure_snapshot()
        flat, offset = flat.to(self.weight.device), 0
        for buffer, part in self._slices(k):
            n = part.stop - part.start
            if offset + n <= flat.numel():
                buffer[k, part].copy_(flat[offset : offset + n])
            else:  # a snapshot taken before Adam's state appeared holds the weights only: the moments were zero
                buffer[k, part].zero_()
            offset += n
