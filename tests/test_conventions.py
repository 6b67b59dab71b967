"""What lightning-hydra-template users bring: debug presets, logger=many_loggers, seed=null as a random seed that
is recorded, the resolved config printed as a tree, extras.enforce_tags."""

import json

import pytest
import torch
from conftest import REPO, TINY_NET, compose_cfg, dip_cli
from omegaconf import OmegaConf

from dip_lightning.run.job import run


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "conf" / "debug").glob("*.yaml")))
def test_every_debug_preset_runs(preset, tmp_path):
    cfg = compose_cfg([f"debug={preset}", *TINY_NET, "iterations=20" if preset == "profiler" else "cpu_threads=1"])
    metrics = run(cfg, tmp_path / preset)
    assert "debug" in cfg.tags and metrics["iterations"] == (1 if preset == "fdr" else 20)
    assert (tmp_path / preset / "restored.png").is_file()


def test_many_loggers_logs_to_wandb_csv_and_tensorboard_at_once(tmp_path):
    cfg = compose_cfg(["debug=default", *TINY_NET, "logger=many_loggers", "cpu_threads=1"])
    assert set(cfg.logger) == {"wandb", "csv", "tensorboard"}
    run(cfg, tmp_path / "run")
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file() and (tmp_path / "run" / "tensorboard").is_dir()


def test_seed_null_draws_a_seed_that_the_run_records_and_that_repeats_it(tmp_path):
    first = run(compose_cfg(["debug=default", *TINY_NET, "seed=null", "cpu_threads=1"]), tmp_path / "a")
    recorded = OmegaConf.load(tmp_path / "a" / "config.yaml").seed
    assert isinstance(first["seed"], int) and recorded == first["seed"]
    again = run(compose_cfg(["debug=default", *TINY_NET, f"seed={recorded}", "cpu_threads=1"]), tmp_path / "b")
    assert again["psnr_final"] == first["psnr_final"]


def test_a_run_prints_its_config_as_a_tree_and_enforce_tags_refuses_a_run_without_tags(tmp_path):
    args = ["debug=default", *TINY_NET, "cpu_threads=1"]
    shown = dip_cli([*args, f"hydra.run.dir={tmp_path / 'shown'}"], cwd=tmp_path)
    assert shown.returncode == 0 and "config" in shown.stdout and "├── task" in shown.stdout
    assert json.loads((tmp_path / "shown" / "metrics.json").read_text())["iterations"] == 20
    refused = dip_cli([*args, "tags=[]", "extras.enforce_tags=true", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert refused.returncode == 1 and "extras.enforce_tags=true" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_runs_folder_is_recorded_as_paths_output_dir(tmp_path):
    cfg = compose_cfg(["debug=default", *TINY_NET, "cpu_threads=1"])
    assert cfg.paths.log_dir == cfg.paths.output_root and cfg.paths.output_dir is None
    run(cfg, tmp_path / "run")
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").paths.output_dir == str(tmp_path / "run")
