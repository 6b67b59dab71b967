"""Early stopping: the rules on synthetic scores, and whole runs with and without ground truth."""
import json

import pytest
import torch

from conftest import TINY
from dip_lightning.callbacks.early_stopping import ESEMV, ESWMV, PSNRPatience
from dip_lightning.errors import DIPError
from dip_lightning.tasks.base import Iteration

TINY = [o for o in TINY if not o.startswith("callbacks=")] + ["cpu_threads=1"]  # each test picks its callbacks


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """cpu_threads=1 (fast on a shared CPU) must not leak into other test files."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def feed(stopper, outputs, psnrs=None):
    for step, out in enumerate(outputs):
        p = None if psnrs is None else torch.tensor(float(psnrs[step]))
        stopper.on_dip_iteration(None, Iteration(step, out, out, p, p))


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
    feed(s, outs, psnrs)
    r = s.stop_result(None)
    assert r["stop_step"] == 3 and r["stop_iteration"] == 7 and r["stop_reason"] == "psnr_patience"
    assert torch.equal(r["image"], outs[3].clamp(0, 1))


def test_wmv_and_emv_pick_the_quiet_stretch_and_freeze_after_firing():
    outs = constant_then_noisy(n_quiet=30, n_noisy=60)
    for stopper in (ESWMV(window=5, patience=10), ESEMV(alpha=0.3, patience=10, warmup=10)):
        feed(stopper, outs)
        r = stopper.stop_result(None)
        assert 20 <= r["stop_step"] < 50, (type(stopper).__name__, r["stop_step"])
        assert r["stop_iteration"] == r["stop_step"] + 10  # patience steps without a new minimum
        # the choice is frozen: the quiet output, not anything from the noisy tail
        assert abs(float(r["image"].mean()) - 0.5) < 0.01


def test_a_rule_that_never_fires_reports_max_iterations():
    outs = constant_then_noisy(n_quiet=30, n_noisy=5)
    s = ESWMV(window=5, patience=100)
    feed(s, outs)
    r = s.stop_result(None)
    assert r["stop_reason"] == "max_iterations" and r["stop_iteration"] is None


@pytest.mark.parametrize("make, message", [(lambda: ESWMV(window=1), "window=1"),
                                           (lambda: ESEMV(alpha=1.5), "alpha=1.5"),
                                           (lambda: PSNRPatience(patience=0), "patience=0")])
def test_bad_settings_are_clear_errors(make, message):
    with pytest.raises(DIPError, match=message):
        make()


def test_psnr_patience_run_stops_early_and_writes_the_best_iterate_so_far(run_dip):
    metrics, run_dir = run_dip([*TINY, "callbacks=psnr_patience", "callbacks.early_stopping.patience=10",
                                "iterations=300", "chunk=10", "task.exp_weight=0", "optimizer.lr=0.05"])
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
    metrics, run_dir = run_dip([*TINY, f"data.observed={photo_png}", "data.image=null", "callbacks=es_wmv",
                                "callbacks.early_stopping.window=5", "callbacks.early_stopping.patience=10",
                                "iterations=40", "chunk=10"])
    assert metrics["psnr_best"] is None and metrics["psnr_stop"] is None  # no ground truth, no PSNR
    assert 0 <= metrics["stop_step"] < 40 and metrics["stop_reason"] in ("es_wmv", "max_iterations")
    assert (run_dir / "restored.png").exists()
    header = (run_dir / "curves.csv").read_text().splitlines()[0]
    assert header == "iteration,loss,psnr_observed,psnr_gt,psnr_gt_avg"


def test_psnr_patience_without_ground_truth_is_a_clear_error(run_dip, photo_png):
    with pytest.raises(DIPError, match="needs a ground truth"):
        run_dip([*TINY, f"data.observed={photo_png}", "data.image=null", "callbacks=psnr_patience", "iterations=5"])
