"""The Hydra entry point (`dip-run`, or `python -m dip_lightning.train`).

compose config -> build net, data, task -> load images, simulate the observation -> fit -> write the run folder.
Returns the metric that sweepers optimise (`optimized_metric`, psnr_best by default).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from . import (
    project,  # noqa: F401  (registers ${dip.project:...}, which conf/paths reads, before Hydra composes)
    quiet,  # noqa: F401  (no Lightning or W&B banners in any process that trains: it imports this module)
)
from .errors import DIPError

log = logging.getLogger("dip_lightning")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def build(cfg: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a DIPError raised by a constructor comes out as itself."""
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, DIPError):
            raise cause from None
        raise DIPError(f"Could not build {cfg.get('_target_', 'an object')} from the config: {cause or err}") from None


@dataclass
class PreparedRun:
    """One run, built and checked, up to the training loop: what an unpacked run (`run`) and a pack of runs
    (dip_lightning.packing) share."""

    cfg: DictConfig
    run_dir: Path
    net: Any
    datamodule: Any
    task: Any
    data: Any
    callbacks: list
    best: Any
    checkpointing: Any
    speed: Any
    data_warnings: list[str]
    names: tuple[str, str | None]  # the logger's run name and group (the job's overrides, the sweep)
    loggers: list = field(default_factory=list)  # built when its loop starts (loop/engine.train_runs)
    pack_size: int = 1  # how many runs its loop trains together


def prepare_run(
    cfg: DictConfig, run_dir: str | os.PathLike, names: tuple[str, str | None] | None = None
) -> PreparedRun:
    """Check the config, build net, data, task and callbacks, load the resume state's reference. Nothing runs.
    `names`: the logger's run name and group, where Hydra's current job is not this run's (a packed job)."""
    from .callbacks.best_iterate import BestIterate
    from .callbacks.roles import configured
    from .checkpoint import Checkpointing, find_checkpoint
    from .cpu import set_threads
    from .run_identity import run_identity
    from .speed import SpeedOptions
    from .validate import validate_config

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    from .run_folder import check_unused

    run_dir = Path(run_dir)
    validate_config(cfg)  # values and types, before anything is built or computed
    speed = SpeedOptions.from_config(cfg)
    check_writable(run_dir)
    check_unused(run_dir, cfg.get("resume"))
    threads, why = set_threads(cfg.get("cpu_threads"))  # OpenMP threads on busy cores collapse: see cpu.py
    log.info("CPU threads: %d (%s)", threads, why)
    net, datamodule, task, data = build_run(cfg)
    task.speed = speed
    task.prepare(data)
    data_warnings = task.data_warnings()
    for warning in data_warnings:
        log.warning("%s", warning)
    log.info(
        "task=%s image=%s output %s, net %s with %.2fM parameters",
        task.name,
        data.name,
        "x".join(map(str, task.z.shape[-2:])),
        type(net).__name__,
        sum(p.numel() for p in net.parameters()) / 1e6,
    )

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            callbacks.append(configured(build(node), name))  # its name files its checkpoint state
    best = next((c for c in callbacks if isinstance(c, BestIterate)), None)
    if best is None:  # the best iterate is always captured
        best = BestIterate().named("best_iterate")
        callbacks.append(best)
    from .callbacks.roles import iteration_hooks, stopping_rules

    rule = default_rule(cfg, task, data, callbacks)
    if rule is not None:
        rule.named("without_ground_truth")
        log.info(
            "No ground truth: %s chooses the result (without_ground_truth=%s)",
            type(rule).__name__,
            cfg.without_ground_truth,
        )
        callbacks.append(rule)
    for c in stopping_rules(callbacks):  # rules that change the run (self-validation holds pixels out of the loss)
        c.attach(task)
    task.iteration_hooks = iteration_hooks(callbacks)
    checkpointing = Checkpointing(
        run_dir,
        cfg.get("checkpoint_every"),
        find_checkpoint(cfg.get("resume"), run_dir),
        identity=run_identity(cfg, data),
        iterations=int(cfg.iterations),
    )
    task.iteration = datamodule.start_iteration = checkpointing.start_iteration  # the schedule runs what remains
    return PreparedRun(
        cfg,
        run_dir,
        net,
        datamodule,
        task,
        data,
        callbacks,
        best,
        checkpointing,
        speed,
        data_warnings,
        names or _run_names(cfg),
    )


def default_rule(cfg: DictConfig, task, data, callbacks: list):
    """The GT-free stopping rule a run gets when it has an observation but no ground truth and its callbacks
    have no stopper: `without_ground_truth` names a callbacks preset, `auto` the task's for its net
    (DIPTask.auto_gt_free_rule), null none; the config's `gt_free_rule` reads that choice out (gt_free.py). The
    preset's rule is composed by Hydra from callbacks/<name>.yaml (the app's config search path, so a --config-dir
    or hydra.searchpath folder of the user's can add a rule; gt_free.rule_preset) and recorded in `cfg` as
    callbacks.without_ground_truth, with its values: the run's config.yaml holds it, and a run from that
    config.yaml (`dip-run --config-path <run dir> --config-name config`) gets the same rule under the same name."""
    if "gt_free_rule" in cfg:  # conf/train.yaml's read-out of without_ground_truth (dip_lightning/gt_free.py)
        name = cfg.gt_free_rule
    else:  # a config from before that key (an older run's config.yaml)
        name = cfg.get("without_ground_truth")
        if name == "auto":
            name = type(task).auto_gt_free_rule(cfg.get("net"))
    given_observation = data.clean is None and data.sources.get("observed") is not None
    from .callbacks.roles import stopping_rules

    if not name or not given_observation or stopping_rules(callbacks):
        return None
    from .gt_free import rule_preset, rule_presets

    node = rule_preset(str(name))
    if node is None:
        raise DIPError(
            f"without_ground_truth={name!r} is not a stopping rule; expected one of the callbacks presets "
            f"with an early_stopping rule ({', '.join(rule_presets())}) or null."
        )
    from omegaconf import open_dict

    with open_dict(cfg):
        if cfg.get("callbacks") is None:
            cfg.callbacks = {}
        cfg.callbacks.without_ground_truth = node
    return build(cfg.callbacks.without_ground_truth)


def _final_input_scores(task) -> dict[str, Any]:
    """Both final results where they differ (jitter on, no averaging): the net from the clean z and from the last
    jittered input (the reference's last cell), whichever task.final_input chose for psnr_final."""
    if task.clean is None or not task.final_inputs_differ():
        return {}
    return {f"psnr_final_{kind}": task.score(task.final_output(kind)) for kind in ("clean", "jittered")}


def finish_run(
    r: PreparedRun, seconds: float, wall_seconds: float, device: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """After the loop: the result (refused if it collapsed), metrics.json's content, every output written."""
    from .outputs import write_run_outputs

    task = r.task
    final = task.final_output()
    restored, stop_metrics, stop_images = _stop_results(task, r.callbacks, final)
    collapsed = task.collapse(restored)
    if collapsed:
        raise DIPError(_collapse_message(r.cfg, task, collapsed))
    ran = task.iteration - r.checkpointing.start_iteration  # this process's iterations (a resume ran fewer)
    metrics: dict[str, Any] = {
        "task": task.name,
        "image": r.data.sources.get("image") or r.data.sources.get("observed"),
        "psnr_observed": task.observed_psnr(),
        "psnr_final": task.score(final),
        **_final_input_scores(task),
        **task.extra_metrics(final),
        **r.best.result(),
        "iterations": task.iteration,
        "seconds": round(seconds, 3),  # the DIP loop; wall_seconds adds the set-up
        "wall_seconds": round(wall_seconds, 3),
        "iterations_per_second": round(ran / seconds, 3) if seconds > 0 and ran > 0 else None,
        "resumed_at": r.checkpointing.start_iteration,  # a resumed run (a requeued job): this process ran the rest
        "total_seconds": round(r.checkpointing.earlier_seconds + seconds, 3),  # the loop, every process's
        "processes": r.checkpointing.earlier_processes + 1,
        "device": device,
        "speed": r.speed.describe(),
        "backtracks": int(task.n_backtracks),
        "seed": int(r.cfg.seed),
        "observation_sha256": observation_checksum(task.observed),  # dip-gather --ensemble: one observation
        "warnings": r.data_warnings,
        **(extra or {}),
    }
    if "ssim" in r.cfg.get("metrics", ["psnr"]) and task.clean is not None:  # PSNR is always computed
        estimate = task.observed_estimate()
        metrics.update(
            ssim_observed=None if estimate is None else task.ssim_score(estimate),
            ssim_final=task.ssim_score(final),
            ssim_best=None,
            ssim_stop=None,
        )
        if r.best.result()["psnr_best"] is not None:
            metrics["ssim_best"] = task.ssim_score(r.best.best_image)
        if "stop_step" in stop_metrics:
            metrics["ssim_stop"] = task.ssim_score(restored)
    images = {"observed": task.observed_image(), "restored": restored, **task.extra_outputs(), **stop_images}
    if r.best.result()["psnr_best"] is not None:
        images["best"] = r.best.best_image
    if task.clean is not None:  # dip-gather's seed ensembles score their averaged image against it
        images["ground_truth"] = task.clean
        metrics["psnr_convention"] = task.psnr_convention
    metrics.update(stop_metrics)
    lag = lag_warning(metrics, task.exp_weight)
    if lag:  # a result no better than its input is never written silently
        log.warning("%s", lag)
        metrics["warnings"] = [*metrics["warnings"], lag]
    metrics = strict_metrics(metrics)
    write_run_outputs(
        r.run_dir,
        images,
        task.history,
        metrics,
        OmegaConf.to_yaml(r.cfg, resolve=True),
        marks={"best": metrics.get("best_step"), "stop": metrics.get("stop_step")},
    )
    return metrics


LAG_DB = 1.0  # a result within this much of its input, with the best iterate this much above it, has not caught up


def lag_warning(metrics: dict[str, Any], exp_weight: float = 0.0) -> str | None:
    """The warning for a result that still lags its input: its PSNR below the corrupted input's, or within LAG_DB
    of it while the best iterate was LAG_DB better (the run ended before its result caught up: 20 iterations gave
    9.94 dB from a 21.15 dB input; 200 gave 21.16 dB, the best iterate 24.49). It says what to change. None when
    the result is fine, or without ground truth (no PSNR)."""
    from .callbacks.early_stopping import averaging_warmup
    from .run_metrics import result_psnr

    result, observed, best = result_psnr(metrics), metrics.get("psnr_observed"), metrics.get("psnr_best")
    if result is None or observed is None or not (math.isfinite(result) and math.isfinite(observed)):
        return None
    behind = best is not None and best - result >= LAG_DB
    if result >= observed and not (result < observed + LAG_DB and behind):
        return None
    kind = "the stopping rule's choice" if "stop_step" in metrics else "the last iterate"
    worse = "is worse than" if result < observed else "is hardly better than"
    text = (
        f"The result (restored.png, {kind}: {result:.2f} dB) {worse} the corrupted input ({observed:.2f} dB) after "
        f"{metrics['iterations']} iterations: the run ended before the fit got past its input. Run more "
        f"iterations (now iterations={metrics['iterations']})"
    )
    if best is not None:
        text += f"; the best iterate ({best:.2f} dB, step {metrics.get('best_step')}) is in best.png"
    if exp_weight > 0:
        text += (
            f"; the result averages the outputs (task.exp_weight={exp_weight:g}), which lags the net and needs "
            f"about {averaging_warmup(exp_weight)} iterations to catch up: run longer, or lower task.exp_weight"
        )
    return text + "."


def strict_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's content as strict JSON (data.io.json_safe: a non-finite number is null), the same in the
    file and in what the run returns; an infinite psnr_observed (the observation is the ground truth, as with
    task.sigma=0) is noted in its warnings."""
    from .data.io import json_safe

    observed = metrics.get("psnr_observed")
    if isinstance(observed, float) and math.isinf(observed):
        note = (
            "psnr_observed is null: the observation equals the ground truth (an infinite PSNR; task.sigma=0?), "
            "so there was no corruption to restore"
        )
        metrics = {**metrics, "warnings": [*(metrics.get("warnings") or []), note]}
    return json_safe(metrics)


def observation_checksum(observed) -> str:
    """sha256 of the observation a run restored (its float32 values): runs with the same one restored the same
    input."""
    import hashlib

    import torch

    return hashlib.sha256(observed.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def run_loggers(r: PreparedRun) -> list:
    """The run's loggers (W&B offline, CSV, TensorBoard; none, one or several), named and tagged for its sweep: the
    task, net and image, then the config's `tags` (tags=[paper]). A resumed run continues its W&B run (the id its
    checkpoint keeps), and its checkpoints keep this run's id."""
    from .loggers import build_loggers, logger_ids, to_plain

    name, group = r.names
    tags = r.cfg.get("tags") or []
    if isinstance(tags, str):  # tags=paper
        tags = [tags]
    if not OmegaConf.is_list(tags) and not isinstance(tags, (list, tuple)):
        raise DIPError(f"tags={tags!r} is not valid; expected a list of labels, e.g. 'tags=[paper,denoise]'.")
    loggers = build_loggers(
        r.cfg.get("logger"),
        r.run_dir,
        name=name,
        group=group,
        tags=list(dict.fromkeys([r.task.name, type(r.net).__name__.lower(), r.data.name, *map(str, tags)])),
        config=to_plain(r.cfg),
        start=r.checkpointing.start_iteration,
        wandb_id=r.checkpointing.logger_ids.get("wandb"),
    )
    r.checkpointing.logger_ids = {**r.checkpointing.logger_ids, **logger_ids(loggers)}
    return loggers


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """One DIP restoration (an ensemble of seeds with ensemble=N); returns metrics.json's content. Nothing is
    written to run_dir unless it succeeds."""
    from .run_folder import locked
    from .speed import SpeedOptions
    from .validate import validate_config

    validate_config(cfg)  # a bad value is refused before the run folder is made
    SpeedOptions.from_config(cfg)
    with locked(check_writable(Path(run_dir))):  # one process per run folder
        if str(cfg.get("resume")) == "auto" and (Path(run_dir) / "metrics.json").is_file():
            return finished_run(cfg, Path(run_dir))
        if cfg.get("ensemble", 1) != 1:
            from .loop.ensemble import run_ensemble

            return run_ensemble(cfg, run_dir)
        return run_prepared(prepare_run(cfg, run_dir))


def finished_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """resume=auto on a folder whose run has finished: its metrics, once its config and observation are this
    run's (a resumed sweep runs only the jobs that had not finished)."""
    from .run_folder import finished_metrics

    with_noise = OmegaConf.merge(cfg, {"ensemble": 1})  # an ensemble's observation is its first member's
    prepared = prepare_run(with_noise, run_dir)
    if cfg.get("ensemble", 1) == 1:  # with the rule a run without ground truth gets, as its config.yaml records it
        cfg = prepared.cfg
    metrics = finished_metrics(cfg, run_dir, observation_checksum(prepared.task.observed))
    log.info("%s had finished (metrics.json): kept, not run again (resume=auto)", run_dir)
    return metrics


def run_prepared(r: PreparedRun) -> dict[str, Any]:
    """Train and finish a prepared run on its own (the loop with one run, its loggers live)."""
    from .loop.engine import train_runs

    (result,) = train_runs([r])
    if isinstance(result, Exception):
        raise result
    return result


def build_run(cfg: DictConfig):
    """net, data module, task and the loaded data. `net.output_channels: null` follows the image's channels: the net
    is built again for a gray image (same seed, so the same weights as one built for 1 channel directly)."""
    import torch
    from pytorch_lightning import seed_everything

    follow = "output_channels" in cfg.net and cfg.net.output_channels is None
    # Python's, numpy's and torch's global generators (a task or net that draws from any of them is reproducible);
    # torch's seeds the net's initial weights. z, noise, masks and jitter have generators of their own.
    seed_everything(int(cfg.seed), verbose=False)
    net = build(cfg.net, **({"output_channels": 3} if follow else {}))
    datamodule = build(cfg.data)
    task = build(cfg.task, net=net, optimizer=build(cfg.optimizer))
    # the task's net: a task may wrap it (feature inversion generates large and crops, so reads images uncropped)
    data = datamodule.load(task.net.size_multiple, task.observed_scale, task.net.min_size)
    if datamodule.pad:
        check_padded_size(task, data, datamodule.pad)
    if data.clean is not None or data.observed is not None:
        channels = task.output_shape(data)[0]
    else:  # the inputs are extras (flash/no-flash): the first one's channels
        channels = next(iter(data.extras.values())).shape[1] if data.extras else 3
    if follow and channels != 3:
        torch.manual_seed(int(cfg.seed))
        net = build(cfg.net, output_channels=channels)
        task = build(cfg.task, net=net, optimizer=build(cfg.optimizer))
    return task.net, datamodule, task, data


def check_padded_size(task, data, pad: int) -> None:
    """data.pad keeps an image at a size the net's multiple may not divide: the net must still make an output of
    that size (a skip net with strided downsampling does, cropping in its concatenations as the reference's)."""
    import torch

    shape = task.output_shape(data)
    h, w = task.net.input_size(shape[1], shape[2])
    training = task.net.training
    task.net.eval()  # no BatchNorm statistics are updated by this probe
    with torch.no_grad():
        out = task.net(torch.zeros(1, task.net.input_depth, h, w))
    task.net.train(training)
    if tuple(out.shape[-2:]) != tuple(shape[1:]):
        raise DIPError(
            f"data.pad={pad} makes {data.name!r} {shape[2]}x{shape[1]} pixels, but the net's output for it is "
            f"{out.shape[-1]}x{out.shape[-2]}: data.pad needs a net that keeps such sizes (net=skip with "
            "downsample_mode=stride, as the reference's barbara). Set data.pad=0 to crop to the net's multiple."
        )


def check_writable(run_dir: Path) -> Path:
    """Fail before any computation when the run folder cannot take the outputs."""
    import tempfile

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test."):
            pass
    except OSError as err:
        raise DIPError(
            f"The run folder {str(run_dir)!r} cannot be written ({err.strerror or err}); the results "
            "would be lost. Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "with -m), or run from a writable directory."
        ) from None
    return run_dir


def _collapse_message(cfg: DictConfig, task, why: str) -> str:
    lr = (cfg.get("optimizer") or {}).get("lr")
    fix = "lower optimizer.lr" + (f" (now {lr:g})" if isinstance(lr, (int, float)) else "")
    if not task.backtracking:
        fix += ", or set task.backtracking=true (it restores the last good weights when the fit drops)"
    return (
        f"The optimisation collapsed: {why}. Such a result is not a restoration, so nothing is written (in a "
        f"sweep, error.json records it and the other jobs go on). Fix: {fix}."
    )


def _fit(trainer, module, **data) -> None:
    """trainer.fit; torch's refusal of an op without a deterministic CUDA kernel becomes the one-paragraph error."""
    try:
        trainer.fit(module, **data)
    except RuntimeError as err:
        if "deterministic implementation" not in str(err):
            raise
        raise DIPError(
            f"trainer.deterministic=true, but the run uses an operation that has no deterministic CUDA kernel "
            f"in this torch version (torch: {str(err).splitlines()[0]}). Set trainer.deterministic=false, or choose "
            "net options that avoid that operation (net.pad, net.upsample_mode)."
        ) from None


def _stop_results(task, callbacks: list, final) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The restored image, the stop_* metrics and the images of further rules. The first early stopper's chosen
    iterate is the result; further stoppers report their choice under their own name (es_wmv/stop_step, ...) and
    write it as <rule>.png, so rules can be compared in one run. Each rule's raw and averaged candidates at its
    stop step are scored (psnr_stop_raw, psnr_stop_averaged)."""
    from .callbacks.roles import stopping_rules

    restored, metrics, images, used = final, {}, {}, set()
    stoppers = stopping_rules(callbacks)
    for i, stopper in enumerate(stoppers):
        result = stopper.stop_result(task)
        if result is None:
            continue
        # the stopper kept its images on the training device; Lightning has moved the task back to the CPU
        image = result.pop("image").to(final.device)
        candidates = result.pop("candidates")
        result["psnr_stop"] = task.score(image)
        if not stopper.uses_ground_truth:
            for kind, candidate in candidates.items():
                result[f"psnr_stop_{kind}"] = task.score(candidate.to(final.device))
        if i == 0:
            restored = image
            metrics.update(result)
            used = {stopper.reason}
        else:  # under the rule's name; a second rule of one kind under its config key
            label = stopper.reason if stopper.reason not in used else stopper.config_name or stopper.reason
            used.add(label)
            metrics.update({f"{label}/{k}": v for k, v in result.items()})
            images[label] = image
    return restored, metrics, images


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def _run_names(cfg: DictConfig) -> tuple[str, str | None]:
    """The W&B run name (the job's overrides) and group (the sweep's name in a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        name = hc.job.override_dirname or hc.job.name
        group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
        return name, group
    except ValueError:  # not under Hydra (tests call run() directly)
        return "run", None


def _report(metrics: dict, run_dir: Path, run: PreparedRun | None = None) -> None:
    """A finished run's last lines in the log: its PSNRs (with a ground truth), which rule chose the result, at which
    iteration and why the run stopped (or that it went to its end), with the sigma a discrepancy rule used and where
    that came from, and the speed of the iterations this process ran (a resumed run ran only the rest)."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.2f} dB"

    if metrics["psnr_observed"] is not None or metrics["psnr_final"] is not None:
        log.info(
            "PSNR of the corrupted input: %s | result: %s | best iterate: %s at step %s",
            fmt(metrics["psnr_observed"]),
            fmt(metrics["psnr_final"]),
            fmt(metrics["psnr_best"]),
            metrics["best_step"],
        )
    choice = result_choice(metrics, run)
    if choice:
        log.info("%s", choice)
    start = run.checkpointing.start_iteration if run is not None else 0
    log.info(
        "%d iterations in %.1f s (%.2f it/s on %s)%s; outputs in %s",
        metrics["iterations"] - start,
        metrics["seconds"],
        metrics["iterations_per_second"] or 0,
        metrics["device"],
        f", {metrics['iterations']} in all in {metrics['total_seconds']:.1f} s over {metrics['processes']} processes "
        f"(resumed at iteration {start})"
        if start
        else "",
        run_dir,
    )


SIGMA_SOURCES = {
    "config": "set in the config (the rule's sigma)",
    "simulation": "the noise the task simulated (task.sigma)",
    "estimate": "estimated from the observation",
}


def result_choice(metrics: dict, run: PreparedRun | None = None) -> str | None:
    """One line: which rule chose restored.png, at which iteration, why the run stopped or that it went to its end,
    and the sigma it used and where that came from (the discrepancy rule's sigma_used, sigma_source). A run without
    ground truth and without a rule says that its result is the last iterate; any other run without a rule: None."""
    from .callbacks.roles import stopping_rules

    total = int(run.cfg.iterations) if run is not None else metrics["iterations"]
    ended = metrics["iterations"]
    if "stop_step" not in metrics:
        if metrics["psnr_final"] is not None:
            return None
        why = "without_ground_truth" if run is None else f"without_ground_truth={run.cfg.get('without_ground_truth')}"
        return (
            f"No ground truth and no stopping rule ({why}): restored.png is the last iterate, iteration {ended}. "
            "A rule chooses one without ground truth: without_ground_truth=discrepancy (or es_wmv, es_emv, "
            "self_validation)."
        )
    rules = stopping_rules(run.callbacks) if run is not None else []
    rule = rules[0] if rules else None
    name = metrics.get("stop_rule", "the stopping rule")
    where = f" (callbacks.{rule.config_name})" if getattr(rule, "config_name", None) else ""
    patience = getattr(rule, "patience", None)
    held = f"{patience} iterations without a better score" if patience else "its rule held"
    fired = metrics.get("stop_iteration")
    if fired is None:
        why = f"it never fired (never {held}), so the run went to its end (iteration {ended})"
        if ended < total:
            why = f"it never fired; the run ended at iteration {ended} of {total} (another rule stopped it)"
    elif ended < total:
        why = f"it fired at iteration {fired} ({held}) and stopped the run at iteration {ended} of {total}"
    elif rule is not None and not rule.stop:
        why = f"it fired at iteration {fired} and the run went on to its end, {ended} (stop=false: it only reports)"
    else:
        why = f"it fired at iteration {fired} ({held}), in the run's last chunk (iteration {ended})"
    line = (
        f"The result (restored.png) is {name}'s choice{where}: iteration {metrics['stop_step']} "
        f"({metrics.get('stop_output', 'its')} output); {why}"
    )
    if metrics.get("sigma_used") is not None:
        source = metrics.get("sigma_source")
        told = SIGMA_SOURCES.get(source, str(source))
        if source == "estimate" and metrics.get("noise"):
            told += f", {metrics['noise']} noise"
        line += f"; sigma {metrics['sigma_used']:.2f} (0-255), {told} (sigma_source={source})"
    return line + "."


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .checkpoint import Interrupted
    from .data.io import write_json
    from .sweeps.gpu_lease import gpu_lease
    from .sweeps.slurm import not_requeued, requeue

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        with gpu_lease(cfg.get("gpu_lease")):  # one GPU per running job, taken before CUDA starts
            metrics = run(cfg, run_dir)
    except Interrupted as err:  # SIGTERM / Ctrl-C: the checkpoint is written; exit as the signal asks
        log.error("%s", err)
        if hc.mode == RunMode.MULTIRUN:
            write_json(run_dir / "error.json", {"error": str(err), "overrides": list(hc.overrides.task)})
        refused = requeue(err.signum)  # submitit's preemption signal: its handler requeues the job and exits
        if refused is None:
            raise SystemExit(128 + err.signum)
        message = not_requeued(refused, err)  # timed out more often than hydra.launcher.max_num_timeout
        log.error("%s", message)
        write_json(run_dir / "error.json", {"error": message, "overrides": list(hc.overrides.task)})
        return float("nan")
    except DIPError as err:
        message = str(err)
        log.error("%s", message)
        if hc.mode == RunMode.MULTIRUN:  # keep the sweep going; dip-gather lists the failure
            write_json(run_dir / "error.json", {"error": message, "overrides": list(hc.overrides.task)})
            return float("nan")
        print(f"\nerror: {message}", file=sys.stderr)
        raise SystemExit(1)
    except Exception as err:
        if hc.mode == RunMode.MULTIRUN:
            write_json(
                run_dir / "error.json", {"error": f"{type(err).__name__}: {err}", "overrides": list(hc.overrides.task)}
            )
        raise
    (run_dir / "error.json").unlink(missing_ok=True)  # an earlier attempt's (a requeued or resumed job)
    from .packing.pack import optimized_value

    return optimized_value(cfg, metrics)


def unquoted_non_ascii(args: list[str]) -> str | None:
    """The quoting hint for an override whose value has non-ASCII characters outside quotes: Hydra's override
    lexer stops at them with a LexerNoViableAltException that says nothing about quotes."""
    for arg in args:
        key, eq, value = arg.partition("=")
        if arg.startswith("-") or not eq or value.isascii():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            continue
        return (
            f"the override {arg!r} has non-ASCII characters, which Hydra's override parser only takes inside "
            f"quotes. Write it as {key}='{value}', in a shell: \"{key}='{value}'\"."
        )
    return None


def main() -> None:
    hint = unquoted_non_ascii(sys.argv[1:])
    if hint:
        print(f"error: {hint}", file=sys.stderr)
        raise SystemExit(1)
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's full tracebacks
        hydra_main()
        return
    from hydra.errors import HydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach this function, to be told in one paragraph
    try:
        hydra_main()
    except DIPError as err:  # raised before the run starts (run_folder.RunFolderGuard: a used folder)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except HydraException as err:  # a config that does not compose (a MissingConfigException is an OSError too)
        cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
        print(f"error: {err}{cause}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # Hydra creates the run folder and its log file before dip-run's code runs
        print(
            f"error: the run folder could not be created or written ({err.strerror or err}: "
            f"{err.filename or ''}). Choose a writable folder: hydra.run.dir=<folder> (hydra.sweep.dir=<folder> "
            "with -m), or run from a writable directory.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
