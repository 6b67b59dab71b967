"""dip-run end to end: the run folder, the config tree, and bad input ending in a clear error with no outputs."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_NET, compose_cfg, dip_cli
from PIL import Image

from dip_lightning.data.io import read_image
from dip_lightning.errors import DIPError
from dip_lightning.metrics import Metric

RUN_FILES = {"observed.png", "restored.png", "best.png", "metrics.json", "curves.png", "config.yaml"}
OUTPUT_FILES = RUN_FILES


def test_tiny_cli_run_writes_every_output_and_beats_the_noisy_input(tmp_path):
    # The acceptance run: 64x64 crop, 3-scale 16-channel skip net, 300 iterations, W&B offline.
    run_dir = tmp_path / "run"
    proc = dip_cli(
        [*TINY_NET, "data.crop=64", "iterations=300", "logger=wandb", f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "psnr_observed",
        "psnr_final",
        "psnr_best",
        "best_step",
        "iterations",
        "seconds",
        "iterations_per_second",
        "device",
    ):
        assert key in m
    assert m["iterations"] == 300 and 0 <= m["best_step"] < 300
    assert m["psnr_best"] >= m["psnr_observed"] + 3, m
    assert m["psnr_final"] > m["psnr_observed"] + 2, m
    assert Image.open(run_dir / "restored.png").size == (64, 64)
    # W&B wrote its offline run inside the run folder, and nothing needed the network
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    # the final observed / restored / best panel, as uint8 images
    assert len(list((run_dir / "wandb").glob("offline-run-*/files/media/images/final_*.png"))) == 3
    assert "PSNR of the corrupted input" in proc.stderr + proc.stdout


def test_observed_image_without_ground_truth(run_dip, photo_png):
    metrics, run_dir = run_dip([*TINY, f"data.observed={photo_png}", "data.image=null", "iterations=20"])
    assert metrics["psnr_observed"] is None and metrics["psnr_final"] is None and metrics["psnr_best"] is None
    assert (run_dir / "restored.png").exists() and not (run_dir / "best.png").exists()
    # the observation is used as given: no noise was added
    assert Image.open(run_dir / "observed.png").tobytes() == Image.open(photo_png).crop((16, 16, 80, 80)).tobytes()


def test_csv_logger_and_snapshots(run_dip):
    metrics, run_dir = run_dip([*TINY_NET, "data.crop=32", "logger=csv", "iterations=30", "chunk=10"])
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:1] and "psnr_gt" in rows[0] and len(rows) > 3


def test_every_documented_override_composes():
    cfg = compose_cfg(
        [
            "task=denoising",
            "net=skip",
            "optimizer=adam",
            "data.image=camera",
            "data.crop=96",
            "task.sigma=50",
            "iterations=7",
            "seed=3",
            "logger=csv",
            "experiment=denoise_f16",
            "net.num_channels_down=[8,8]",
            "net.num_channels_up=[8,8]",
            "net.num_channels_skip=[0,0]",
            "net.filter_size_down=5",
            "net.upsample_mode=nearest",
            "net.downsample_mode=avg",
            "net.pad=zero",
            "net.act_fun=Swish",
            "net.need_sigmoid=false",
        ]
    )
    assert cfg.task.sigma == 50 and cfg.iterations == 7 and cfg.seed == 3 and cfg.net.act_fun == "Swish"
    assert cfg.data.iterations == 7 and cfg.task.seed == 3  # interpolated where they are used


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.image=/no/such/photo.png"], "/no/such/photo.png.*does not exist"),
        (["data.image=astronot"], "astronot.*built-in"),
        (["task.sigma=-5"], "task.sigma=-5.*0 <= sigma <= 255"),
        (["task.sigma=1e9"], "task.sigma=1000000000.*0 <= sigma <= 255"),
        (
            [
                "data.crop=16",
                "net.num_channels_down=[8,8,8,8,8,8]",
                "net.num_channels_up=[8,8,8,8,8,8]",
                "net.num_channels_skip=[0,0,0,0,0,0]",
            ],
            "minimum size.*64",
        ),
        (
            [
                "data.crop=16",
                "net.num_channels_down=[8,8,8]",
                "net.num_channels_up=[8,8,8]",
                "net.num_channels_skip=[0,0,0]",
                "net.filter_size_down=5",
            ],
            "16x16.*at least 24",
        ),  # reflection padding at the deepest scale (2x2) needs 3 px
        (["iterations=0"], "iterations=0"),
    ],
)
def test_bad_input_is_a_clear_error_with_no_outputs(run_dip, tmp_path, overrides, message):
    with pytest.raises(DIPError, match=message):
        run_dip([*TINY, "iterations=3", *overrides])
    assert not (tmp_path / "run").exists() or not OUTPUT_FILES & {p.name for p in (tmp_path / "run").iterdir()}


def test_not_an_image_and_truncated_image_via_the_command_line(tmp_path, photo_png):
    (tmp_path / "notes.png").write_text("hello")
    data = photo_png.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    for name, message in (("notes.png", "is not an image"), ("cut.png", "truncated")):
        run_dir = tmp_path / f"run_{name}"
        proc = dip_cli(
            [*TINY, "iterations=3", f"data.image={tmp_path / name}", f"hydra.run.dir={run_dir}"], cwd=tmp_path
        )
        assert proc.returncode == 1
        assert message in proc.stderr and name in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not OUTPUT_FILES & {p.name for p in run_dir.iterdir()}


def test_divergence_is_an_error_without_backtracking_and_recovers_with_it(run_dip, tmp_path):
    # SGD at an absurd learning rate blows the weights up to inf/NaN within a few steps.
    diverge = [*TINY, "optimizer=sgd", "optimizer.lr=1e12", "iterations=20", "chunk=5", "task.exp_weight=0"]
    with pytest.raises(DIPError, match="non-finite.*lr=1e\\+12"):
        run_dip([*diverge, "task.backtracking=false"])
    metrics, run_dir = run_dip([*diverge, "task.backtracking=true"], run_dir=tmp_path / "recovered")
    assert metrics["backtracks"] > 0 and metrics["iterations"] == 20
    assert (run_dir / "restored.png").exists() and metrics["psnr_final"] == metrics["psnr_final"]  # not NaN


def test_the_seed_sets_python_numpy_and_torch_generators():
    """seed_everything, as lightning-hydra-template does: code that draws from a global generator is reproducible."""
    import random

    import numpy as np

    from dip_lightning.run.prepare import build_run

    def draws(seed):
        build_run(compose_cfg([*TINY, f"seed={seed}"]))
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    assert draws(3) == draws(3)
    assert all(a != b for a, b in zip(draws(3), draws(4)))


def test_ssim_is_reported_for_every_result(run_dip):
    from torchmetrics.functional.image import structural_similarity_index_measure

    from dip_lightning.data.io import read_image

    metrics, run_dir = run_dip([*TINY, "iterations=400", "callbacks=es_wmv", "callbacks.early_stopping.window=5"])
    assert metrics["ssim_final"] > metrics["ssim_observed"] + 0.1  # the restoration is structurally closer
    assert metrics["ssim_best"] is not None and metrics["ssim_stop"] is not None
    truth, restored = read_image(run_dir / "ground_truth.png"), read_image(run_dir / "restored.png")
    assert metrics["ssim_stop"] == pytest.approx(
        float(structural_similarity_index_measure(restored, truth, data_range=1.0)), abs=0.01
    )  # PNG rounding
    metrics, _ = run_dip([*TINY, "iterations=5", "metrics=[psnr]"], run_dir=run_dir.parent / "psnr_only")
    assert "ssim_final" not in metrics
    with pytest.raises(DIPError, match=r"metrics.*holds psnr"):
        run_dip([*TINY, "iterations=5", "metrics=[ssim]"], run_dir=run_dir.parent / "bad")


class MeanAbsoluteError(Metric):
    """A user's own metric (lower is better), named by its class path."""

    def __call__(self, x, target):
        return (x.clamp(0, 1) - target).abs().mean()


def test_a_users_metric_is_scored_beside_psnr_and_recorded_in_the_config(run_dip, tmp_path):
    """metrics=[psnr,ssim,mae] with the metric given inline or by a metric/mae.yaml of the user's --config-dir: its
    keys in metrics.json, its config in config.yaml, and a run from that config.yaml scores it again."""
    from omegaconf import OmegaConf

    target = f"{__name__}.MeanAbsoluteError"
    inline = ["iterations=300", "metrics=[psnr,ssim,mae]", f"+metric.mae._target_={target}"]
    metrics, run_dir = run_dip([*TINY, *inline, "callbacks=es_wmv", "callbacks.early_stopping.window=5"])
    for kind in ("observed", "final", "best", "stop"):
        assert 0 < metrics[f"mae_{kind}"] < 0.5, kind
    assert metrics["mae_best"] < metrics["mae_observed"]  # the best iterate is closer than the noisy input
    truth, restored = read_image(run_dir / "ground_truth.png"), read_image(run_dir / "restored.png")
    assert metrics["mae_stop"] == pytest.approx(float((restored - truth).abs().mean()), abs=2e-3)  # PNG rounding
    recorded = OmegaConf.load(run_dir / "config.yaml").metric
    assert recorded.mae._target_ == target and recorded.ssim._target_ == "dip_lightning.metrics.SSIM"

    (tmp_path / "myconf" / "metric").mkdir(parents=True)
    (tmp_path / "myconf" / "metric" / "mae.yaml").write_text(f"_target_: {target}\n")
    first, again = tmp_path / "first", tmp_path / "again"
    args = [*TINY, "iterations=5", "metrics=[psnr,mae]", "cpu_threads=1"]
    tests = str(Path(__file__).parent)
    proc = dip_cli(["--config-dir", str(tmp_path / "myconf"), *args, f"hydra.run.dir={first}"], cwd=tests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = dip_cli(["--config-path", str(first), "--config-name", "config", f"hydra.run.dir={again}"], cwd=tests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, again))
    assert a["mae_final"] == b["mae_final"] and "ssim_final" not in a


def test_tensorboard_and_csv_loggers_together(run_dip):
    """logger=[tensorboard,csv]: both write; TensorBoard's event files hold the curves, the snapshots and the final
    observed / restored / best panel."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir = run_dip(
        [
            *TINY_NET,
            "data.crop=32",
            "logger=[tensorboard,csv]",
            "iterations=30",
            "chunk=10",
            "callbacks.snapshots.every_n_iterations=10",
        ]
    )
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss", "psnr_gt", "final/psnr_best"} <= set(header)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"loss", "psnr_gt", "psnr_fit"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("loss")) >= 3
    images = set(events.Tags()["images"])
    assert {"final/observed", "final/restored", "final/best (oracle)", "inputs/observed"} <= images
    assert any(tag.startswith("snapshots/") for tag in images)


def test_a_logger_config_without_target_is_a_clear_error(run_dip):
    with pytest.raises(DIPError, match=r"logger.mlflow has no _target_ .*a logger config holds a `_target_`"):
        run_dip([*TINY, "iterations=5", "+logger.mlflow.uri=x"])


def test_help_names_the_command_its_groups_and_values(tmp_path):
    proc = dip_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("dip-run: Deep Image Prior")
    assert "callbacks: default, discrepancy" in proc.stdout and "without_ground_truth: auto" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_curves_csv_holds_the_history_contract_and_a_foreign_file_is_named(run_dip, tmp_path):
    from dip_lightning import history
    from dip_lightning.history import read_curves

    _, run_dir = run_dip([*TINY, "iterations=12", "chunk=6"])
    curves = read_curves(run_dir / "curves.csv")
    assert list(curves) == [history.ITERATION, *history.COLUMNS]
    assert curves[history.ITERATION] == list(range(12)) and all(v > 0 for v in curves[history.LOSS])
    renamed = tmp_path / "curves.csv"
    renamed.write_text((run_dir / "curves.csv").read_text().replace("psnr_gt_avg", "psnr_avg", 1))
    with pytest.raises(DIPError, match=r"lacks the history columns \['psnr_gt_avg'\]"):
        read_curves(renamed)


def test_resume_auto_keeps_a_finished_run_recorded_before_metric_configs_were(run_dip):
    """config.yaml files written before metric.<name> was recorded hold only the names (metrics): such a finished
    run is still kept by resume=auto, while another list of names is refused."""
    import yaml

    first, run_dir = run_dip([*TINY, "iterations=5"])
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded.pop("metric") == {"ssim": {"_target_": "dip_lightning.metrics.SSIM"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(recorded))
    again, _ = run_dip([*TINY, "iterations=5", "resume=auto"], run_dir=run_dir)
    assert again == first
    with pytest.raises(DIPError, match=r"another config than this resume: metrics"):
        run_dip([*TINY, "iterations=5", "resume=auto", "metrics=[psnr]"], run_dir=run_dir)


def test_a_history_row_is_made_and_read_by_column_name():
    import torch

    from dip_lightning import history

    loss, fit, gt, avg = (torch.tensor(v) for v in (0.5, 20.0, 25.0, 26.0))
    row = history.row(psnr_gt_avg=avg, loss=loss, psnr_gt=gt, psnr_fit=fit)  # any order: placed by name
    assert row.tolist() == [0.5, 20.0, 25.0, 26.0] and history.column(row, history.PSNR_GT) == 25.0
    rows = torch.stack([row, row * 2])
    assert history.column(rows, history.LOSS).tolist() == [0.5, 1.0]
    assert history.row(loss=loss, psnr_fit=fit).tolist() == [0.5, 20.0]  # no ground truth: its columns stay NaN
    with pytest.raises(ValueError, match="takes"):
        history.row(loss=loss, psnr_gt=gt)  # the fit is missing
    with pytest.raises(ValueError, match="takes"):
        history.row(loss=loss, psnr_fit=fit, psnr_observed=gt)  # no such column


def test_every_metrics_key_is_documented_once_and_the_docs_show_that_table(run_dip):
    from pathlib import Path

    from dip_lightning.run_metrics import markdown_table, undocumented

    outputs = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    assert markdown_table() in outputs
    rules = [
        "callbacks=discrepancy",
        "+callbacks.es_wmv._target_=dip_lightning.callbacks.early_stopping.ESWMV",
        "+callbacks.es_wmv.window=5",
    ]
    denoise, _ = run_dip([*TINY, "iterations=20", *rules])
    sr, _ = run_dip(
        [*TINY, "iterations=20", "task=super_resolution", "callbacks=es_wmv", "callbacks.early_stopping.window=5"],
        run_dir=_.parent / "sr",
    )
    assert undocumented(denoise) == [] and undocumented(sr) == []
    assert "es_wmv/stop_step" in denoise and "psnr_bicubic" in sr


def test_paths_group_places_the_runs_and_the_presets_data(tmp_path):
    proc = dip_cli([*TINY, "iterations=3", f"paths.output_root={tmp_path / 'runs'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "runs" / "outputs" / "denoising").glob("*/metrics.json"))) == 1
    assert not (tmp_path / "outputs").exists()
    cfg = compose_cfg(["experiment=denoise_f16", f"paths.data_root={tmp_path}"])
    assert cfg.data.root == str(tmp_path)
