"""A finished run's results: the restored image (the first stopping rule's choice, else the last iterate), refused
if the optimisation collapsed; metrics.json's content as strict JSON; and every output written (outputs.py)."""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from ..config.compose import to_yaml
from ..errors import DIPError
from .report import lag_warning

if TYPE_CHECKING:
    from .prepare import PreparedRun

log = logging.getLogger("dip_lightning")


def final_input_scores(task) -> dict[str, Any]:
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
    restored, stop_metrics, stop_images = stop_results(task, r.callbacks, final)
    collapsed = task.collapse(restored)
    if collapsed:
        raise DIPError(collapse_message(r.cfg, task, collapsed))
    ran = task.iteration - r.checkpointing.start_iteration  # this process's iterations (a resume ran fewer)
    metrics: dict[str, Any] = {
        "task": task.name,
        "image": r.data.sources.get("image") or r.data.sources.get("observed"),
        "psnr_observed": task.observed_psnr(),
        "psnr_final": task.score(final),
        **final_input_scores(task),
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
        "regularizer": task.regularizer.describe(),  # a GT-free variant chose the result where no rule did
        "observation_sha256": observation_checksum(task.observed),  # dip-gather --ensemble: one observation
        "warnings": r.data_warnings,
        **(extra or {}),
    }
    if task.clean is not None:  # PSNR is always computed; the config's further metrics (ssim) score the same images
        scored = {
            "observed": task.observed_estimate(),
            "final": final,
            "best": r.best.best_image if r.best.result()["psnr_best"] is not None else None,
            "stop": restored if "stop_step" in stop_metrics else None,
        }
        for name, metric in r.metrics.items():
            for kind, image in scored.items():
                metrics[f"{name}_{kind}"] = None if image is None else task.metric_score(metric, image)
    images = {"observed": task.observed_image(), "restored": restored, **task.extra_outputs()}
    if r.best.result()["psnr_best"] is not None:
        images["best"] = r.best.best_image
    if task.clean is not None:  # dip-gather's seed ensembles score their averaged image against it
        images["ground_truth"] = task.clean
        metrics["psnr_convention"] = task.psnr_convention
    for label, image in stop_images.items():  # a further rule's choice: a file of its own, never another's
        images[output_name(label, taken={*images, *RESERVED})] = image
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
        to_yaml(r.cfg),
        marks={"best": metrics.get("best_step"), "stop": metrics.get("stop_step")},
    )
    return metrics


RESERVED = ("observed", "restored", "best", "ground_truth", "curves", "config", "metrics")  # the run's own files


def output_name(label: str, taken: set[str]) -> str:
    """A further stopping rule's image name (<name>.png in the run folder) from its label (its reason or its key
    under callbacks:, which a config chooses): only letters, digits, _ and -, so it stays a file of the run folder,
    and never one of `taken` (the run's other outputs): then <name>_rule, <name>_rule2, ..."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", label).strip("_") or "rule"
    candidate, n = name, 1
    while candidate in taken:
        candidate = f"{name}_rule" if n == 1 else f"{name}_rule{n}"
        n += 1
    return candidate


def strict_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's content as strict JSON (data.io.json_safe: a non-finite number is null), the same in the
    file and in what the run returns; an infinite psnr_observed (the observation is the ground truth, as with
    task.sigma=0) is noted in its warnings."""
    from ..data.io import json_safe

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


def collapse_message(cfg: DictConfig, task, why: str) -> str:
    lr = (cfg.get("optimizer") or {}).get("lr")
    fix = "lower optimizer.lr" + (f" (now {lr:g})" if isinstance(lr, (int, float)) else "")
    if not task.backtracking:
        fix += ", or set task.backtracking=true (it restores the last good weights when the fit drops)"
    return (
        f"The optimisation collapsed: {why}. Such a result is not a restoration, so nothing is written (in a "
        f"sweep, error.json records it and the other jobs go on). Fix: {fix}."
    )


def stop_results(task, callbacks: list, final) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The restored image, the stop_* metrics and the images of further rules. The first early stopper's chosen
    iterate is the result; further stoppers report their choice under their own name (es_wmv/stop_step, ...) and
    write it as <rule>.png, so rules can be compared in one run. Each rule's raw and averaged candidates at its
    stop step are scored (psnr_stop_raw, psnr_stop_averaged)."""
    from ..callbacks.roles import stopping_rules

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
        result["stop_uses_ground_truth"] = bool(stopper.uses_ground_truth)  # dip-gather marks such a result oracle
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
