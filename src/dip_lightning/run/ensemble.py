"""`dip-run ... ensemble=N`: N seeds of one observation trained together, their results averaged into one image.

A seed changes the net's initial weights, z and the jitter; `task.noise_seed` keeps the observation the same, and
each member's observation is checked against the others' before anything trains. The members are one pack
(run/fit.train_runs; runs that cannot be packed train one after another), each stopped by its own rule, and
each finishes as a run of its own in `<run dir>/members/seed_<s>/` (its outputs, curves, metrics.json). The
ensemble's folder holds the pixel mean of the members' restored.png as its restored.png, observed.png (and
ground_truth.png), config.yaml and a metrics.json of its own (psnr_ensemble beside each member's score), written
all or none as a run's outputs are (run/outputs.write_all). It is one job of the lifecycle (run/job.py).

The mean is taken of the members' written images, as `dip-gather --ensemble seed` takes it, so a resumed ensemble
and `dip-gather` agree with the uninterrupted run bit for bit. `resume=auto` (or resume=<an ensemble folder>)
resumes the members that have a checkpoint and reuses the members that had finished, once their recorded config
and observation are checked against this run's.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from ..checkpoint import CHECKPOINT, Interrupted
from ..config.compose import to_yaml
from ..data.io import array_to_tensor, average_images, read_image, to_uint8, write_image
from ..errors import DIPError
from .folder import check_unused, finished_metrics
from .outputs import write_all

if TYPE_CHECKING:
    from .prepare import RunNames

log = logging.getLogger("dip_lightning")
MEMBERS = "members"


def member_dir(run_dir: Path, seed: int) -> Path:
    return Path(run_dir) / MEMBERS / f"seed_{seed}"


def member_configs(
    cfg: DictConfig, run_dir: Path, count: int | None = None
) -> list[tuple[DictConfig, Path, Path | None]]:
    """Each member's config (seed + i, the ensemble's noise_seed), its folder, and the finished member's folder it
    may reuse (resume=auto: its own; resume=<ensemble folder>: that folder's member), else None."""
    base, n = int(cfg.seed), int(cfg.ensemble) if count is None else count
    noise_seed = cfg.task.get("noise_seed")
    noise_seed = base if noise_seed is None else int(noise_seed)  # the first member's observation, for every member
    resume = cfg.get("resume")
    source_root = _resume_root(resume, run_dir)
    members = []
    for seed in range(base, base + n):
        c = copy.deepcopy(cfg)
        with open_dict(c):
            c.seed, c.ensemble = seed, 1
            c.task.noise_seed = noise_seed
            c.resume = None
        source = member_dir(source_root, seed) if source_root is not None else None
        if source is not None and not (source / "metrics.json").is_file():
            if (source / CHECKPOINT).is_file():  # unfinished: it resumes from its checkpoint
                with open_dict(c):
                    c.resume = str(source)
            source = None  # else never started, or killed before its first checkpoint: it starts now
        elif source is not None and source == member_dir(run_dir, seed):
            with open_dict(c):  # finished in place (the ensemble was stopped after it): its folder is its own
                c.resume = "auto"
        members.append((c, member_dir(run_dir, seed), source))
    return members


def _resume_root(resume, run_dir: Path) -> Path | None:
    if resume in (None, "", False):
        return None
    if str(resume) == "auto":
        return Path(run_dir)
    root = Path(str(resume)).expanduser()
    if not (root / MEMBERS).is_dir():
        raise DIPError(
            f"resume={resume!r}: an ensemble resumes from an ensemble's folder (one holding {MEMBERS}/seed_<s>/), "
            f"and {str(root)!r} holds no {MEMBERS}/ folder. Give the folder of the interrupted ensemble=N run, or "
            "resume=auto to continue in this run's folder."
        )
    return root


class Ensemble:
    """An ensemble=N job: its members prepared (run/prepare.py), each checked to restore the same observation;
    `run()` trains the members that have not finished (one pack, or several where they cannot share one), finishes
    each in its own folder and writes the ensemble's folder through the same all-or-none writer as a run's."""

    def __init__(
        self, cfg: DictConfig, run_dir: Path, members: list, prepared: list, sums: list[str], scores: dict, names
    ):
        self.cfg, self.run_dir, self.members, self.prepared = cfg, Path(run_dir), members, prepared
        self.sums, self.scores, self.names = sums, scores, names  # names: the ensemble's own (run.prepare.RunNames)
        self.began = time.perf_counter()

    @classmethod
    def prepare(cls, cfg: DictConfig, run_dir: Path, names: RunNames | None = None) -> "Ensemble":
        from ..config.compose import configured_metrics
        from .prepare import prepare_run, run_names
        from .results import observation_checksum

        scores = configured_metrics(cfg)  # recorded in cfg before the members' configs are made from it
        run_dir = Path(run_dir)
        check_unused(run_dir, cfg.get("resume"))
        names = names or run_names(cfg)
        names = dataclasses.replace(names, group=names.group or f"{run_dir.name} (ensemble)")  # members together
        (c, d, _), n = member_configs(cfg, run_dir, count=1)[0], int(cfg.ensemble)
        first = prepare_run(c, d, names.with_setting("seed", c.seed))
        check_fits(first, n)  # before the others are made: an ensemble too large is refused at once
        members = member_configs(cfg, run_dir)
        prepared = [first] + [prepare_run(c, d, names.with_setting("seed", c.seed)) for c, d, _ in members[1:]]
        sums = [observation_checksum(r.task.observed) for r in prepared]
        if len(set(sums)) > 1:
            raise DIPError(
                "The members of ensemble="
                + str(len(members))
                + " would restore different observations (seeds "
                + ", ".join(f"{c.seed}: {s[:12]}" for (c, _, _), s in zip(members, sums))
                + "): this task's observation depends on the seed. Give the observation as a file (data.observed) "
                "so that every member restores the same one."
            )
        task, data = prepared[0].task, prepared[0].data
        return cls(cfg, run_dir, members, prepared, sums, scores, names.of(task.name, data.name))

    def run(self) -> dict:
        """Train the members that have not finished, write the ensemble's folder; its metrics.json content."""
        from .fit import train_runs
        from .packs import group_packs

        members, prepared, run_dir = self.members, self.prepared, self.run_dir
        results: dict[int, dict | Exception] = {}
        for k, (c, d, source) in enumerate(members):
            if source is not None:
                results[k] = finished_metrics(c, source, self.sums[k], dest=d)
        todo = [k for k in range(len(members)) if k not in results]
        for pack in group_packs([prepared[k] for k in todo], len(todo)) if todo else []:
            ks = [todo[j] for j in pack]
            try:
                out = train_runs([prepared[k] for k in ks])
            except Interrupted as err:  # the members that finished are written; the others have their checkpoints
                raise Interrupted(err.signum, err.iteration, err.path, run_dir) from None
            results.update(zip(ks, out))
        failed = {members[k][0].seed: r for k, r in results.items() if isinstance(r, Exception)}
        if failed:
            raise DIPError(
                f"{len(failed)} of the {len(members)} members of the ensemble failed, so no ensemble is written: "
                + "; ".join(f"seed {s}: {err}" for s, err in failed.items())
            )
        folders = [m[1] for m in members]
        member_metrics = [results[k] for k in range(len(members))]
        metrics = ensemble_metrics(
            run_dir, self.cfg, prepared[0].task, folders, member_metrics, self.scores, self.began
        )
        log_ensemble(self.cfg, run_dir, self.names, metrics)
        _report(metrics, run_dir)
        return metrics


def check_fits(first, n: int) -> None:
    """Refuse an ensemble whose n members, trained as one pack, would not fit the device's free memory (one member's
    memory estimated as pack=auto estimates it, run/packs.py)."""
    from .packs import AUTO_MEMORY_SHARE, free_bytes, run_bytes

    per_member = run_bytes(first)
    free, where = free_bytes(first)
    if n > 1 and n * per_member > AUTO_MEMORY_SHARE * free:
        fits = max(int(AUTO_MEMORY_SHARE * free // per_member), 1)
        raise DIPError(
            f"ensemble={n} trains its {n} members together, about {n * per_member / 2**30:.1f} GB "
            f"({per_member / 2**20:.0f} MB per member, estimated), more than {AUTO_MEMORY_SHARE:.0%} of the "
            f"{free / 2**30:.1f} GB free on {where}. Use at most ensemble={fits} here, or a smaller data.crop or net."
        )


def ensemble_metrics(
    run_dir: Path, cfg: DictConfig, task, folders: list[Path], member_metrics: list[dict], scores: dict, began: float
) -> dict:
    """The ensemble's folder, written all or none (run/outputs.write_all): restored.png (the members' mean),
    observed.png and ground_truth.png (the first member's), best.png (the mean of the best iterates, with ground
    truth), config.yaml and metrics.json, whose content is returned. `scores`: the metrics beside PSNR."""
    restored = average_images([f / "restored.png" for f in folders])
    best = None
    if task.clean is not None and all((f / "best.png").is_file() for f in folders):
        best = average_images([f / "best.png" for f in folders])  # the oracle: each member's best, averaged
    first = member_metrics[0]
    metrics: dict[str, Any] = {
        "task": first["task"],
        "image": first["image"],
        "ensemble": len(folders),
        "seed": int(cfg.seed),
        "seeds": [m["seed"] for m in member_metrics],
        "members": [str(f.relative_to(run_dir)) for f in folders],
        "observation_sha256": first["observation_sha256"],
        "psnr_observed": first["psnr_observed"],
        "psnr_ensemble": None,
        "psnr_members": None,
        "psnr_members_mean": None,
        "member_stop_steps": [m.get("stop_step") for m in member_metrics],
        "stop_rule": first.get("stop_rule"),  # the members' rule (each chose its own result), or None
        "regularizer": first.get("regularizer"),  # the members' variant
        "member_iterations": [m["iterations"] for m in member_metrics],
        "stop_reason": first.get("stop_reason"),
        "iterations": max(m["iterations"] for m in member_metrics),
        "seconds": round(sum(m["seconds"] for m in member_metrics), 3),
        "device": first["device"],
        "speed": first["speed"],
        "pack": max(m.get("pack", 1) for m in member_metrics),
        "warnings": sorted({w for m in member_metrics for w in m.get("warnings", [])}),
    }
    if task.clean is not None:  # scored as written (8-bit), members and mean alike

        def scored(image: torch.Tensor, metric=None) -> float:
            image = quantised(image).to(task.clean.device)
            return task.score(image) if metric is None else task.metric_score(metric, image)

        members = [scored(read_image(f / "restored.png")) for f in folders]
        metrics.update(
            psnr_ensemble=scored(restored),
            psnr_members=members,
            psnr_members_mean=sum(members) / len(members),
            psnr_convention=task.psnr_convention,
        )
        for name, metric in scores.items():
            metrics[f"{name}_ensemble"] = scored(restored, metric)
        if best is not None:
            metrics["psnr_ensemble_best"] = scored(best)
    writes = [("restored.png", lambda path: write_image(path, restored))]
    if best is not None:
        writes.append(("best.png", lambda path: write_image(path, best)))
    for image in ("observed", "ground_truth"):
        if (folders[0] / f"{image}.png").is_file():
            writes.append((f"{image}.png", lambda path, i=image: shutil.copyfile(folders[0] / f"{i}.png", path)))
    metrics["wall_seconds"] = round(time.perf_counter() - began, 3)
    write_all(run_dir, writes, to_yaml(cfg), metrics)
    return metrics


def log_ensemble(cfg: DictConfig, run_dir: Path, names, metrics: dict) -> None:
    """The ensemble as a run of its own in its loggers, beside its members' (each logged as it trained): its config,
    its metrics.json as the summary and its final images, grouped with its members."""
    from .loggers import build_loggers, close_loggers, log_final_panel, set_summary, to_plain

    tags = list(dict.fromkeys([metrics["task"], names.image, *names.tags, f"ensemble={metrics['ensemble']}"]))
    config = {**to_plain(cfg), "choices": dict(names.choices)}
    loggers = build_loggers(
        cfg.get("logger"),
        run_dir,
        name=names.name,
        group=names.group,
        tags=tags,
        config=config,
        job_type=f"{metrics['task']} ensemble",
    )
    try:
        set_summary(loggers, metrics, step=metrics["iterations"] - 1, config=config)
        log_final_panel(loggers, run_dir, step=metrics["iterations"])
    finally:
        close_loggers(loggers, failed=False)


def quantised(image: torch.Tensor) -> torch.Tensor:
    """An image as its 8-bit PNG holds it, read back as read_image reads it (what dip-gather scores)."""
    return array_to_tensor(np.asarray(to_uint8(image), dtype=np.float32) / 255.0)


def _report(metrics: dict, run_dir: Path) -> None:
    if metrics["psnr_ensemble"] is None and metrics["stop_rule"] is None:  # each member's own final result
        log.info(
            "The result is the mean of %d seeds' final results (no stopping rule): %s",
            metrics["ensemble"],
            run_dir / "restored.png",
        )
        return
    if metrics["psnr_ensemble"] is None:
        log.info(
            "The result is the mean of %d seeds' results, each chosen by %s (at iterations %s): %s",
            metrics["ensemble"],
            metrics["stop_rule"],
            ", ".join(str(s) for s in metrics["member_stop_steps"]),
            run_dir / "restored.png",
        )
        return
    log.info(
        "PSNR of the corrupted input: %.2f dB | ensemble of %d seeds: %.2f dB (members %s, mean %.2f dB)",
        metrics["psnr_observed"],
        metrics["ensemble"],
        metrics["psnr_ensemble"],
        ", ".join(f"{p:.2f}" for p in metrics["psnr_members"]),
        metrics["psnr_members_mean"],
    )
    log.info("outputs in %s (each member's in %s/)", run_dir, MEMBERS)
