"""One line per job: Lightning's and W&B's start-up banners are not printed by dip-run.

Lightning prints, for every Trainer, which accelerators exist ("GPU available: False, used: False", "TPU
available: ...", on CUDA "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]"), an advertisement ("💡 Tip: ... litlogger"),
why fit ended ("`Trainer.fit` stopped: `max_epochs=1` reached.": always so, dip-run's loop runs one epoch of
`iterations`) and that configure_optimizers returned None (dip-run steps its own optimizers: manual optimisation).
W&B warns that "The anonymous setting has no effect", because Lightning's WandbLogger always passes `anonymous`
(wandb/wandb#10909). None of them says anything about a DIP run; dip-run's own lines (dip_lightning loggers)
say which device ran and how the run ended. Where SLURM's commands are installed, Lightning also warns that `srun`
"is available but is not used": dip-run sends jobs to SLURM through sbatch (launcher=submitit_slurm) instead.

`install()` runs when this module is imported (by dip_lightning.train and run/fit.py), in every process that trains
(dip-run itself, sweep workers, packed workers); it imports nothing heavy: logging filters on Lightning's logger
names, a warnings filter, and a mark on W&B's print-once memory set when W&B is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import warnings

# The loggers Lightning prints its banners through (rank_zero_info goes to whichever rank_zero module set it last).
LIGHTNING_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.accelerators.cuda",
    "lightning.pytorch.accelerators.cuda",
)
BANNERS = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "IPU available:",
    "LOCAL_RANK:",
    "💡 Tip:",
    "`Trainer.fit` stopped:",
)
WARNINGS = (
    r".*configure_optimizers` returned `None`",
    # on a machine with SLURM's commands: dip-run trains one process per job, and launcher=submitit_slurm
    # submits the jobs through sbatch (docs/cluster.md), so Lightning's hint to wrap dip-run in srun misleads
    r".*The `srun` command is available on your system but is not used",
)
WANDB_ANONYMOUS = "The anonymous setting has no effect and will be removed in a future version."


class _NoBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        return not message.lstrip().startswith(BANNERS)


_FILTER = _NoBanners()


def _mark_wandb_warning_printed(term) -> None:
    """W&B prints its anonymous-setting warning once per process (repeat=False): mark it as printed already."""
    printed, warn = getattr(term, "_printed_messages", None), getattr(term, "WARN_STRING", None)
    if isinstance(printed, set) and isinstance(warn, str):
        printed.add(f"{warn} {WANDB_ANONYMOUS}")


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` once `name` is imported, without importing it now (W&B takes half a second)."""

    def __init__(self, name: str, then) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once, and out of the way of the real finders below
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec
        then = self.then

        def exec_then(module):
            exec_module(module)
            try:
                then(module)
            except Exception:  # silencing a banner is never worth a failed import
                pass

        loader.exec_module = exec_then
        return spec


def install() -> None:
    """Silence the banners in this process (idempotent)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if "wandb.errors.term" in sys.modules:
        _mark_wandb_warning_printed(sys.modules["wandb.errors.term"])
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("wandb.errors.term", _mark_wandb_warning_printed))


install()
