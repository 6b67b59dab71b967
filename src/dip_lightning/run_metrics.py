"""metrics.json: every key a run writes, documented once.

dip-gather, the paper tables, the benchmarks and docs/outputs.md read these keys; a key a run writes that is not
here fails tests/test_train.py, and docs/outputs.md's table of keys is this table (`markdown_table`, checked by the
same tests).
A further stopping rule reports its keys under its name (`es_emv/stop_step`): they count as the key after the slash.
"""

from __future__ import annotations

import re

KEYS: dict[str, str] = {
    "task": "the task's name",
    "image": "the image file (data.image, else data.observed)",
    "seed": "the run's seed",
    "regularizer": "the regularised variant with its values (none: plain DIP; sure: DIP-SURE, the default without "
    "ground truth for denoising, whose result needs no stopping rule)",
    "observation_sha256": "sha256 of the observation the run restored (runs of one ensemble must share it)",
    "psnr_observed": "PSNR of the corrupted input itself against the ground truth (SR: its bicubic upsampling), dB; "
    "not the fit to the observation (that is the curves' psnr_fit)",
    "psnr_final": "PSNR of the run's last result (the averaged output with averaging, else the net's output)",
    "psnr_final_clean": "with jitter and no averaging: PSNR of the net's output from the clean z",
    "psnr_final_jittered": "with jitter and no averaging: PSNR of the net's output from the last jittered input",
    "psnr_best": "the oracle: PSNR of the best iterate (the better of raw and averaged outputs), chosen with the "
    "ground truth; no method without one can return it (the run's result: psnr_stop, else psnr_final)",
    "best_step": "the oracle's iteration (the best iterate's)",
    "psnr_convention": "how PSNR and SSIM are measured: rgb, or y_shaved:<border> (SR)",
    "ssim_observed": "SSIM of the corrupted input (as psnr_observed); with metrics: [psnr, ssim]",
    "ssim_final": "SSIM of the last result",
    "ssim_best": "SSIM of the best iterate (the oracle)",
    "ssim_stop": "SSIM of the stopping rule's choice",
    "stop_step": "the iteration the stopping rule chose",
    "stop_reason": "the rule that fired, or max_iterations when the run ended first",
    "stop_iteration": "where the rule fired (null: it did not)",
    "stop_rule": "the rule's class",
    "stop_uses_ground_truth": "whether the rule chose with the ground truth (its uses_ground_truth): an oracle",
    "stop_output": "which candidate the rule returned: averaged, final (the net from the clean input) or raw",
    "psnr_stop": "PSNR of the rule's choice (restored.png)",
    "psnr_stop_raw": "PSNR of the raw output at the rule's step",
    "psnr_stop_averaged": "PSNR of the averaged output at the rule's step (with averaging)",
    "psnr_stop_final": "PSNR of the net's output from the clean input with the weights of the rule's step",
    "sigma_used": "discrepancy rule: the noise std it used, 0-255",
    "sigma_source": "discrepancy rule: config, simulation (the task made the observation) or estimate",
    "sigma_fine": "discrepancy rule: the finest wavelet scale's estimate, 0-255",
    "sigma_coarse": "discrepancy rule: the next scale's estimate, 0-255",
    "noise": "discrepancy rule: white or correlated (coarse/fine > 1.5)",
    "sigma_in_observation": "discrepancy rule, with ground truth: the std of observation - truth, 0-255",
    "psnr_rgb_final": "SR: PSNR of the last result on RGB, unshaved",
    "psnr_bicubic": "SR: PSNR of bicubic upsampling (the task's convention)",
    "psnr_rgb_bicubic": "SR: PSNR of bicubic upsampling on RGB",
    "psnr_nearest": "SR: PSNR of nearest-neighbour upsampling",
    "psnr_rgb_nearest": "SR: PSNR of nearest-neighbour upsampling on RGB",
    "iterations": "iterations run in all (a resumed run counts its earlier ones)",
    "seconds": "the DIP loop's time in this process (a packed run: its share)",
    "wall_seconds": "the loop with Lightning's set-up",
    "iterations_per_second": "this process's iterations / seconds",
    "resumed_at": "the iteration this process started at: 0, or where a resumed run (a requeued job) went on",
    "total_seconds": "the DIP loop's time over every process of the run (a resumed run: its earlier ones up to "
    "their last checkpoint, and this one)",
    "processes": "how many processes ran the run (1, or 1 + its resumes)",
    "device": "where it ran (CPU threads, or the GPU's name)",
    "speed": "the speed options (precision, channels_last, compile, cuda_graph)",
    "backtracks": "how many iterations backtracking undid",
    "warnings": "what looked wrong with the data without stopping the run",
    "pack": "launcher=packed: how many runs trained together",
    "pack_seconds": "launcher=packed: the pack's loop time",
    "ensemble": "ensemble=N: how many seeds were averaged (the folder's metrics.json; each member has its own)",
    "seeds": "ensemble=N: the members' seeds",
    "members": "ensemble=N: the members' folders, relative to the ensemble's",
    "psnr_ensemble": "ensemble=N: PSNR of restored.png, the pixel mean of the members' restored.png",
    "ssim_ensemble": "ensemble=N: SSIM of restored.png",
    "psnr_ensemble_best": "ensemble=N: PSNR of the mean of the members' best iterates (an oracle: needs ground truth)",
    "psnr_members": "ensemble=N: PSNR of each member's restored.png",
    "psnr_members_mean": "ensemble=N: their mean",
    "member_stop_steps": "ensemble=N: the iteration each member's stopping rule chose",
    "member_iterations": "ensemble=N: the iterations each member ran",
}


# What a run returned (restored.png) and the keys that score it, by kind: an ensemble=N folder's mean of its members,
# a stopping rule's choice, else the last result. dip-gather's psnr_result and the sweepers' default
# optimized_metric (psnr_result) are the first; nothing here is chosen with the ground truth, unless the stopping
# rule uses it (its uses_ground_truth: metrics.json's stop_uses_ground_truth).
RESULT = "psnr_result"
RESULT_KEYS = {
    "ensemble": ("psnr_ensemble", "ssim_ensemble"),
    "stop": ("psnr_stop", "ssim_stop"),
    "final": ("psnr_final", "ssim_final"),
}
SUFFIX = {"ensemble": "ensemble", "stop": "stop", "final": "final"}  # a metric's key for each kind of result


def result_kind(metrics: dict) -> str:
    """Which of RESULT_KEYS a run's restored.png is: ensemble, stop or final."""
    if "ensemble" in metrics or "psnr_ensemble" in metrics:
        return "ensemble"
    return "stop" if "stop_step" in metrics else "final"


def result_psnr(metrics: dict) -> float | None:
    """The PSNR of what the run returned (restored.png; None without ground truth): its psnr_result if it wrote
    one, else its psnr_ensemble, psnr_stop or psnr_final (result_kind)."""
    if metrics.get(RESULT) is not None:
        return metrics[RESULT]
    return metrics.get(RESULT_KEYS[result_kind(metrics)][0])


def result_ssim(metrics: dict) -> float | None:
    """The SSIM of what the run returned (metrics: [psnr, ssim]; else None)."""
    return metrics.get(RESULT_KEYS[result_kind(metrics)][1])


def metric_names(metrics: dict) -> list[str]:
    """The metrics a run scored beside PSNR and SSIM (`metrics=[psnr,ssim,<name>]`), read off its keys
    (<name>_final, or an ensemble's <name>_ensemble)."""
    found = [re.fullmatch(r"(.+)_(final|ensemble)", k) for k in metrics]
    names = dict.fromkeys(m.group(1) for m in found if m is not None)
    return [n for n in names if not n.startswith(("psnr", "ssim")) and n != "member"]


def result_metric(metrics: dict, name: str) -> float | None:
    """A metric's score of what the run returned (<name>_ensemble, <name>_stop or <name>_final)."""
    return metrics.get(f"{name}_{SUFFIX[result_kind(metrics)]}")


def undocumented(metrics: dict) -> list[str]:
    """The keys of `metrics` that KEYS does not document."""
    return [k for k in metrics if k.rpartition("/")[2] not in KEYS]


def markdown_table() -> str:
    return "\n".join(["| key | meaning |", "|---|---|", *(f"| `{k}` | {v} |" for k, v in KEYS.items())])
