"""Loggers: any Lightning logger, each built from its config file conf/logger/<name>.yaml: a `_target_` (the
logger's class) and its arguments, under the file's own key (`wandb:`, `csv:`, `tensorboard:`, or a user's
`mlflow:`), so Hydra merges a list of them into one `logger` node (`logger=[wandb,csv]`), or none (`logger=none`).
dip-run fills in what belongs to the run where the config leaves it unset: the run folder as `save_dir`, W&B's run
name, group, tags and resumed id, another logger's `run_name` (build_loggers). W&B is offline by default, its run
stored inside the run folder.

Every function here takes the list of built loggers. wandb, tensorboard and the logger classes are imported only
when asked for: they cost seconds at import.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..callbacks.snapshots import log_images

log = logging.getLogger("dip_lightning")

# the run folder each logger was built for (build_loggers): close_loggers(discard=True) deletes only inside it
_RUN_DIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
HOLDS = (
    "a logger config holds a `_target_` (a Lightning logger class, e.g. pytorch_lightning.loggers.CSVLogger) and "
    "its arguments, under its own key in conf/logger/<name>.yaml or your --config-dir's logger/<name>.yaml"
)


def _loaded_class(module: str, name: str):
    """A class of an already imported module, else None: an object can only be an instance of a loaded class, so
    asking costs no import."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def is_wandb(logger) -> bool:
    """A WandbLogger or a subclass."""
    cls = _loaded_class("pytorch_lightning.loggers.wandb", "WandbLogger")
    return cls is not None and isinstance(logger, cls)


def _is_csv(logger) -> bool:
    cls = _loaded_class("pytorch_lightning.loggers.csv_logs", "CSVLogger")
    return cls is not None and isinstance(logger, cls)


def _accepts(target: Any, arg: str) -> bool:
    """Whether `target` (a class or a function) takes `arg` by name; one that only takes **kwargs does not."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    p = params.get(arg)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def build_loggers(
    cfg: DictConfig | None,
    run_dir: Path,
    name: str,
    group: str | None,
    tags: list[str],
    config: dict[str, Any],
    start: int = 0,
    wandb_id: str | None = None,
    job_type: str | None = None,
) -> list:
    """The loggers of `cfg` (the `logger` node), one per key with a `_target_`, in its order; [] for logger=none (a
    key set to null is left out). Where a node leaves an argument unset (absent or null) that its target takes,
    this run's value is passed: `save_dir` the run folder; a WandbLogger's `name`, `group`, `id` (`wandb_id`: the
    W&B run a resumed run continues, from its checkpoint) and `tags` (`tags` plus the node's own); another logger's
    `run_name` the run's `name`. A CSVLogger of a run resumed at iteration `start` keeps its rows before it. Each
    gets `config` (log_hyperparams). A node without `_target_`, or one that cannot be built, is refused naming
    its key (the loggers built before it are closed)."""
    from ..errors import DIPError

    cfg = cfg or {}
    nodes = {}
    for key in cfg:
        node = cfg[key]
        if node is None:
            continue
        if not OmegaConf.is_dict(node) or not node.get("_target_"):
            raise DIPError(
                f"logger.{key} has no _target_ ({node!r} is not a logger config): {HOLDS}, e.g. logger/mlflow.yaml: "
                "'mlflow: {_target_: pytorch_lightning.loggers.MLFlowLogger, experiment_name: dip}', then "
                "logger=mlflow. The presets: logger=<wandb, csv, tensorboard, none> or a list, e.g. "
                "'logger=[wandb,csv]'."
            )
        nodes[key] = node
    built: dict[str, Any] = {}
    try:
        for key, node in nodes.items():
            built[key] = _build_one(key, node, run_dir, name, group, tags, wandb_id, job_type)
            if _is_csv(built[key]) and start > 0:
                keep_rows_before(built[key], start)
        for key, logger in built.items():
            try:
                logger.log_hyperparams(config)  # W&B's run starts here: wandb.init gets the node's other arguments
            except Exception as err:
                raise DIPError(
                    f"logger.{key} ({nodes[key].get('_target_')}) could not start its run: {type(err).__name__}: "
                    f"{_first_line(err)}. Check its arguments against that class's documentation (a WandbLogger "
                    "passes those it does not take itself to wandb.init)."
                ) from None
    except BaseException:
        close_loggers(list(built.values()), failed=True, discard=start <= 0)  # a resumed run's earlier logs stay
        raise
    loggers = list(built.values())
    return loggers


def _build_one(key: str, node: DictConfig, run_dir: Path, name: str, group, tags: list[str], wandb_id, job_type):
    """One logger from its node (build_loggers), with the run's values where the node leaves them unset."""
    import importlib

    import hydra.utils

    from ..errors import DIPError, root_cause

    target = str(node.get("_target_"))
    try:  # <module>.<name>, as instantiate finds it (hydra.utils.get_object would log its failure as well)
        module, _, attr = target.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
    except Exception as err:
        raise DIPError(
            f"logger.{key}: its _target_ {target} cannot be imported ({type(err).__name__}: {_first_line(err)}); "
            f"{HOLDS}. Is its package installed?"
        ) from None
    unset = lambda arg: node.get(arg) is None  # noqa: E731 (absent or null)
    fill: dict[str, Any] = {}
    if unset("save_dir") and _accepts(cls, "save_dir"):
        fill["save_dir"] = str(run_dir)
    wandb_class = _loaded_class("pytorch_lightning.loggers.wandb", "WandbLogger")  # loaded with a subclass
    if inspect.isclass(cls) and wandb_class is not None and issubclass(cls, wandb_class):
        if node.get("offline"):
            os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        fill["name"] = node.get("name") or name
        fill["group"] = node.get("group") or group
        fill["tags"] = list(dict.fromkeys([*tags, *(str(t) for t in node.get("tags") or [])]))
        fill["id"] = node.get("id") or wandb_id  # WandbLogger passes resume="allow": a given id continues that run
        fill["job_type"] = node.get("job_type") or job_type
        # each run of a process its own W&B run: W&B's default hands a second wandb.init (the next run of a pack or
        # an ensemble) the first one's run, and WandbLogger would log into it
        fill["reinit"] = node.get("reinit") or "create_new"
    elif unset("run_name") and _accepts(cls, "run_name"):
        fill["run_name"] = name
    try:
        logger = hydra.utils.instantiate(node, _convert_="all", **fill)
    except Exception as err:
        cause = root_cause(err)
        if isinstance(cause, DIPError):
            raise cause from None
        raise DIPError(
            f"logger.{key} ({target}) could not be built: {type(cause).__name__}: {_first_line(cause)}. Check its "
            f"arguments against that class's documentation; dip-run passes {', '.join(fill) or 'none'} itself where "
            "the config leaves them unset."
        ) from None
    try:
        _RUN_DIRS[logger] = Path(run_dir)
    except TypeError:  # unhashable: close_loggers(discard=True) cannot tell where it was built
        pass
    return logger


def _first_line(err: BaseException) -> str:
    """An error's message for a sentence of ours: its first line, without its own full stop."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".") if text else repr(err)


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
    """Lightning's CSVLogger as conf/logger/csv.yaml makes it (<run dir>/csv/metrics.csv), keeping a resumed run's
    earlier rows (keep_rows_before)."""
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if start > 0:
        keep_rows_before(logger, start)
    return logger


def keep_rows_before(logger, start: int) -> None:
    """A CSVLogger deletes an existing metrics.csv when it starts: a run resumed in its own folder keeps the rows
    logged before its checkpoint (iteration `start`; those after it are logged again) and appends to them."""
    import csv as csvlib

    path = Path(logger.log_dir) / "metrics.csv"
    if start <= 0 or not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csvlib.DictReader(f)
        header, rows = list(reader.fieldnames or []), [r for r in reader if _step(r) < start]
    writer = logger.experiment  # created here: it deletes the file, which is written back below
    with open(path, "w", newline="") as f:
        out = csvlib.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(rows)
    writer.metrics_keys = sorted(header)  # the header it appends under


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
            if is_wandb(logger):  # its own run: several of one process are open at once (a pack, an ensemble)
                logger.experiment.finish(exit_code=1 if failed else 0)
        except Exception as err:
            log.warning(
                "%s could not finish its run (%s: %s); the run's own outputs are not affected.",
                type(logger).__name__,
                type(err).__name__,
                err,
            )
        finally:
            if discard:
                _discard(logger)


def _discard(logger) -> None:
    """Delete a logger's folder: W&B's <save_dir>/wandb, another's log_dir, else its save_dir. For a logger built
    by build_loggers only inside the run folder: a store it shares with other runs (an MLflow tracking folder, a
    save_dir set in its config) is left alone."""
    import shutil

    try:
        if is_wandb(logger):
            folder = Path(logger.save_dir) / "wandb"
        else:
            folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    except Exception:  # a property that needs the logger's service
        return
    if folder is None:
        return
    folder = Path(folder).resolve()
    try:
        run_dir = _RUN_DIRS.get(logger)
    except TypeError:  # unhashable
        run_dir = None
    if run_dir is not None and (folder == run_dir.resolve() or run_dir.resolve() not in folder.parents):
        log.info("%s's folder %s is not its own in the run folder: left in place.", type(logger).__name__, folder)
        return
    shutil.rmtree(folder, ignore_errors=True)


def set_summary(loggers: list, values: dict[str, Any], step: int, config: dict[str, Any] | None = None) -> None:
    """Summary metrics (metrics.json's numbers: psnr_best, best_step, ...) of a run: a W&B run's summary values
    under their metrics.json names; other loggers get them as one last log line of final/<key> scalars at `step`,
    the run's last iteration (the step of its last curve row), so they end the curves rather than start them.
    TensorBoard gets them with the run's hyperparameters (`config`'s: hparams_of), so its HParams tab compares
    runs by setting."""
    from ..run_metrics import RESULT, result_psnr

    clean = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
    if result_psnr(values) is not None:
        clean[RESULT] = result_psnr(values)  # what the run returned, whichever key scores it
    for logger in loggers:
        if is_wandb(logger):
            for key, value in clean.items():
                logger.experiment.summary[key] = value
        elif clean and _is_tensorboard(logger) and config is not None:
            logger.log_hyperparams(hparams_of(config), metrics={f"final/{k}": v for k, v in clean.items()}, step=step)
        elif clean:
            logger.log_metrics({f"final/{k}": v for k, v in clean.items()}, step=step)


def hparams_of(config: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a run is compared by: its config groups' choices and the scalars of its task, net,
    optimizer, regularizer and data, its seed and iteration count (not how it ran: logger, trainer, paths)."""
    chosen = {f"choice/{g}": c for g, c in (config.get("choices") or {}).items()}
    scalars = {
        f"{group}.{k}": v
        for group in ("task", "net", "optimizer", "regularizer", "data")
        for k, v in (config.get(group) or {}).items()
        if isinstance(v, (int, float, str, bool)) and not k.startswith("_")
    }
    return {**chosen, "seed": config.get("seed"), "iterations": config.get("iterations"), **scalars}


def _is_tensorboard(logger) -> bool:
    cls = _loaded_class("pytorch_lightning.loggers.tensorboard", "TensorBoardLogger")
    return cls is not None and isinstance(logger, cls)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def run_loggers(r) -> list:  # r: a run.prepare.PreparedRun
    """The run's loggers (W&B offline, CSV, TensorBoard, a user's own; none, one or several), named and tagged for
    its sweep: the task, net and image, then the config's `tags` (tags=[paper]). A resumed run continues its W&B run
    (the id its checkpoint keeps), and its checkpoints keep this run's id."""
    from ..errors import DIPError

    tags = r.cfg.get("tags") or []
    if isinstance(tags, str):  # tags=paper
        tags = [tags]
    if not OmegaConf.is_list(tags) and not isinstance(tags, (list, tuple)):
        raise DIPError(f"tags={tags!r} is not valid; expected a list of labels, e.g. 'tags=[paper,denoise]'.")
    loggers = build_loggers(
        r.cfg.get("logger"),
        r.run_dir,
        name=r.names.name,
        group=r.names.group,
        tags=list(dict.fromkeys([r.task.name, r.data.name, *r.names.tags, *map(str, tags)])),  # net=skip_small
        config={**to_plain(r.cfg), "choices": dict(r.names.choices)},
        start=r.checkpointing.start_iteration,
        wandb_id=r.checkpointing.resumed_logger_ids.get("wandb"),
        job_type=r.task.name,
    )
    return loggers
