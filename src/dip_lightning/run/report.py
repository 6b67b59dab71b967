"""What a finished run says in its last log lines: its PSNRs, which rule chose the result and why the run stopped,
its speed; and the warning for a result that still lags its input."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .prepare import PreparedRun

log = logging.getLogger("dip_lightning")

LAG_DB = 1.0  # a result within this much of its input, with the best iterate this much above it, has not caught up


def lag_warning(metrics: dict[str, Any], exp_weight: float = 0.0) -> str | None:
    """The warning for a result that still lags its input: its PSNR below the corrupted input's, or within LAG_DB
    of it while the best iterate was LAG_DB better (the run ended before its result caught up: 20 iterations gave
    9.94 dB from a 21.15 dB input; 200 gave 21.16 dB, the best iterate 24.49). It says what to change. None when
    the result is fine, or without ground truth (no PSNR)."""
    from ..callbacks.early_stopping import averaging_warmup
    from ..run_metrics import result_psnr

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


def report(metrics: dict, run_dir: Path, run: PreparedRun | None = None) -> None:
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
    ran = metrics["iterations"] - start
    if metrics.get("pack", 1) > 1:  # the pack's loop time is what a run of it took; its seconds are its share
        pack_seconds = metrics["pack_seconds"]
        log.info(
            "%d iterations in a pack of %d runs: %.1f s for the pack (%.2f it/s per run, its share %.1f s) on %s; "
            "outputs in %s",
            ran,
            metrics["pack"],
            pack_seconds,
            ran / pack_seconds if pack_seconds > 0 else 0,
            metrics["seconds"],
            metrics["device"],
            run_dir,
        )
        return
    log.info(
        "%d iterations in %.1f s (%.2f it/s on %s)%s; outputs in %s",
        ran,
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
    from ..callbacks.roles import stopping_rules

    total = int(run.cfg.iterations) if run is not None else metrics["iterations"]
    ended = metrics["iterations"]
    if "stop_step" not in metrics:
        if metrics["psnr_final"] is not None:
            return None
        own = run.task.regularizer.needs_no_rule if run is not None else None
        if own:  # a variant whose result needs no rule (sure, self_guided)
            start = run.task.average_from
            if run.task.exp_weight <= 0:
                what = f"the last iterate at iteration {ended}"
            elif start is not None and start < ended:  # task.average_from: a plain mean
                what = f"the mean of the outputs from iteration {start} to {ended}"
            else:
                what = f"the averaged output at iteration {ended}"
            return (
                f"No ground truth: restored.png is {what}, regularizer="
                f"{run.task.regularizer.name}'s result without a stopping rule ({own})."
            )
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
