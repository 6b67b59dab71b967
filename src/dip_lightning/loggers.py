"""Loggers: W&B (offline by default, the run stored inside the run folder), CSV and TensorBoard, one or several
at once (`logger=[wandb,csv]`), or none.

Each conf/logger file puts its settings under its own key (`wandb:`, `csv:`, `tensorboard:`), so Hydra merges a
list of them into one `logger` node; every function here takes the list of built loggers. wandb and tensorboard
are imported only when asked for: they cost seconds at import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("dip_lightning")

KINDS = ("wandb", "csv", "tensorboard")
# conf/logger/wandb.yaml's keys: WandbLogger's own (name, group, tags: dip-run's name, group and tags when unset;
# tags are added to dip-run's) and `offline`; CSV and TensorBoard take none
SETTINGS = {
    "wandb": ("offline", "project", "entity", "name", "group", "tags", "notes", "id"),
    "csv": (),
    "tensorboard": (),
}


def build_loggers(
    cfg: DictConfig | None,
    run_dir: Path,
    name: str,
    group: str | None,
    tags: list[str],
    config: dict[str, Any],
    start: int = 0,
    wandb_id: str | None = None,
) -> list:
    """The loggers that `cfg` (the `logger` node) names, in the order of KINDS; [] for logger=none. `start`: the
    iteration a resumed run goes on from (its CSV rows before it are kept); `wandb_id`: the W&B run it continues
    (the interrupted run's, from its checkpoint; logger.wandb.id wins). A setting none of them takes is refused,
    with the ones it takes."""
    from .errors import DIPError

    cfg = cfg or {}
    unknown = [k for k in cfg if k not in KINDS]
    if unknown:
        raise DIPError(
            f"logger settings {unknown} are not known; expected logger=<one of {', '.join(KINDS)}, none> "
            "or a list, e.g. 'logger=[wandb,csv]'."
        )
    for kind in cfg:
        wrong = sorted(k for k in (cfg[kind] or {}) if k not in SETTINGS[kind])
        if wrong:
            takes = f"it takes {', '.join(SETTINGS[kind])}" if SETTINGS[kind] else "it takes none"
            raise DIPError(
                f"logger.{kind} has no setting {', '.join(wrong)} ({takes}; conf/logger/{kind}.yaml). Run tags "
                "go in tags=[...], e.g. 'tags=[paper]'; W&B's run name in logger.wandb.name=<name>."
            )
    loggers = []
    if "wandb" in cfg:
        from pytorch_lightning.loggers import WandbLogger

        opts = cfg.wandb or {}
        if opts.get("offline", True):
            os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                project=opts.get("project") or "dip-lightning",
                save_dir=str(run_dir),
                offline=bool(opts.get("offline", True)),
                name=opts.get("name") or name,
                group=opts.get("group") or group,
                tags=list(dict.fromkeys([*tags, *(str(t) for t in opts.get("tags") or [])])),
                notes=opts.get("notes"),
                entity=opts.get("entity"),
                id=opts.get("id") or wandb_id,  # WandbLogger passes resume="allow": a given id continues that run
                log_model=False,
            )
        )
    if "csv" in cfg:
        loggers.append(csv_logger(run_dir, start))
    if "tensorboard" in cfg:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(
            TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
        )
    for logger in loggers:
        logger.log_hyperparams(config)
    return loggers


def logger_ids(loggers: list) -> dict[str, str]:
    """The ids of the loggers' runs that a resume continues (W&B's run id), by kind; a checkpoint keeps them."""
    return {"wandb": str(lg.version) for lg in loggers if type(lg).__name__ == "WandbLogger" and lg.version}


def log_images(loggers: list, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
    """uint8 HxWxC images to every logger that shows images (W&B renders float images black; CSV shows none)."""
    for logger in loggers:
        kind = type(logger).__name__
        if kind == "WandbLogger":
            logger.log_image(key, images=images, caption=captions, step=step)
        elif kind == "TensorBoardLogger":
            for image, caption in zip(images, captions):
                logger.experiment.add_image(
                    f"{key}/{caption.split(' @')[0]}",
                    image,
                    global_step=step,
                    dataformats="HWC" if image.ndim == 3 else "HW",
                )


def log_final_panel(loggers: list, run_dir: Path, step: int) -> None:
    """The run's observed / restored / best images, as written in its folder, logged once at the end under
    final/<name>. The captions say what each is (from the folder's metrics.json): restored.png is the run's result
    (its stopping rule's choice, else the last iterate), best.png the oracle (chosen with the ground truth)."""
    import json

    from PIL import Image

    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        metrics = {}
    metrics = metrics if isinstance(metrics, dict) else {}
    names = [n for n in ("observed", "restored", "best") if (Path(run_dir) / f"{n}.png").is_file()]
    images = []
    for n in names:
        with Image.open(Path(run_dir) / f"{n}.png") as img:
            array = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
        images.append(array)
    if images:
        log_images(loggers, "final", images, [_panel_caption(n, metrics) for n in names], step)


def _panel_caption(name: str, metrics: dict) -> str:
    """A final panel image's caption; what follows ' @' is left out of its TensorBoard tag (final/<name>)."""
    if name == "restored":
        rule = metrics.get("stop_reason")
        return f"restored @ {metrics['stop_step']} (the result: {rule})" if "stop_step" in metrics else name
    if name == "best" and metrics.get("best_step") is not None:
        return f"best @ {metrics['best_step']} (oracle: chosen with the ground truth)"
    return name


def csv_logger(run_dir: Path, start: int):
    """Lightning's CSVLogger, which deletes an existing metrics.csv when it starts: a run resumed in its own folder
    keeps the rows logged before its checkpoint (those after it are logged again) and appends to them."""
    import csv as csvlib

    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
    path = Path(run_dir) / "csv" / "metrics.csv"
    if start <= 0 or not path.is_file():
        return logger
    with open(path, newline="") as f:
        reader = csvlib.DictReader(f)
        header, rows = list(reader.fieldnames or []), [r for r in reader if _step(r) < start]
    writer = logger.experiment  # created here: it deletes the file, which is written back below
    with open(path, "w", newline="") as f:
        out = csvlib.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(rows)
    writer.metrics_keys = sorted(header)  # the header it appends under
    return logger


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


def close_loggers(loggers: list, failed: bool, discard: bool = False) -> None:
    """Finish the loggers' runs; `discard`: then delete their folders (a failed run leaves no outputs at all).
    A logger that cannot finish is a warning, not the run's end: the run's outcome (its outputs, its checkpoint) is
    already written. So it goes where a signal ended a logger's helper process too: SLURM sends a preempted or
    cancelled job's SIGTERM to every process of the job, W&B's service among them."""
    for logger in loggers:
        try:
            logger.finalize("failed" if failed else "success")
            if type(logger).__name__ == "WandbLogger":
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1 if failed else 0)
        except Exception as err:
            log.warning(
                "%s could not finish its run (%s: %s); the run's own outputs are not affected.",
                type(logger).__name__,
                type(err).__name__,
                err,
            )
        finally:
            if discard:
                import shutil

                folder = (
                    Path(logger.save_dir) / "wandb" if type(logger).__name__ == "WandbLogger" else Path(logger.log_dir)
                )
                shutil.rmtree(folder, ignore_errors=True)


def log_history(loggers: list, history: dict[str, list[float]], log_every: int, last: int | None = None) -> None:
    """A run's curves under their history names (history.COLUMNS: loss, psnr_fit, psnr_gt, psnr_gt_avg), every
    `log_every` iterations and the last row; `last`: only the last that many rows (the chunk the loop has just
    read). No history name is a metrics.json key, so W&B's summary of a curve is never a summary value's."""
    from .history import ITERATION

    steps = history[ITERATION]
    if not loggers:
        return
    first = 0 if last is None else max(len(steps) - last, 0)
    for i in range(first, len(steps)):
        step = steps[i]
        if step % log_every == 0 or i == len(steps) - 1:
            row = {k: history[k][i] for k in history if k != ITERATION and i < len(history[k])}
            for logger in loggers:
                logger.log_metrics({k: v for k, v in row.items() if v == v}, step=step)


def set_summary(loggers: list, values: dict[str, Any], step: int) -> None:
    """Summary metrics (metrics.json's numbers: psnr_best, best_step, ...) of a run: a W&B run's summary values
    under their metrics.json names; other loggers get them as one last log line of final/<key> scalars at `step`,
    the run's last iteration (the step of its last curve row), so they end the curves rather than start them."""
    clean = {k: v for k, v in values.items() if isinstance(v, (int, float)) and v == v}
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            for key, value in clean.items():
                logger.experiment.summary[key] = value
        elif clean:
            logger.log_metrics({f"final/{k}": v for k, v in clean.items()}, step=step)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def run_loggers(r) -> list:  # r: a train.PreparedRun
    """The run's loggers (W&B offline, CSV, TensorBoard; none, one or several), named and tagged for its sweep: the
    task, net and image, then the config's `tags` (tags=[paper]). A resumed run continues its W&B run (the id its
    checkpoint keeps), and its checkpoints keep this run's id."""
    from .errors import DIPError

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
