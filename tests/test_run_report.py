"""A run that tells the user what happened: which rule chose its result and why it stopped, the rule it was given
without ground truth (recorded in its config.yaml, so it can be repeated), a result that lags its input, tags and
W&B settings, a resumed run's W&B run, speed and checkpoints, and a continued Optuna study."""

import json
import logging

import pytest
import torch
import yaml
from conftest import TINY, TINY_NET, compose_cfg, dip_cli, save_png
from omegaconf import OmegaConf

from dip_lightning.callbacks.early_stopping import PSNRPatience
from dip_lightning.checkpoint import CHECKPOINT
from dip_lightning.data.schedule import ChunkSchedule
from dip_lightning.errors import DIPError
from dip_lightning.run.job import run
from dip_lightning.run.report import lag_warning, result_choice

GT_FREE = [*TINY, "data.image=null", "iterations=60", "chunk=30"]


@pytest.fixture
def noisy_png(tmp_path):
    """A noisy photo (sigma 25), given as the observation: no ground truth."""
    import numpy as np
    import skimage.data

    clean = skimage.data.astronaut()[200:264, 200:264].astype(float)
    noisy = np.clip(np.round(clean + np.random.default_rng(0).normal(0, 25, clean.shape)), 0, 255)
    return save_png(tmp_path / "noisy.png", noisy.astype(np.uint8))


def dip_log(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "dip_lightning")


# ------------------------------------------------------------------------------------ 1. which rule, why it stopped
def test_a_gt_free_run_ends_saying_which_rule_chose_where_why_and_its_sigma(run_dip, noisy_png, caplog):
    with caplog.at_level(logging.INFO, logger="dip_lightning"):
        metrics, _ = run_dip([*GT_FREE, f"data.observed={noisy_png}"])
    assert metrics["stop_rule"] == "Discrepancy" and metrics["sigma_source"] == "estimate"
    (line,) = [m for m in dip_log(caplog).splitlines() if m.startswith("The result (restored.png) is")]
    assert "Discrepancy's choice (callbacks.without_ground_truth)" in line
    assert f"iteration {metrics['stop_step']} " in line
    assert f"sigma {metrics['sigma_used']:.2f} (0-255), estimated from the observation" in line
    assert "sigma_source=estimate" in line
    if metrics["stop_iteration"] is None:
        assert "never fired" in line and "went to its end (iteration 60)" in line
    else:
        assert f"fired at iteration {metrics['stop_iteration']}" in line
    assert "PSNR of the corrupted input: n/a" not in dip_log(caplog)  # no ground truth: no PSNR line of n/a's


class Rule:
    def __init__(self, stop=True, patience=100, name="without_ground_truth"):
        self.stop, self.patience, self.config_name = stop, patience, name


class Run:
    """What result_choice reads of a train.PreparedRun."""

    def __init__(self, rule, iterations=1500, without_ground_truth="auto", regularizer=None):
        from types import SimpleNamespace

        from dip_lightning.callbacks.discrepancy import Discrepancy
        from dip_lightning.regularizers import NoRegularizer

        self.cfg = OmegaConf.create({"iterations": iterations, "without_ground_truth": without_ground_truth})
        self.task = SimpleNamespace(regularizer=regularizer or NoRegularizer(), exp_weight=0.99, average_from=None)
        self.callbacks = []
        if rule is not None:
            d = Discrepancy(patience=rule.patience, stop=rule.stop)
            d.config_name = rule.config_name
            self.callbacks = [d]


def choice_metrics(**kw):
    base = {"psnr_final": None, "iterations": 1500, "stop_rule": "Discrepancy", "stop_output": "averaged"}
    return {**base, "stop_step": 300, "stop_iteration": 400, "sigma_used": 25.0, "sigma_source": "simulation", **kw}


def test_the_result_line_says_why_the_run_stopped_or_that_it_ran_to_its_end():
    stopped = result_choice(choice_metrics(iterations=420), Run(Rule()))
    assert "iteration 300 (averaged output)" in stopped
    assert "fired at iteration 400 (100 iterations without a better score)" in stopped
    assert "and stopped the run at iteration 420 of 1500" in stopped
    assert "the noise the task simulated (task.sigma)" in stopped
    never = result_choice(choice_metrics(stop_iteration=None), Run(Rule()))
    assert "never fired" in never and "went to its end (iteration 1500)" in never
    monitor = result_choice(choice_metrics(), Run(Rule(stop=False)))
    assert "fired at iteration 400 and the run went on to its end, 1500 (stop=false: it only reports)" in monitor
    configured = result_choice(choice_metrics(sigma_source="config"), Run(Rule(name="early_stopping")))
    assert "(callbacks.early_stopping)" in configured and "set in the config" in configured
    no_rule = {"psnr_final": None, "iterations": 80}
    line = result_choice(no_rule, Run(None, iterations=80, without_ground_truth=None))
    assert "no stopping rule (without_ground_truth=None): restored.png is the last iterate, iteration 80" in line
    assert result_choice({"psnr_final": 30.0, "iterations": 80}, Run(None)) is None  # with ground truth: PSNRs say it
    from dip_lightning.regularizers import SURE

    own = result_choice(no_rule, Run(None, iterations=80, without_ground_truth=None, regularizer=SURE()))
    assert (
        "restored.png is the averaged output at iteration 80, regularizer=sure's result without a stopping rule" in own
    )
    assert "without_ground_truth=discrepancy" not in own  # no advice to add a rule it does not need
    run = Run(None, iterations=1500, without_ground_truth=None, regularizer=SURE(average_from=300))
    run.task.average_from = 300  # as SURE's check sets it on the task
    mean = result_choice({"psnr_final": None, "iterations": 1500}, run)
    assert "restored.png is the mean of the outputs from iteration 300 to 1500, regularizer=sure's result" in mean


# ------------------------------------------------------------------------- 2. the rule added, recorded and repeated
def test_a_gt_free_runs_config_yaml_records_its_rule_and_repeats_its_choice(run_dip, noisy_png, tmp_path):
    metrics, run_dir = run_dip([*GT_FREE, f"data.observed={noisy_png}"])
    recorded = OmegaConf.load(run_dir / "config.yaml")
    rule = recorded.callbacks.without_ground_truth
    assert rule._target_ == "dip_lightning.callbacks.discrepancy.Discrepancy"
    assert rule.patience == 100 and rule.tau == 1.0 and rule.sigma is None  # every value of conf/callbacks/discrepancy
    # the config.yaml as a config: the same rule, under the same name, makes the same choice
    again = run(recorded, tmp_path / "again")
    for key in ("stop_rule", "stop_step", "stop_iteration", "stop_output", "sigma_used", "sigma_source", "iterations"):
        assert again[key] == metrics[key], key
    assert (tmp_path / "again" / "restored.png").read_bytes() == (run_dir / "restored.png").read_bytes()
    assert OmegaConf.load(tmp_path / "again" / "config.yaml").callbacks.without_ground_truth == rule
    # a run with ground truth records none
    _, with_gt = run_dip([*TINY, "iterations=5"], run_dir=tmp_path / "gt")
    assert "without_ground_truth" not in OmegaConf.load(with_gt / "config.yaml").callbacks


class UsersOwnRule(PSNRPatience):
    """A stopping rule of a user's own class (a subclass of the StoppingRule role), named by _target_."""


def test_the_config_shows_the_rule_a_run_without_ground_truth_gets(noisy_png, tmp_path):
    gt_free = ["data.image=null", f"data.observed={noisy_png}"]

    def rule(*ovr):
        return compose_cfg(list(ovr)).gt_free_rule

    assert rule(*gt_free) == "discrepancy"  # auto: the denoising task's rule
    assert rule(*gt_free, "without_ground_truth=es_emv") == "es_emv"
    assert rule(*gt_free, "without_ground_truth=null") is None
    assert rule(*gt_free, "callbacks=es_wmv") is None  # the run's own rule chooses
    assert rule(*gt_free, f"+callbacks.mine._target_={__name__}.UsersOwnRule") is None  # of the user's own class too
    lr_monitor = "+callbacks.lr._target_=pytorch_lightning.callbacks.LearningRateMonitor"
    assert rule(*gt_free, lr_monitor) == "discrepancy"  # a callback that is no stopping rule chooses nothing
    assert rule(*gt_free, "task=super_resolution") is None  # no rule measured better than the fixed count
    assert rule(*gt_free, "regularizer=self_guided") is None  # its own: the averaged last iterate (its file says why)
    assert rule(*gt_free, "regularizer=self_guided", "without_ground_truth=discrepancy") == "discrepancy"  # if asked
    assert compose_cfg(["regularizer=self_guided"]).regularizer.weight == 1.0  # its values where they were
    assert rule() is None  # a ground truth chooses
    # dip-run --cfg job --resolve prints it, without running
    proc = dip_cli(["--cfg", "job", "--resolve", *gt_free], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gt_free_rule: discrepancy" in proc.stdout and not (tmp_path / "outputs").exists()


def test_resume_auto_keeps_a_finished_gt_free_run(run_dip, noisy_png, tmp_path):
    ovr = [*GT_FREE, f"data.observed={noisy_png}", "iterations=30"]
    first, run_dir = run_dip(ovr)
    again, _ = run_dip([*ovr, "resume=auto"], run_dir=run_dir)  # its recorded rule is this run's: kept, not refused
    assert again == first


def test_a_users_config_folder_adds_a_rule_and_its_run_folder_repeats_it(tmp_path, noisy_png):
    user = tmp_path / "myconf" / "callbacks"
    user.mkdir(parents=True)
    (user / "wmv_short.yaml").write_text(
        "defaults:\n  - default\n  - _self_\nearly_stopping:\n"
        "  _target_: dip_lightning.callbacks.early_stopping.ESWMV\n  window: 5\n  patience: 15\n"
    )
    first = tmp_path / "first"
    args = [*GT_FREE, "iterations=40", "chunk=10", f"data.observed={noisy_png}", "cpu_threads=1"]
    proc = dip_cli(
        ["--config-dir", str(tmp_path / "myconf"), *args, "without_ground_truth=wmv_short", f"hydra.run.dir={first}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rule = OmegaConf.load(first / "config.yaml").callbacks.without_ground_truth
    assert rule.window == 5 and rule.patience == 15
    # dip-run from the run folder's config.yaml: the same rule, the same choice
    second = tmp_path / "second"
    proc = dip_cli(["--config-path", str(first), "--config-name", "config", f"hydra.run.dir={second}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert a["stop_rule"] == b["stop_rule"] == "ESWMV" and a["stop_step"] == b["stop_step"]
    assert OmegaConf.load(second / "config.yaml").callbacks.without_ground_truth == rule


def test_an_unknown_rule_is_refused_with_the_presets_that_have_one(run_dip, noisy_png):
    with pytest.raises(DIPError, match=r"without_ground_truth='nope' is not a stopping rule.*discrepancy, es_emv"):
        run_dip([*GT_FREE, f"data.observed={noisy_png}", "without_ground_truth=nope"])


# -------------------------------------------------------------------------------- 3. a result that lags its input
def test_a_result_worse_than_its_input_warns_in_the_log_and_metrics(run_dip, caplog):
    with caplog.at_level(logging.WARNING, logger="dip_lightning"):
        metrics, run_dir = run_dip([*TINY, "iterations=20", "chunk=10"])
    assert metrics["psnr_final"] < metrics["psnr_observed"]  # 20 iterations of an averaged output: far behind
    (warning,) = [w for w in metrics["warnings"] if "corrupted input" in w]
    assert "is worse than the corrupted input" in warning and "Run more iterations" in warning
    assert "best.png" in warning and "task.exp_weight=0.99" in warning
    assert warning in dip_log(caplog)
    assert warning in json.loads((run_dir / "metrics.json").read_text())["warnings"]


def test_the_lag_warning_covers_a_result_barely_above_its_input_and_skips_good_and_gt_free_runs():
    lagging = {"psnr_observed": 21.15, "psnr_final": 21.16, "psnr_best": 24.49, "best_step": 150, "iterations": 200}
    text = lag_warning(lagging, exp_weight=0.99)
    assert "21.16 dB) is hardly better than the corrupted input (21.15 dB) after 200 iterations" in text
    assert "best iterate (24.49 dB, step 150) is in best.png" in text and "about 300 iterations" in text
    assert lag_warning({**lagging, "psnr_final": 28.0, "psnr_best": 28.5}) is None  # well past its input
    assert lag_warning({**lagging, "psnr_final": 21.9, "psnr_best": 22.0}) is None  # close, but nothing better seen
    assert lag_warning({"psnr_observed": None, "psnr_final": None, "psnr_best": None, "iterations": 9}) is None
    assert lag_warning({**lagging, "psnr_observed": float("inf")}) is None  # sigma=0: no corruption
    stop = lag_warning({**lagging, "stop_step": 120, "psnr_stop": 20.0})
    assert "the stopping rule's choice: 20.00 dB) is worse than" in stop and "exp_weight" not in stop


# ------------------------------------------------------------------------------------------ 4. tags and W&B keys
def wandb_record(run_dir):
    """The offline run's transaction log (what `wandb sync` uploads). W&B's service process writes it on its own
    time after wandb.finish(); all of it is written once the service stops (at the latest when the run's process
    exits, before anyone syncs), so the test stops it before reading, as this in-process run's exit would."""
    import wandb

    wandb.teardown()
    (run_file,) = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return run_file.read_bytes()


def test_tags_and_wandb_settings_reach_the_wandb_run(run_dip):
    base = [o for o in TINY if o != "logger=none"]
    ovr = ["logger=wandb", "+tags=[paper,v2]", "+logger.wandb.name=myrun", "logger.wandb.tags=[extra]"]
    _, run_dir = run_dip([*base, "iterations=5", *ovr, "logger.wandb.notes=a note", "logger.wandb.group=grp"])
    data = wandb_record(run_dir)
    for text in (b"paper", b"v2", b"extra", b"myrun", b"a note", b"grp", b"denoising"):
        assert text in data, text


def test_an_argument_a_logger_does_not_take_is_refused_naming_its_key(run_dip):
    # a logger config's keys are its class's arguments (W&B's: WandbLogger's and wandb.init's)
    wandb = r"logger.wandb \(pytorch_lightning.loggers.WandbLogger\) could not start its run: TypeError: .*'colour'"
    with pytest.raises(DIPError, match=wandb):
        run_dip([*TINY, "iterations=5", "logger=wandb", "+logger.wandb.colour=red"])
    csv = r"logger.csv \(pytorch_lightning.loggers.CSVLogger\) could not be built: TypeError: .*'flush'"
    with pytest.raises(DIPError, match=csv):
        run_dip([*TINY, "iterations=5", "logger=csv", "+logger.csv.flush=1"])
    assert compose_cfg(["tags=[a,b]"]).tags == ["a", "b"] and compose_cfg([]).tags == []


# ------------------------------------------------------------------------- 5. a resumed run: W&B, speed, checkpoints
def test_chunks_end_at_every_checkpoint_multiple_a_resumed_runs_too():
    ends = lambda sizes, start=0: [start + sum(sizes[: i + 1]) for i in range(len(sizes))]  # noqa: E731
    assert ends(list(ChunkSchedule(50, 10, checkpoints=[(0, 25)]))) == [10, 20, 25, 35, 45, 50]
    assert ends(list(ChunkSchedule(23, 10, checkpoints=[(227, 200)])), 227) == [237, 247, 250]
    assert ends(list(ChunkSchedule(180, 100, checkpoints=[(227, 200)])), 227) == [327, 400, 407]
    assert list(ChunkSchedule(30, 10, checkpoints=[(0, None)])) == [10, 10, 10]  # checkpoints off
    auto = ends(list(ChunkSchedule(500, "auto", target_seconds=100.0, checkpoints=[(0, 200)])))
    assert {200, 400} <= set(auto) and auto[-1] == 500


def test_checkpoint_every_writes_at_its_multiples_with_chunk_auto(run_dip, caplog):
    with caplog.at_level(logging.INFO, logger="dip_lightning"):
        run_dip([*TINY, "iterations=30", "chunk=auto", "checkpoint_every=7"])
    written = [int(r.getMessage().split()[3].rstrip(":")) for r in caplog.records if "checkpoint at" in r.getMessage()]
    assert written == [7, 14, 21, 28]  # chunk=auto's own ends (1, 3, 7, 15, 31, ...) are not where it writes


def test_a_resumed_run_continues_its_wandb_run_and_reports_its_own_iterations(run_dip, tmp_path, caplog):
    base = [o for o in TINY if o != "logger=none"] + ["logger=wandb", "chunk=10", "checkpoint_every=10"]
    _, first = run_dip([*base, "iterations=20"], run_dir=tmp_path / "first")
    (offline,) = list((first / "wandb").glob("offline-run-*"))
    run_id = offline.name.rsplit("-", 1)[1]
    assert torch.load(first / CHECKPOINT, weights_only=True)["loggers"] == {"wandb": run_id}
    with caplog.at_level(logging.INFO, logger="dip_lightning"):
        metrics, resumed = run_dip([*base, "iterations=30", f"resume={first}"], run_dir=tmp_path / "resumed")
    (again,) = list((resumed / "wandb").glob("offline-run-*"))
    assert again.name.endswith(f"-{run_id}")  # the same W&B run, resumed (wandb sync appends it)
    assert torch.load(resumed / CHECKPOINT, weights_only=True)["loggers"] == {"wandb": run_id}
    assert metrics["iterations"] == 30
    assert metrics["resumed_at"] == 20 and metrics["processes"] == 2
    assert metrics["total_seconds"] >= metrics["seconds"]  # the loop time of both processes
    report = dip_log(caplog)
    assert "10 iterations in " in report and "30 in all in " in report
    assert "over 2 processes (resumed at iteration 20)" in report


# ------------------------------------------------------------------------------------ 6. a continued Optuna study
def test_a_continued_optuna_study_does_not_repeat_its_first_trials(tmp_path):
    optuna = pytest.importorskip("optuna", reason="the optional hydra-optuna-sweeper (optuna) is not installed")
    pytest.importorskip("sqlalchemy", reason="an Optuna storage needs sqlalchemy (<2 for optuna<3)")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper is not installed")
    import skimage.data

    image = save_png(tmp_path / "a.png", skimage.data.astronaut()[100:132, 100:132])
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = [
        "hparams_search=dip_optuna",
        f"data.image={image}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=continued",
        "hydra.sweeper.n_trials=2",
        "logger=none",
        *TINY_NET,
        "data.crop=32",
        "callbacks=none",
        "iterations=2",
        "chunk=2",
        "cpu_threads=1",
    ]
    for part in ("one", "two"):
        proc = dip_cli([*args, f"hydra.sweep.dir={tmp_path / part}"], cwd=tmp_path, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "holds 2 trials; its sampler continues with seed 2" in proc.stderr + proc.stdout
    trials = optuna.load_study(study_name="continued", storage=storage).trials
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(params) == 4 and params[2:] != params[:2]
    assert not set(params[2:]) & set(params[:2])  # the continued study drew new points, not its first ones again
    best = yaml.safe_load((tmp_path / "two" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "task.reg_noise_std", "net"}
