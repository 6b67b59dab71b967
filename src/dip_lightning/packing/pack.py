"""A pack: several prepared DIP runs trained together as one batched model, each finishing as an unpacked run.

Every run keeps its own task (observation, z, operator, averaging, backtracking decision, history), its own best
iterate and early stoppers and its own learning rate; only the net's forward/backward and the optimizer step are
shared (packing/stacked.py). A run that has stopped (its early stopper fired, its iteration count is reached, or it
failed) is masked: it is still computed in the batched forward (rebuilding the pack without it would copy every
other run's state and, on a GPU, change the shapes that cuDNN has tuned for) but its state no longer changes, and the
pack ends when every run has stopped.

Each run ends through the same code as an unpacked run (train.finish_run): the same outputs, collapse check and
metrics.json, plus `pack` (the pack's size) and its `seconds` share of the pack's loop (by iterations run).
Checkpoints are written per run in the unpacked format, so a packed run resumes packed or unpacked.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning import Callback
from torch import nn

from ..checkpoint import CHECKPOINT, Interrupted, checkpoint_state, restore_checkpoint, save_checkpoint
from ..data.schedule import ChunkSchedule
from ..errors import DIPError
from ..run_identity import MAY_CHANGE, _flatten, _under
from ..tasks.base import HISTORY
from .stacked import StackedNets

log = logging.getLogger("dip_lightning")

ADAM = "torch.optim.Adam"
# Config values that may differ inside one pack (besides what may change on a resume): each run has its own.
PER_RUN = (
    "seed",
    "optimizer.lr",
    "task.reg_noise_std",
    "task.reg_noise_schedule",
    "task.exp_weight",
    "task.backtrack_drop_db",
    "task.backtracking",
    "task.seed",
    "data.image",
    "data.observed",
    "data.mask",
    "data.flash",
    "data.no_flash",
    "callbacks",
    "iterations",
    "data.iterations",
)


def pack_key(r) -> str | None:
    """What the runs of one pack must share (task, net, shapes, optimizer apart from lr, ...) as a string; None
    when the run cannot be packed at all (it then runs on its own). `r` is a train.PreparedRun."""
    cfg = r.cfg
    if cfg.optimizer.get("_target_") != ADAM or cfg.optimizer.get("amsgrad") or cfg.optimizer.get("maximize"):
        return None
    if r.speed.channels_last or r.speed.compile or r.speed.cuda_graph:
        return None
    if r.task.backtracking and (
        r.task.backtrack_mode != "clean" or r.task.backtrack_check_every != 1 or r.task.backtrack_skip_every
    ):
        return None  # the pack's backtracking is the clean mode at every iteration
    if r.task.optimize_input:
        return None  # the pack stacks the nets' weights, not each run's z
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    # everything but the per-run values and how runs are logged or checkpointed; the pack runs with one Trainer
    # config, so that stays in
    shared = {
        k: v
        for k, v in _flatten(plain).items()
        if not _under(k, PER_RUN) and (not _under(k, MAY_CHANGE) or _under(k, ("trainer",)))
    }
    shared.update(
        task=type(r.task).__name__,
        output=list(r.task.out_avg.shape),
        input=list(r.task.z.shape),
        net_output=r.task.net_output_channels(),
        start=r.checkpointing.start_iteration,
    )
    return json.dumps(shared, sort_keys=True, default=str)


def group_packs(runs: list, size: int) -> list[list[int]]:
    """Indices of `runs` in packs of at most `size` sharing their pack_key; unpackable runs alone."""
    groups: dict[str, list[int]] = {}
    alone: list[list[int]] = []
    for i, r in enumerate(runs):
        key = pack_key(r)
        if key is None:
            alone.append([i])
        else:
            groups.setdefault(key, []).append(i)
    packs = [idx[j : j + size] for idx in groups.values() for j in range(0, len(idx), size)]
    return packs + alone


class PackedDIP(pl.LightningModule):
    """The pack's loop as a LightningModule: one Lightning step runs a chunk of packed iterations."""

    def __init__(self, runs: list):
        super().__init__()
        self.automatic_optimization = False
        self.runs = runs
        self.tasks = nn.ModuleList([r.task for r in runs])  # Lightning moves every run's buffers and net
        self.iterations = [int(r.cfg.iterations) for r in runs]
        self.failed: dict[int, Exception] = {}
        self.running = [t.iteration < n for t, n in zip(self.tasks, self.iterations)]
        self.nets: StackedNets | None = None
        self.batched: bool | None = None  # vmap; None: on a GPU for two runs or more (set when the device is known)

    def configure_optimizers(self):
        return None

    def on_fit_start(self) -> None:
        for task in self.tasks:
            task.on_fit_start()
        if self.batched is None:  # a pack of one through vmap ran at 0.44x of the unpacked run (H200, 256 px)
            self.batched = self.device.type == "cuda" and len(self.runs) > 1

    def on_train_start(self) -> None:
        # here, not in on_fit_start: the Trainer sets every gradient to None in between (its _run_stage), and the
        # unstacked path keeps views of the pack's gradient buffer in each p.grad
        opt = self.runs[0].cfg.optimizer
        self.nets = StackedNets(
            [t.net for t in self.tasks],
            [float(r.cfg.optimizer.lr) for r in self.runs],
            betas=tuple(opt.get("betas", (0.9, 0.999))),
            eps=float(opt.get("eps", 1e-8)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
            batched=self.batched,
        )
        for k, r in enumerate(self.runs):
            state = r.checkpointing.resume_state
            if state is not None:
                restore_checkpoint(
                    self.tasks[k],
                    state,
                    r.checkpointing.resume_from,
                    lambda sd, k=k: self._load_adam(k, sd),
                    r.callbacks,
                )
                self._load_snapshot(k, state["task"]["snapshot"])  # the pack does the tasks' backtracking
                log.info(
                    "resumed %s from %s at iteration %d",
                    r.run_dir,
                    r.checkpointing.resume_from,
                    self.tasks[k].iteration,
                )
                r.checkpointing.resume_state = None
        self.running = [t.iteration < n for t, n in zip(self.tasks, self.iterations)]
        self.active = torch.tensor(self.running, device=self.device)
        self.start_iterations = [t.iteration for t in self.tasks]
        self._loop_start = self._last_log = time.perf_counter()

    def on_train_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.loop_seconds = time.perf_counter() - self._loop_start

    # ---------------------------------------------------------------------------------------------- the loop
    def training_step(self, batch: Any, batch_idx: int) -> None:
        n = int(batch)
        hist = torch.full((len(self.tasks), n, len(HISTORY)), float("nan"), device=self.device)
        ran = [0] * len(self.tasks)
        for i in range(n):
            if not any(self.running):
                break
            for k in self.pack_iteration(hist, i):
                ran[k] += 1
        values = hist.cpu()  # the one host read per chunk
        for k, task in enumerate(self.tasks):
            if ran[k]:
                try:
                    task.record_chunk(values[k, : ran[k]], lambda k=k: float(self.runs[k].cfg.optimizer.lr))
                except DIPError as err:  # this run diverged: it fails alone, the others go on
                    self._stop(k, err)
            for stopper in (c for c in self.runs[k].callbacks if hasattr(c, "stop_result")):
                if self.running[k] and stopper.stop and stopper.fired_at is not None and int(stopper.fired_at) >= 0:
                    self._stop(k)
        if not any(self.running):
            self.trainer.should_stop = True
        if time.perf_counter() - self._last_log > 5:
            self._last_log = time.perf_counter()
            log.info(
                "pack of %d: iterations %s, %d running",
                len(self.tasks),
                ",".join(str(t.iteration) for t in self.tasks),
                sum(self.running),
            )

    def pack_iteration(self, hist: torch.Tensor, i: int) -> list[int]:
        """One iteration of every running run; returns their indices."""
        tasks, nets = self.tasks, self.nets
        live = [k for k, on in enumerate(self.running) if on]
        for k in live:
            tasks[k].draw_jitter()
        z = torch.stack([t.net_input() for t in tasks])
        with tasks[0].speed.autocast(self.device):
            outs = nets.forward(z)
        fits = [t.operator.loss(outs[k].float(), t.observed) for k, t in enumerate(tasks)]
        nets.zero_grad()
        torch.stack([loss for loss, _ in fits]).sum().backward()  # each run's gradient is its own loss's
        done = {
            k: tasks[k].after_backward(outs[k], fits[k][0], fits[k][1], first=tasks[k].iteration == 0) for k in live
        }
        bad = None
        if any(done[k][5] is not None for k in live):
            no = torch.zeros((), dtype=torch.bool, device=self.device)
            bad = torch.stack([done[k][5] if k in done and done[k][5] is not None else no for k in range(len(tasks))])
            nets.save(bad)
        nets.adam_step(None if all(self.running) else self.active)
        if bad is not None:
            nets.restore(bad)
        for k in live:
            out, output, psnr_gt, psnr_avg, row, _ = done[k]
            tasks[k].run_hooks(out, output, psnr_gt, psnr_avg)
            hist[k, i, : row.shape[0]] = row
            tasks[k].iteration += 1
            if tasks[k].iteration >= self.iterations[k]:
                self._stop(k)
        return live

    def _stop(self, k: int, error: Exception | None = None) -> None:
        self.running[k] = False
        self.active = torch.tensor(self.running, device=self.device)  # a host-to-device copy, once per stopped run
        if error is not None:
            self.failed[k] = error

    # ------------------------------------------------------------------------- per-run state, unpacked format
    def job_state(self, k: int) -> dict[str, Any]:
        """Run k's checkpoint, in the format an unpacked run writes (so it resumes packed or not)."""
        task, r, nets = self.tasks[k], self.runs[k], self.nets
        adam = self._adam(k)
        for p, avg, sq in zip(
            task.net.parameters(), nets.row_views(nets.exp_avg, k), nets.row_views(nets.exp_avg_sq, k)
        ):
            adam.state[p] = {"step": torch.tensor(float(nets.steps)), "exp_avg": avg.clone(), "exp_avg_sq": sq.clone()}
        state = checkpoint_state(task, adam.state_dict(), r.callbacks)
        state["task"]["snapshot"] = self._snapshot_row(k)  # the pack does the tasks' backtracking: its snapshot
        return {**state, "identity": r.checkpointing.identity}

    def _adam(self, k: int) -> torch.optim.Adam:
        opt = self.runs[k].cfg.optimizer
        return torch.optim.Adam(
            self.tasks[k].net.parameters(),
            lr=float(opt.lr),
            betas=tuple(opt.get("betas", (0.9, 0.999))),
            eps=float(opt.get("eps", 1e-8)),
            weight_decay=float(opt.get("weight_decay", 0.0)),
        )

    def _load_adam(self, k: int, state_dict: dict) -> None:
        adam = self._adam(k)
        adam.load_state_dict(state_dict)
        nets = self.nets
        for p, avg, sq in zip(
            self.tasks[k].net.parameters(), nets.row_views(nets.exp_avg, k), nets.row_views(nets.exp_avg_sq, k)
        ):
            if p in adam.state:
                avg.copy_(adam.state[p]["exp_avg"])
                sq.copy_(adam.state[p]["exp_avg_sq"])
                nets.steps = int(adam.state[p]["step"])

    # The unpacked snapshot's layout (tasks/flat_state.py): every weight, then each weight's exp_avg, exp_avg_sq.
    def _snapshot_row(self, k: int) -> torch.Tensor | None:
        nets = self.nets
        if nets.snapshot is None:
            return None
        w, avg, sq = (nets.row_views(s, k) for s in nets.snapshot)
        return torch.cat([t.reshape(-1) for t in w] + [t.reshape(-1) for a, s in zip(avg, sq) for t in (a, s)])

    def _load_snapshot(self, k: int, flat: torch.Tensor | None) -> None:
        nets = self.nets
        if flat is None:
            return
        if nets.snapshot is None:
            nets.snapshot = [t.clone() for t in nets._state()]
        sizes = nets.sizes
        weights = torch.split(flat[: sum(sizes)], sizes)
        moments = torch.split(flat[sum(sizes) :], [n for n in sizes for _ in (0, 1)])
        for views, parts in (
            (nets.row_views(nets.snapshot[0], k), weights),
            (nets.row_views(nets.snapshot[1], k), moments[0::2]),
            (nets.row_views(nets.snapshot[2], k), moments[1::2]),
        ):
            for view, part in zip(views, parts):
                view.copy_(part.view(view.shape))


class PackCheckpointing(Callback):
    """Each run's checkpoint_every, and on SIGTERM / Ctrl-C every running run's checkpoint, then Interrupted."""

    def __init__(self, pack: PackedDIP):
        self.pack = pack
        self._signal: int | None = None
        self._old: dict[int, Any] = {}

    def on_train_start(self, trainer, pack) -> None:
        self._next = None  # set at the first chunk end: the pack restores resumed runs after this hook
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._old[signum] = signal.getsignal(signum)
                signal.signal(signum, self._on_signal)

    def _after(self, k: int, iteration: int) -> int | None:
        every = self.pack.runs[k].checkpointing.every
        return (iteration // every + 1) * every if every else None

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum
        log.warning("got %s: writing the pack's checkpoints at the end of this chunk", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer, pack, outputs, batch, batch_idx) -> None:
        if self._next is None:
            self._next = [self._after(k, s) for k, s in enumerate(pack.start_iterations)]
        for k, task in enumerate(pack.tasks):
            due = self._next[k] is not None and task.iteration >= self._next[k]
            if (self._signal is not None and pack.running[k]) or due:
                save_checkpoint(pack.runs[k].checkpointing.path, pack.job_state(k))
                self._next[k] = self._after(k, task.iteration)
        if self._signal is not None:
            k = next((k for k, on in enumerate(pack.running) if on), 0)
            r = pack.runs[k]
            raise Interrupted(self._signal, pack.tasks[k].iteration, r.run_dir / CHECKPOINT, r.run_dir)

    def on_train_end(self, trainer, pack) -> None:
        self._restore()

    def on_exception(self, trainer, pack, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}


def run_pack(runs: list, batched: bool | None = None) -> list[dict | Exception]:
    """Train `runs` (train.PreparedRun, one pack_key) as one pack; each ends as an unpacked run would: its
    metrics, or the exception that ended it (a DIPError written to its error.json by the caller)."""
    import warnings

    from ..loggers import close_loggers, log_final_panel, log_history, set_summary
    from ..train import _device_name, _fit, _report, build, finish_run, run_loggers

    warnings.filterwarnings("ignore", message=".*configure_optimizers.* returned `None`.*")

    pack = PackedDIP(runs)
    pack.batched = batched  # None: vmap on a GPU (two runs or more), else one run after another
    start_iterations = [t.iteration for t in pack.tasks]
    trainer = build(
        runs[0].cfg.trainer, callbacks=[PackCheckpointing(pack)], logger=False, default_root_dir=str(runs[0].run_dir)
    )
    total = max(n - s for n, s in zip(pack.iterations, start_iterations))
    schedule = ChunkSchedule(total, runs[0].cfg.get("chunk", "auto"))
    start = time.perf_counter()
    _fit(trainer, pack, train_dataloaders=schedule)
    wall = time.perf_counter() - start
    seconds = getattr(pack, "loop_seconds", wall)
    device = _device_name(trainer.strategy.root_device)
    ran = [t.iteration - s for t, s in zip(pack.tasks, start_iterations)]
    results: list[dict | Exception] = []
    for k, r in enumerate(runs):
        if k in pack.failed:
            results.append(pack.failed[k])
            continue
        share = ran[k] / max(sum(ran), 1)
        try:
            metrics = finish_run(
                r, seconds * share, wall * share, device, extra={"pack": len(runs), "pack_seconds": round(seconds, 3)}
            )
            loggers = run_loggers(r)
            log_history(loggers, r.task.history, r.task.log_every)
            set_summary(loggers, metrics)
            log_final_panel(loggers, r.run_dir, step=r.task.iteration)
            close_loggers(loggers, failed=False)
            _report(metrics, r.run_dir)
            results.append(metrics)
        except DIPError as err:
            results.append(err)
    return results


def optimized_value(cfg, metrics: dict | Exception) -> float:
    """What the sweeper gets from a job: its optimized_metric (psnr_best), else psnr_final, else NaN."""
    if isinstance(metrics, Exception):
        return math.nan
    value = metrics.get(cfg.get("optimized_metric") or "psnr_best")
    if value is None:
        value = metrics.get("psnr_final")
    return float(value) if value is not None else math.nan
