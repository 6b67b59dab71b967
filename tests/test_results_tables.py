"""Results a researcher can paste and trust: one name per meaning across a run's outputs, and dip-gather's tables
(the result first, the oracle labelled, image names, no empty columns, the image x setting table, the plot of what
the tables report). No DIP run: job folders are written by hand, as in tests/test_sweeps.py."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dip_lightning import history as h
from dip_lightning.run_metrics import KEYS


# ------------------------------------------------------------------------------------- one name, one meaning
def test_no_history_column_is_a_metrics_json_key():
    """W&B shows a curve and a summary value of one name as one thing: `psnr_observed` was both the fit to the
    observation (the curve) and the corrupted input's PSNR (metrics.json), so the run's summary showed the input's
    PSNR as the curve's last value."""
    assert h.PSNR_FIT == "psnr_fit" and "psnr_observed" in KEYS
    assert not set(h.COLUMNS) & set(KEYS), set(h.COLUMNS) & set(KEYS)
    assert not hasattr(h, "PSNR_OBSERVED")  # a reader of the old constant fails where it reads it


def write_old_curves(path: Path, values, gt: bool = True) -> None:
    """curves.csv as runs wrote it before the history's fit column was renamed (psnr_observed)."""
    rows = ["iteration,loss,psnr_observed,psnr_gt,psnr_gt_avg"]
    rows += [f"{i},0.1,{20 + i},{v if gt else 'nan'},{v if gt else 'nan'}" for i, v in enumerate(values)]
    path.write_text("\n".join(rows) + "\n")


def test_an_old_curves_csv_is_read_under_the_new_names(tmp_path):
    write_old_curves(tmp_path / "curves.csv", [20.0, 21.0])
    curves = h.read_curves(tmp_path / "curves.csv")
    assert list(curves) == ["iteration", "loss", "psnr_fit", "psnr_gt", "psnr_gt_avg"]
    assert curves[h.PSNR_FIT] == [20.0, 21.0]
    # a history that already has the new name keeps it (an old name beside it is not renamed over it)
    both = h.upgrade({"psnr_fit": [1.0], "psnr_observed": [2.0]})
    assert both == {"psnr_fit": [1.0], "psnr_observed": [2.0]}
    (tmp_path / "foreign.csv").write_text("iteration,loss\n0,1\n")
    from dip_lightning.errors import DIPError

    with pytest.raises(DIPError, match="lacks the history columns"):
        h.read_curves(tmp_path / "foreign.csv")


def test_the_final_scalars_end_the_curves_at_the_last_step(tmp_path):
    """CSV and TensorBoard get metrics.json's numbers as final/<key> at the run's last iteration (the step of its
    last curve row), not at a step of their own."""
    from pytorch_lightning.loggers import CSVLogger

    from dip_lightning.loggers import log_history, set_summary

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    history = {h.ITERATION: [0, 1, 2], **{k: [1.0, 2.0, 3.0] for k in h.COLUMNS}}
    log_history([logger], history, log_every=1)
    set_summary([logger], {"psnr_best": 30.0, "psnr_observed": 20.0, "stop_reason": "x"}, step=2)
    logger.finalize("success")
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    (final,) = [r for r in rows if r.get("final/psnr_best")]
    assert final["step"] == "2" and float(final["final/psnr_observed"]) == 20.0
    assert "psnr_observed" not in rows[0] and {"psnr_fit", "final/psnr_observed"} <= set(rows[0])
    with pytest.raises(TypeError):
        set_summary([logger], {"psnr_best": 30.0})  # the step is not optional: a default put it at step 0


def test_the_final_panel_says_which_image_is_the_result_and_which_the_oracle(tmp_path):
    from dip_lightning.data.io import write_image
    from dip_lightning.loggers import log_final_panel

    class WandbLogger:  # log_images dispatches on the class name; this one records what it is given
        logged: list = []

        def log_image(self, key, images, caption, step):
            self.logged.append((key, caption, step))

    import torch

    for name in ("observed", "restored", "best"):
        write_image(tmp_path / f"{name}.png", torch.full((3, 8, 8), 0.5))
    (tmp_path / "metrics.json").write_text(json.dumps({"best_step": 7, "stop_step": 9, "stop_reason": "discrepancy"}))
    log_final_panel([WandbLogger()], tmp_path, step=12)
    ((key, captions, step),) = WandbLogger.logged
    assert key == "final" and step == 12
    assert captions == [
        "observed",
        "restored @ 9 (the result: discrepancy)",
        "best @ 7 (oracle: chosen with the ground truth)",
    ]


# ------------------------------------------------------------------------------------- what a sweeper optimises
STOPPED = {"psnr_final": 27.0, "psnr_best": 29.0, "psnr_stop": 28.0, "stop_step": 90, "stop_reason": "discrepancy"}
FIXED = {"psnr_final": 27.0, "psnr_best": 29.0}
ENSEMBLE = {"ensemble": 2, "psnr_ensemble": 28.5, "psnr_ensemble_best": 29.5, "psnr_members_mean": 28.0}


def test_sweepers_optimise_the_result_not_the_oracle_by_default():
    """The default target was psnr_best, the best iterate chosen with the ground truth: an Optuna search tuned for
    an iterate that no run without ground truth returns. It is now the PSNR of what the run returned."""
    from omegaconf import OmegaConf

    from dip_lightning.packing.pack import optimized_value
    from dip_lightning.run_metrics import result_kind, result_psnr
    from dip_lightning.train import CONFIG_DIR

    train = yaml.safe_load((Path(CONFIG_DIR) / "train.yaml").read_text())
    optuna = yaml.safe_load((Path(CONFIG_DIR) / "hparams_search" / "dip_optuna.yaml").read_text())
    assert train["optimized_metric"] == optuna["optimized_metric"] == "psnr_result"
    cfg = OmegaConf.create({"optimized_metric": "psnr_result"})
    assert [result_kind(m) for m in (STOPPED, FIXED, ENSEMBLE)] == ["stop", "final", "ensemble"]
    assert [optimized_value(cfg, m) for m in (STOPPED, FIXED, ENSEMBLE)] == [28.0, 27.0, 28.5]
    assert optimized_value(OmegaConf.create({}), STOPPED) == 28.0  # no optimized_metric: the same default
    assert optimized_value(cfg, {**FIXED, "psnr_result": 26.0}) == 26.0  # a run that writes its own: that
    oracle = OmegaConf.create({"optimized_metric": "psnr_best"})
    assert optimized_value(oracle, STOPPED) == 29.0  # asked for by name, the oracle still
    assert optimized_value(oracle, ENSEMBLE) == 28.5  # a job without the key: its result's
    assert np.isnan(optimized_value(cfg, {"psnr_final": None, "psnr_best": None}))  # no ground truth
    assert np.isnan(optimized_value(cfg, RuntimeError("failed")))
    assert result_psnr({"psnr_final": None, "psnr_stop": None, "stop_step": 3}) is None


def test_the_rules_named_oracle_are_those_that_stop_with_the_ground_truth():
    import importlib
    import pkgutil

    import dip_lightning.callbacks
    from dip_lightning.callbacks.roles import StoppingRule
    from dip_lightning.run_metrics import ORACLE_RULES

    for module in pkgutil.iter_modules(dip_lightning.callbacks.__path__):
        importlib.import_module(f"dip_lightning.callbacks.{module.name}")

    def rules(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from rules(sub)

    named = {c.__name__ for c in rules(StoppingRule) if not c.__name__.startswith("_")}
    assert {"Discrepancy", "ESWMV", "SelfValidation", "PSNRPatience"} <= named
    assert {c.__name__ for c in rules(StoppingRule) if c.uses_ground_truth} == set(ORACLE_RULES)
