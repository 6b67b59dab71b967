"""What the benchmarks share: the app's config composed with overrides, and a run through the framework."""

from __future__ import annotations

import logging
import os

# a net small enough for a benchmark's smoke mode (--tiny) or a GPU check's quick steps
TINY_NET = ["net.num_channels_down=[16,16,16]", "net.num_channels_up=[16,16,16]", "net.num_channels_skip=[4,4,4]"]


def compose(overrides: list[str]):
    """conf/train.yaml with `overrides`, as dip-run composes it (without a Hydra app around it)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from dip_lightning.config.compose import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_config(overrides: list[str], run_dir: str | os.PathLike) -> dict:
    """One run of `overrides` into `run_dir` (Lightning's messages silenced): its metrics, or {"error": ...} for a
    run the framework refused or stopped with a DIPError (the benchmark goes on with the others)."""
    from dip_lightning.errors import DIPError
    from dip_lightning.run.job import run

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg = compose(overrides)
    try:
        return run(cfg, run_dir)
    except DIPError as err:
        return {"error": str(err)}
