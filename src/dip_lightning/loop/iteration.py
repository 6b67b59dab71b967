"""The DIP iteration of K >= 1 runs: the one implementation a single run, a pack and an ensemble all use.

Each run keeps its own task (observation, z, operator, jitter, averaging, backtracking decision, history) and its
own iteration hooks; the trainable (loop/trainable.py) holds the nets and the optimizer: one run's net and torch
optimizer (K = 1), or K stacked nets with one Adam step for all. All work stays on the device: the history rows go
into a chunk tensor that the host reads once per chunk (loop/engine.py).

A run that has stopped is masked, not removed: it is still computed in the forward pass (rebuilding the stack
without it would copy every other run's state and change the shapes a GPU has tuned for), its optimizer state no
longer changes (`active`), and its hooks, averaging and history no longer run.

cuda_graph=true captures the whole iteration of every running run once, after the warm-up, and replays it; when
a run stops, the set of runs changes, so the next iterations warm up and capture again (loop/cuda_graph.py).
"""

from __future__ import annotations

import math

import torch

from ..callbacks.roles import Iteration
from . import cuda_graph


class Iterations:
    """`hooks`: each run's iteration hooks (callbacks.roles.IterationHook: the best iterate, stopping rules),
    called with the task and its Iteration after each step; `limits`: each run's iteration count."""

    def __init__(self, tasks: list, trainable, speed, limits: list[float] | None = None, hooks: list | None = None):
        self.tasks, self.trainable, self.speed = list(tasks), trainable, speed
        self.hooks = [list(h) for h in hooks] if hooks is not None else [[] for _ in self.tasks]
        self.limits = list(limits) if limits is not None else [math.inf] * len(self.tasks)
        self.running = [t.iteration < n for t, n in zip(self.tasks, self.limits)]
        self.active: torch.Tensor | None = None  # (K,) bool once a run of a pack has stopped: its rows stay
        self._graph = None  # cuda_graph=true: the captured iteration, once the warm-up is done
        self._eager_steps = 0
        self._constants: dict[bool, torch.Tensor] = {}
        # built once, not per iteration: each run's data term, and the forward's autocast
        self._losses = [t.fit_loss for t in self.tasks]  # the data term (and a regulariser's term)
        self._autocast = lambda: self.speed.autocast(self.device)
        if not all(self.running):
            self._update_active()

    @classmethod
    def alone(cls, task, optimizer: torch.optim.Optimizer, hooks=()) -> "Iterations":
        """One prepared task with its optimizer and iteration hooks, to drive by hand (a notebook, a test) with
        `once()`."""
        from .trainable import SingleNet

        return cls([task], SingleNet(task, optimizer), task.speed, hooks=[hooks])

    def once(self) -> torch.Tensor:
        """One iteration of the first run; its history row (loss, PSNR to the observation[, PSNRs to the ground
        truth])."""
        from ..history import COLUMNS

        hist = torch.full((len(self.tasks), 1, len(COLUMNS)), math.nan, device=self.device)
        self.run(hist, 0)
        return hist[0, 0, : 2 if self.tasks[0].clean is None else len(COLUMNS)]

    @property
    def device(self) -> torch.device:
        return self.tasks[0].observed.device

    def live(self) -> list[int]:
        return [k for k, on in enumerate(self.running) if on]

    def stop(self, k: int) -> None:
        """Run k runs no more (its state stays as it is); a captured graph of the old set of runs is dropped."""
        if self.running[k]:
            self.running[k] = False
            self._update_active()
            self._graph, self._eager_steps = None, 0

    def _update_active(self) -> None:
        if len(self.tasks) > 1:  # a host-to-device copy, once per stopped run
            self.active = torch.tensor(self.running, device=self.device)

    # -------------------------------------------------------------------------------------------- the hot loop
    def run(self, hist: torch.Tensor, i: int) -> list[int]:
        """One iteration of every running run, its history row written to hist[k, i]; returns the runs' indices."""
        live = self.live()
        for k in live:
            self.tasks[k].draw_jitter()  # outside any graph: the jitter keeps its own seeded generator
            self.tasks[k].regularizer.before_iteration(self.tasks[k])  # DIP-SURE's probe, likewise
        if self._graph is not None:
            results = self._graph.replay()
        elif self.speed.cuda_graph:
            with cuda_graph.warmup_stream(self.device):
                results = self._step(live, eager=True)
            self._eager_steps += 1
            if self._eager_steps >= cuda_graph.WARMUP:  # later iterations replay this capture
                self.trainable.zero_grad()  # the graph's backward allocates the gradients in its pool
                self._graph = cuda_graph.capture(lambda: self._step(live, eager=False))
        else:
            results = self._step(live, eager=True)
        for k, done in zip(live, results):
            task = self.tasks[k]
            if self.hooks[k]:  # after the step, which leaves these outputs alone
                it = Iteration(task.iteration, done.out, done.output, done.psnr_gt, done.psnr_avg)
                self._run_hooks(task, self.hooks[k], it)
            hist[k, i, : done.row.shape[0]] = done.row  # without ground truth the PSNR columns stay NaN
            task.iteration += 1
            task.regularizer.after_iteration(task, done.out)  # aSeqDIP's input update: outside any captured graph
            if task.iteration >= self.limits[k]:
                self.stop(k)
        return live

    @staticmethod
    @torch.no_grad()
    def _run_hooks(task, hooks: list, it: Iteration) -> None:
        for hook in hooks:
            hook.on_dip_iteration(task, it)

    def _step(self, live: list[int], eager: bool) -> list[tuple]:
        """Everything of an iteration that runs on the device and can be captured as one CUDA graph: jittered
        inputs, forward, losses, backward, backtracking, averaging, PSNRs, optimizer step. `eager`: not captured
        (a run's first iteration starts its average from its output)."""
        tasks, trainable = self.tasks, self.trainable
        trainable.zero_grad()
        outs, fits = trainable.fit([t.net_input() for t in tasks], self._losses, self._autocast)
        done = [
            tasks[k].after_backward(outs[k], fits[k][0], fits[k][1], first=eager and tasks[k].iteration == 0)
            for k in live
        ]
        bads = [d.bad for d in done]
        if all(b is None for b in bads):
            trainable.step(self.active)
        elif tasks[live[0]].backtrack_mode == "reference":  # then the step applies the collapsed iterate's gradient
            unchanged = [tasks[k]._unchanged for k in live]
            trainable.keep_weights(self._per_run(live, bads, False), self._per_run(live, unchanged, True))
            trainable.step(self.active)
        else:
            bad = self._per_run(live, bads, False)
            trainable.save(bad)
            trainable.step(self.active)
            trainable.restore(bad)
        return done

    def _per_run(self, live: list[int], values: list, fill: bool) -> torch.Tensor:
        """One 0-d bool per running run as the trainable takes it: the value itself for one run, else a (K,)
        stack with `fill` for runs that are stopped or decide nothing."""
        if len(self.tasks) == 1:
            return values[0]
        if fill not in self._constants:
            self._constants[fill] = torch.full((), fill, dtype=torch.bool, device=self.device)
        by_run = dict(zip(live, values))
        return torch.stack(
            [by_run[k] if by_run.get(k) is not None else self._constants[fill] for k in range(len(self.tasks))]
        )
