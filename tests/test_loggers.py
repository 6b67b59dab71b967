"""Loggers are built from their configs' `_target_` (run/loggers.py): every conf/logger file builds, dip-run fills
in what belongs to the run where a config leaves it unset, a user's own logger from a --config-dir logs a run, and
W&B's own arguments reach its run. W&B stays offline (no network) and writes inside the run folder."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import TINY, TINY_NET, compose_cfg, dip_cli
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger

from dip_lightning.config.compose import CONF
from dip_lightning.errors import DIPError
from dip_lightning.run.loggers import build_loggers, close_loggers

PRESETS = sorted(p.stem for p in (CONF / "logger").glob("*.yaml"))
RUN = {"name": "myrun", "group": "mygroup", "tags": ["denoising", "paper"], "config": {"seed": 0}}


class Recorder(Logger):
    """A user's own logger: takes save_dir and run_name by name (dip-run fills them in) and writes what it is
    given to <save_dir>/recorded.json when it finishes."""

    def __init__(self, save_dir: str | None = None, run_name: str | None = None, label: str = "mine"):
        super().__init__()
        self._save_dir, self.run_name, self.label = save_dir, run_name, label
        self.metrics: list[tuple[int | None, dict]] = []
        self.hparams: dict = {}

    @property
    def name(self) -> str:
        return self.label

    @property
    def version(self) -> str:
        return "0"

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def log_dir(self) -> str | None:
        return None if self._save_dir is None else str(Path(self._save_dir) / "recorder")

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.hparams = dict(params)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def finalize(self, status: str) -> None:
        folder = Path(self.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "recorded.json").write_text(json.dumps({"status": status, "metrics": self.metrics}))


class OnlyKwargs(Recorder):
    """A logger whose constructor takes **kwargs alone: dip-run passes it nothing (it may not know the name)."""

    def __init__(self, **kwargs):
        super().__init__(label=kwargs.get("label", "kwargs"))
        self.kwargs = kwargs


def build(node: dict, run_dir: Path, **run):
    return build_loggers(OmegaConf.create(node), run_dir, **{**RUN, **run})


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


# ------------------------------------------------------------------------------------- the presets, built one by one
@pytest.mark.parametrize("preset", [*PRESETS, "[wandb,csv,tensorboard]"])
def test_every_logger_preset_composes_and_builds_inside_the_run_folder(preset, tmp_path, offline):
    cfg = compose_cfg([f"logger={preset}"])
    assert all(node.get("_target_") for node in cfg.logger.values()), "a preset names its logger's class"
    run_dir = tmp_path / "run"
    loggers = build_loggers(cfg.logger, run_dir, **RUN)
    assert [type(lg).__name__ for lg in loggers] == [
        {"wandb": "WandbLogger", "csv": "CSVLogger", "tensorboard": "TensorBoardLogger"}[k] for k in cfg.logger
    ]
    for lg in loggers:
        lg.log_metrics({"loss": 0.5}, step=3)
    close_loggers(loggers, failed=False)
    kinds = set(cfg.logger)
    if "wandb" in kinds:
        assert list((run_dir / "wandb").glob("offline-run-*"))
    if "csv" in kinds:
        assert "loss" in (run_dir / "csv" / "metrics.csv").read_text()
    if "tensorboard" in kinds:
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    if not kinds:
        assert loggers == [] and preset == "none"


def test_a_wandb_run_gets_the_runs_name_group_tags_and_resumed_id_unless_its_config_sets_them(tmp_path, offline):
    (lg,) = build_loggers(compose_cfg(["logger=wandb", "logger.wandb.tags=[extra]"]).logger, tmp_path, **RUN)
    run = lg.experiment
    assert (run.name, run.group, list(run.tags)) == ("myrun", "mygroup", ["denoising", "paper", "extra"])
    assert lg.save_dir == str(tmp_path) and run.project == "dip-lightning" and run.dir.startswith(str(tmp_path))
    close_loggers([lg], failed=False)
    (lg,) = build_loggers(compose_cfg(["logger=wandb"]).logger, tmp_path / "resumed", **RUN, wandb_id="abc123")
    assert lg.version == "abc123"  # a resumed run continues its W&B run
    close_loggers([lg], failed=False)
    ovr = ["logger=wandb", "logger.wandb.id=mine1", "logger.wandb.name=named", "logger.wandb.group=g2"]
    (lg,) = build_loggers(compose_cfg(ovr).logger, tmp_path / "own", **RUN, wandb_id="abc123")
    assert (lg.version, lg.experiment.name, lg.experiment.group) == ("mine1", "named", "g2")  # the config wins
    close_loggers([lg], failed=False)


def test_a_resumed_csv_logger_keeps_its_rows_before_the_checkpoint(tmp_path):
    node = compose_cfg(["logger=csv"]).logger
    (lg,) = build_loggers(node, tmp_path, **RUN)
    for step in range(8):
        lg.log_metrics({"loss": float(step)}, step=step)
    close_loggers([lg], failed=False)
    (lg,) = build_loggers(node, tmp_path, **RUN, start=5)  # resumed at iteration 5: rows 5.. are logged again
    for step in (5, 6):
        lg.log_metrics({"loss": 10.0 + step}, step=step)
    close_loggers([lg], failed=False)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == [(s, float(s)) for s in range(5)] + [
        (5, 15.0),
        (6, 16.0),
    ]


# ------------------------------------------------------------------------------ a user's logger: what dip-run fills in
def test_a_users_logger_gets_the_run_folder_and_name_where_it_takes_them_and_leaves_them_unset(tmp_path):
    target = f"{__name__}.Recorder"
    (filled,) = build({"mine": {"_target_": target}}, tmp_path / "a")
    assert (filled.save_dir, filled.run_name, filled.hparams) == (str(tmp_path / "a"), "myrun", {"seed": 0})
    own = {"_target_": target, "save_dir": str(tmp_path / "store"), "run_name": "kept", "label": "x"}
    (kept,) = build({"mine": own}, tmp_path / "b")
    assert (kept.save_dir, kept.run_name, kept.label) == (str(tmp_path / "store"), "kept", "x")
    (bare,) = build({"mine": {"_target_": f"{__name__}.OnlyKwargs"}}, tmp_path / "c")
    assert bare.kwargs == {}  # **kwargs alone does not say it takes save_dir or run_name
    assert build({"off": None}, tmp_path / "d") == []  # a key set to null: left out


def test_discarding_deletes_a_loggers_folder_in_the_run_folder_but_not_a_store_outside_it(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "store"
    inside, outside = build(
        {
            "inside": {"_target_": f"{__name__}.Recorder"},
            "outside": {"_target_": f"{__name__}.Recorder", "save_dir": str(store)},
        },
        run_dir,
    )
    for lg in (inside, outside):
        lg.finalize("success")  # written before: the failed run's close deletes only its own
    close_loggers([inside, outside], failed=True, discard=True)
    assert not (run_dir / "recorder").exists() and (store / "recorder" / "recorded.json").is_file()


@pytest.mark.parametrize(
    ("node", "match"),
    [
        ({"mlflow": {"uri": "x"}}, r"logger.mlflow has no _target_ \(\{'uri': 'x'\} .*a logger config holds a "),
        ({"x": {"_target_": "no_such_pkg.Logger"}}, r"logger.x: its _target_ no_such_pkg.Logger cannot be imported"),
        (
            {"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger", "flush": 1}},
            r"logger.csv \(pytorch_lightning.loggers.CSVLogger\) could not be built: TypeError: .*'flush'",
        ),
    ],
)
def test_a_logger_config_that_cannot_be_built_is_refused_naming_its_key(node, match, tmp_path):
    with pytest.raises(DIPError, match=match) as err:
        build(node, tmp_path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ end to end, as a user
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed (the dev extra)")
def test_a_users_mlflow_logger_from_a_config_dir_logs_the_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # MLflow 3 refuses its file store unless told otherwise
    (tmp_path / "cfg" / "logger").mkdir(parents=True)
    (tmp_path / "cfg" / "logger" / "mlflow.yaml").write_text(
        f"mlflow:\n  _target_: pytorch_lightning.loggers.MLFlowLogger\n  experiment_name: dip\n  tracking_uri: {uri}\n"
    )
    args = [*TINY_NET, "data.crop=32", "callbacks=none", "chunk=10", "iterations=20", "cpu_threads=1"]
    out = dip_cli(
        ["--config-dir", str(tmp_path / "cfg"), *args, "logger=mlflow", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("dip").experiment_id])
    assert run.info.status == "FINISHED" and "iterations=20" in run.info.run_name  # the job's name, as W&B's
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps and steps == sorted(steps) and set(steps) <= set(range(20)) and steps[-1] == 19
    assert "final/psnr_best" in run.data.metrics and run.data.params.get("iterations") == "20"


def test_wandb_loggers_own_arguments_reach_the_offline_run(run_dip, offline):
    from test_run_report import wandb_record

    base = [o for o in TINY if o != "logger=none"]
    _, run_dir = run_dip([*base, "iterations=5", "logger=wandb", "logger.wandb.job_type=probe"])
    assert b"probe" in wandb_record(run_dir)
