"""Logger construction: W&B (offline by default, the run stored inside the run folder), CSV, or none.

wandb is imported only when asked for: it costs seconds at import.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def build_logger(cfg: DictConfig | None, run_dir: Path, name: str, group: str | None, tags: list[str],
                 config: dict[str, Any]):
    kind = None if cfg is None else cfg.get("kind")
    if kind in (None, "none"):
        return None
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
    elif kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        if cfg.get("offline", True):
            os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        logger = WandbLogger(project=cfg.get("project", "dip-lightning"), save_dir=str(run_dir),
                             offline=bool(cfg.get("offline", True)), name=name, group=group, tags=tags,
                             entity=cfg.get("entity"), log_model=False)
    else:
        from .errors import DIPError

        raise DIPError(f"logger={kind!r} is not known; expected wandb, csv or none.")
    logger.log_hyperparams(config)
    return logger


def close_logger(logger, failed: bool, discard: bool = False) -> None:
    """Finish the logger's run; `discard`: then delete its folder (a failed run leaves no outputs at all)."""
    if logger is None:
        return
    try:
        logger.finalize("failed" if failed else "success")
    finally:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1 if failed else 0)
        if discard:
            import shutil

            folder = Path(logger.save_dir) / "wandb" if type(logger).__name__ == "WandbLogger" else \
                Path(logger.log_dir)
            shutil.rmtree(folder, ignore_errors=True)


def log_history(logger, history: dict[str, list[float]], log_every: int) -> None:
    """A finished run's curves, every `log_every` iterations and the last (a packed run logs after the pack)."""
    if logger is None:
        return
    steps = history["iteration"]
    for i, step in enumerate(steps):
        if step % log_every == 0 or i == len(steps) - 1:
            row = {k: history[k][i] for k in history if k != "iteration" and i < len(history[k])}
            logger.log_metrics({k: v for k, v in row.items() if v == v}, step=step)


def set_summary(logger, values: dict[str, Any]) -> None:
    """Summary metrics (psnr_best, best_step, ...) of a W&B run; other loggers get them as a last log line."""
    if logger is None:
        return
    clean = {k: v for k, v in values.items() if isinstance(v, (int, float)) and v == v}
    if type(logger).__name__ == "WandbLogger":
        for key, value in clean.items():
            logger.experiment.summary[key] = value
    elif clean:
        logger.log_metrics({f"final/{k}": v for k, v in clean.items()})


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
