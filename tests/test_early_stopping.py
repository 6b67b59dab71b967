"""Early stopping: the rules on synthetic scores, and whole runs with and without ground truth."""

import json
import os

import pytest
import torch
from conftest import TINY

from dip_lightning.callbacks.early_stopping import ESEMV, ESWMV, PSNRPatience
from dip_lightning.callbacks.roles import Iteration
from dip_lightning.errors import DIPError

TINY = [o for o in TINY if not o.startswith("callbacks=")] + ["cpu_threads=1"]  # each test picks its callbacks


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """cpu_threads=1 (fast on a shared CPU) must not leak into other test files."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


class FakeTask:
    """What a rule reads of a task: a net (its weights are kept at the stop step), z, averaging."""

    def __init__(self, exp_weight=0.0):
        self.net, self.z, self.exp_weight = (
            torch.nn.Conv2d(1, 1, 1),
            torch.linspace(0, 0.5, 16).view(1, 1, 4, 4),
            exp_weight,
        )
        with torch.no_grad():
            self.net.weight.zero_()
            self.net.bias.zero_()


def feed(stopper, outputs, psnrs=None, task=None):
    task = task or FakeTask()
    for step, out in enumerate(outputs):
        with torch.no_grad():  # each step moves the weights (to 0.01 * (step + 1)); the hooks run after it
            task.net.weight.add_(0.01)
        p = None if psnrs is None else torch.tensor(float(psnrs[step]))
        stopper.on_dip_iteration(task, Iteration(step, out, out, p, p))
    return task


def constant_then_noisy(n_quiet, n_noisy, seed=0):
    """Outputs that change a lot, then settle (low variance), then drift apart again (fitting noise)."""
    g = torch.Generator().manual_seed(seed)
    loud = [torch.rand(1, 1, 4, 4, generator=g) for _ in range(20)]
    quiet = [torch.full((1, 1, 4, 4), 0.5) + 0.001 * torch.rand(1, 1, 4, 4, generator=g) for _ in range(n_quiet)]
    noisy = [torch.rand(1, 1, 4, 4, generator=g) for _ in range(n_noisy)]
    return loud + quiet + noisy


def test_psnr_patience_fires_patience_steps_after_the_peak_and_keeps_the_peak():
    psnrs = [10, 12, 15, 20, 19, 18, 17, 16, 15, 14, 13, 12]
    outs = [torch.full((1, 1, 2, 2), float(i)) for i in range(len(psnrs))]
    s = PSNRPatience(patience=4)
    task = feed(s, outs, psnrs)
    r = s.stop_result(task)
    assert r["stop_step"] == 3 and r["stop_iteration"] == 7 and r["stop_reason"] == "psnr_patience"
    assert torch.equal(r["image"], outs[3].clamp(0, 1))


def test_wmv_and_emv_pick_the_quiet_stretch_and_freeze_after_firing():
    outs = constant_then_noisy(n_quiet=30, n_noisy=60)
    for stopper in (ESWMV(window=5, patience=10), ESEMV(alpha=0.3, patience=10, warmup=10)):
        task = feed(stopper, outs)
        r = stopper.stop_result(task)
        assert 20 <= r["stop_step"] < 50, (type(stopper).__name__, r["stop_step"])
        assert r["stop_iteration"] == r["stop_step"] + 10  # patience steps without a new minimum
        # the choice is frozen: the quiet output, not anything from the noisy tail
        assert abs(float(r["candidates"]["raw"].mean()) - 0.5) < 0.01
        # without averaging the rule returns the net's output with the weights after its step
        expected = 0.01 * (r["stop_step"] + 1) * task.z
        assert r["stop_output"] == "final" and torch.allclose(r["image"], expected, atol=1e-6)
        assert task.net.weight.item() == pytest.approx(0.01 * len(outs))  # the net keeps its own weights


def test_a_rule_that_never_fires_reports_max_iterations():
    outs = constant_then_noisy(n_quiet=30, n_noisy=5)
    s = ESWMV(window=5, patience=100)
    task = feed(s, outs)
    r = s.stop_result(task)
    assert r["stop_reason"] == "max_iterations" and r["stop_iteration"] is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ESWMV(window=1), "window=1"),
        (lambda: ESEMV(alpha=1.5), "alpha=1.5"),
        (lambda: PSNRPatience(patience=0), "patience=0"),
    ],
)
def test_bad_settings_are_clear_errors(make, message):
    with pytest.raises(DIPError, match=message):
        make()


def test_psnr_patience_run_stops_early_and_writes_the_best_iterate_so_far(run_dip):
    metrics, run_dir = run_dip(
        [
            *TINY,
            "callbacks=psnr_patience",
            "callbacks.early_stopping.patience=10",
            "iterations=300",
            "chunk=10",
            "task.exp_weight=0",
            "optimizer.lr=0.05",
        ]
    )
    assert metrics["stop_reason"] == "psnr_patience"
    assert metrics["iterations"] < 300  # it stopped, within one chunk of firing
    assert metrics["stop_iteration"] + 1 <= metrics["iterations"] <= metrics["stop_iteration"] + 10
    assert metrics["stop_iteration"] == metrics["stop_step"] + 10
    # restored.png is the best iterate up to the firing (best_step may lie in the overshoot after it)
    rows = [line.split(",") for line in (run_dir / "curves.csv").read_text().splitlines()[1:]]
    best_before = max(float(r[3]) for r in rows if int(r[0]) <= metrics["stop_iteration"])
    assert metrics["psnr_stop"] == pytest.approx(best_before, abs=1e-3)
    assert metrics["psnr_stop"] <= metrics["psnr_best"]
    assert json.loads((run_dir / "metrics.json").read_text())["stop_step"] == metrics["stop_step"]


def test_es_wmv_without_ground_truth(run_dip, photo_png):
    metrics, run_dir = run_dip(
        [
            *TINY,
            f"data.observed={photo_png}",
            "data.image=null",
            "callbacks=es_wmv",
            "callbacks.early_stopping.window=5",
            "callbacks.early_stopping.patience=10",
            "iterations=40",
            "chunk=10",
        ]
    )
    assert metrics["psnr_best"] is None and metrics["psnr_stop"] is None  # no ground truth, no PSNR
    assert 0 <= metrics["stop_step"] < 40 and metrics["stop_reason"] in ("es_wmv", "max_iterations")
    assert (run_dir / "restored.png").exists()
    header = (run_dir / "curves.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,psnr_fit,psnr_gt,psnr_gt_avg"


def test_psnr_patience_without_ground_truth_is_a_clear_error(run_dip, photo_png):
    with pytest.raises(DIPError, match="needs a ground truth"):
        run_dip([*TINY, f"data.observed={photo_png}", "data.image=null", "callbacks=psnr_patience", "iterations=5"])


# ------------------------------------------------------------------------------------ the GT-free rules (issue 13)
class ObservedTask(FakeTask):
    """A fake denoising task: an observation and the identity operator."""

    def __init__(self, observed, exp_weight=0.0):
        from dip_lightning.operators.base import Identity

        super().__init__(exp_weight)
        self.observed, self.operator, self.clean, self.seed = observed, Identity(), None, 0


def unit_pattern(shape, seed=0):
    e = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return e / e.pow(2).mean().sqrt()


def test_discrepancy_stops_where_the_fit_reaches_the_noise_level():
    from dip_lightning.callbacks.discrepancy import Discrepancy

    y = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    e = unit_pattern(y.shape)
    outs = [y + r * e for r in torch.linspace(0.5, 0.0, 51)]  # residual RMS 0.5, 0.49, ... 0
    task = ObservedTask(y)
    s = Discrepancy(sigma=0.2 * 255, smoothing=0, patience=5)
    feed(s, outs, task=task)
    r = s.stop_result(task)
    assert r["stop_step"] == 30 and r["stop_iteration"] == 35  # RMS 0.2 = sigma at step 30
    assert r["sigma_used"] == pytest.approx(51.0) and r["sigma_source"] == "config"


def test_noise_estimate_reads_white_noise_and_skips_the_holes_of_a_masked_image():
    from dip_lightning.noise import estimate_sigma

    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0.2, 0.8, 128).view(1, 1, 1, 128).expand(1, 3, 128, 128)
    noisy = smooth + 0.1 * torch.randn(smooth.shape, generator=g)
    assert estimate_sigma(noisy) == pytest.approx(0.1, rel=0.05)
    known = (torch.rand(1, 1, 128, 128, generator=g) > 0.5).float()
    masked = noisy * known
    assert estimate_sigma(masked) > 0.2  # the holes read as noise...
    assert estimate_sigma(masked, known) == pytest.approx(0.1, rel=0.15)  # ...unless the mask is given


def test_correlated_noise_is_recognised_and_read_at_the_coarser_scale():
    import torch.nn.functional as F

    from dip_lightning.noise import estimate_noise

    g = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0.2, 0.8, 128).view(1, 1, 1, 128).expand(1, 3, 128, 128)
    white = estimate_noise(smooth + 0.1 * torch.randn(smooth.shape, generator=g))
    assert not white.correlated and white.sigma == pytest.approx(0.1, rel=0.05)
    kernel = torch.ones(3, 1, 3, 3) / 3  # a 3x3 box blur with unit gain on the noise's variance
    noise = F.conv2d(torch.randn(1, 3, 130, 130, generator=g), kernel, groups=3)
    blurred = estimate_noise(smooth + 0.1 * noise)
    assert blurred.fine < 0.05  # the finest scale misses most of it...
    assert blurred.correlated and 0.07 < blurred.sigma < 0.16  # ...the coarser one reads it


def test_held_out_pixels_never_reach_the_loss():
    from dip_lightning.callbacks.self_validation import HeldOut
    from dip_lightning.operators.base import Identity

    g = torch.Generator().manual_seed(0)
    y = torch.rand(1, 3, 8, 8, generator=g)
    train = (torch.rand(1, 1, 8, 8, generator=g) > 0.3).float()
    op = HeldOut(Identity(), train)
    x = torch.zeros_like(y, requires_grad=True)
    op.loss(x, y)[0].backward()
    assert float((x.grad * (1 - train)).abs().sum()) == 0 and float((x.grad * train).abs().sum()) > 0
    expected = (y.pow(2) * (1 - train)).sum() / ((1 - train).sum() * 3)
    assert float(op.validation_error(x.detach(), y)) == pytest.approx(float(expected))


def test_self_validation_picks_the_minimum_of_the_held_out_error():
    from dip_lightning.callbacks.self_validation import HeldOut, SelfValidation

    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    task = ObservedTask(y)
    s = SelfValidation(holdout=0.25, patience=5)
    s.attach(task)
    assert isinstance(task.operator, HeldOut)
    held = task.operator.val_mask
    assert 0.1 < float(held.mean()) < 0.4
    e = unit_pattern(y.shape, seed=3)
    # the held-out error falls to step 12 and rises after (fitting noise); the fitted pixels are exact throughout
    outs = [y + (0.01 + 0.02 * abs(t - 12)) * e * held for t in range(30)]
    feed(s, outs, task=task)
    r = s.stop_result(task)
    assert r["stop_step"] == 12 and r["stop_iteration"] == 17
    with pytest.raises(DIPError, match="twice"):
        SelfValidation().attach(task)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ESWMV(output="best"), "output='best'"),
        (
            lambda: __import__("dip_lightning.callbacks.discrepancy").callbacks.discrepancy.Discrepancy(sigma=300),
            "sigma=300",
        ),
        (
            lambda: __import__("dip_lightning.callbacks.self_validation").callbacks.self_validation.SelfValidation(
                holdout=0.7
            ),
            "holdout=0.7",
        ),
    ],
)
def test_bad_rule_settings_are_clear_errors(make, message):
    with pytest.raises(DIPError, match=message):
        make()


def test_a_rule_reports_every_candidate_and_returns_the_averaged_output_past_the_warm_up(run_dip):
    metrics, run_dir = run_dip(
        [
            *TINY,
            "callbacks=es_wmv",
            "callbacks.early_stopping.window=5",
            "callbacks.early_stopping.patience=1000",
            "iterations=120",
            "chunk=40",
            "task.exp_weight=0.9",
        ]
    )  # warm-up 30 iterations; the rule does not fire
    for kind in ("raw", "averaged", "final"):
        assert metrics[f"psnr_stop_{kind}"] > metrics["psnr_observed"]
    expected = "averaged" if metrics["stop_step"] >= 30 else "final"
    assert metrics["stop_output"] == expected
    assert metrics["psnr_stop"] == metrics[f"psnr_stop_{expected}"]


def test_several_rules_watch_one_run_and_each_writes_its_choice(run_dip):
    sv = "+callbacks.sv"
    metrics, run_dir = run_dip(
        [
            *TINY,
            "callbacks=discrepancy",
            "callbacks.early_stopping.stop=false",
            f"{sv}._target_=dip_lightning.callbacks.self_validation.SelfValidation",
            f"{sv}.stop=false",
            "iterations=60",
            "chunk=30",
        ]
    )
    assert metrics["stop_rule"] == "Discrepancy" and metrics["self_validation/stop_rule"] == "SelfValidation"
    assert (run_dir / "restored.png").exists() and (run_dir / "self_validation.png").exists()
    # the task simulated the observation: its noise level is known
    assert metrics["sigma_source"] == "simulation" and metrics["sigma_used"] == pytest.approx(25.0)


def test_a_given_observation_has_its_noise_estimated_and_the_error_reported(run_dip, tmp_path):
    import numpy as np
    import skimage.data
    from conftest import save_png

    clean = skimage.data.astronaut()[200:296, 200:296]
    noise = np.random.default_rng(0).normal(0, 25, clean.shape)
    noisy = np.clip(np.round(clean + noise), 0, 255).astype(np.uint8)
    ovr = [
        f"data.image={save_png(tmp_path / 'clean.png', clean)}",
        f"data.observed={save_png(tmp_path / 'n.png', noisy)}",
    ]
    metrics, _ = run_dip([*TINY, *ovr, "callbacks=discrepancy", "iterations=30", "chunk=30"])
    assert metrics["sigma_source"] == "estimate" and metrics["noise"] == "white"
    assert abs(metrics["sigma_used"] / metrics["sigma_in_observation"] - 1) < 0.15


def test_a_run_without_ground_truth_gets_the_default_rule(run_dip, photo_png):
    ovr = [*TINY, f"data.observed={photo_png}", "data.image=null", "iterations=60", "chunk=30"]
    metrics, run_dir = run_dip(ovr)  # callbacks=none: no rule configured
    assert metrics["stop_rule"] == "Discrepancy" and metrics["stop_output"] in ("averaged", "final")
    metrics, _ = run_dip([*ovr, "without_ground_truth=null"], run_dir=run_dir.parent / "off")
    assert "stop_rule" not in metrics
    with pytest.raises(DIPError, match="without_ground_truth='nope' is not a stopping rule.*es_wmv"):
        run_dip([*ovr, "without_ground_truth=nope"], run_dir=run_dir.parent / "bad")
    # auto: only tasks with a measured winner get one (SR: none beat the fixed iteration count); a name forces one
    sr = [*TINY, f"data.observed={photo_png}", "data.image=null", "task=super_resolution", "iterations=10"]
    metrics, _ = run_dip(sr, run_dir=run_dir.parent / "sr")
    assert "stop_rule" not in metrics
    metrics, _ = run_dip([*sr, "without_ground_truth=discrepancy"], run_dir=run_dir.parent / "sr_forced")
    assert metrics["stop_rule"] == "Discrepancy" and metrics["sigma_source"] == "estimate"


def test_a_seed_ensemble_is_no_worse_than_its_members(run_dip, tmp_path):
    import csv

    from dip_lightning.data.io import read_image
    from dip_lightning.sweeps import gather
    from dip_lightning.sweeps.ensemble import score

    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        job = sweep / str(seed)
        run_dip(
            [
                *TINY,
                f"seed={seed}",
                "iterations=60",
                "chunk=30",
                "callbacks=es_wmv",
                "callbacks.early_stopping.window=5",
            ],
            run_dir=job,
        )
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        os.utime(job / "metrics.json")  # as in a sweep: Hydra writes .hydra/ when the job starts, metrics.json last
    assert gather.main([str(sweep), "--ensemble", "seed"]) == 0
    rows = list(csv.DictReader((sweep / "ensembles.csv").open()))
    assert len(rows) == 1 and rows[0]["members"] == "2"
    truth = read_image(sweep / "0" / "ground_truth.png")
    ens = read_image(sweep / rows[0]["file"])
    mse = [float((read_image(sweep / str(s) / "restored.png") - truth).pow(2).mean()) for s in (0, 1)]
    assert float((ens - truth).pow(2).mean()) <= sum(mse) / 2 + 1e-5  # convexity; 1e-5: the PNG's rounding
    assert float(rows[0]["psnr_ensemble"]) == pytest.approx(score(ens, truth), abs=1e-3)


def test_an_ensemble_needs_two_seeds(run_dip, tmp_path, capsys):
    from dip_lightning.sweeps import gather

    job = tmp_path / "sweep" / "0"
    run_dip([*TINY, "iterations=5"], run_dir=job)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    assert gather.main([str(job.parent), "--ensemble", "seed"]) == 2
    assert "two or more finished seeds" in capsys.readouterr().err


def test_discrepancy_on_a_noise_free_observation_keeps_the_last_iterate(run_dip):
    """sigma = 0 (the task simulated a noise-free observation: plain SR): nothing to stop for, so the rule never
    fires and returns the run's own final result."""
    metrics, _ = run_dip([*TINY, "task=super_resolution", "callbacks=discrepancy", "iterations=40", "chunk=20"])
    assert metrics["sigma_source"] == "simulation" and metrics["sigma_used"] == 0
    assert metrics["stop_iteration"] is None and metrics["stop_step"] == 39
    assert metrics["psnr_stop"] == metrics["psnr_final"]
