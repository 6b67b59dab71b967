"""experiments/bench_gt_free_recipe.py's parts a user relies on: a recipe's values reach the run, each fusion of an
ensemble's members is what its name says, and the search preset scores what the GT-free rule returns."""

import numpy as np
import pytest
from conftest import compose_cfg, import_experiment, save_png


@pytest.fixture(scope="module")
def bench():
    return import_experiment("bench_gt_free_recipe")


def test_a_recipes_values_reach_the_run(bench):
    args = bench.parse_args(["--recipes", "tuned", "--set", "tuned=task.exp_weight=0.9"])
    cfg = compose_cfg(bench.recipe_overrides(args, "tuned"))
    assert cfg.optimizer.lr == 0.0186 and cfg.task.reg_noise_std == 0.037 and cfg.task.exp_weight == 0.9
    assert cfg.callbacks.early_stopping._target_.endswith("Discrepancy") and cfg.iterations == 2000
    guided = compose_cfg(bench.recipe_overrides(args, "self_guided"))
    assert guided.regularizer._target_.endswith("SelfGuided") and "early_stopping" not in guided.callbacks
    sure = compose_cfg(bench.recipe_overrides(args, "sure"))  # its own iteration count wins over --iterations
    assert sure.regularizer._target_.endswith("SURE") and sure.net.input_depth == 3 and sure.iterations == 1000
    assert "early_stopping" not in sure.callbacks and sure.without_ground_truth is None  # conf/regularizer/sure.yaml


def test_the_width_and_depth_recipes_build_the_net_they_name(bench):
    import torch
    from hydra.utils import instantiate

    args = bench.parse_args(["--recipes", "sure_skip64,sure_depth3"])
    for recipe, channels, scales in (("sure_skip64", 64, 5), ("sure_skip128", 128, 5), ("sure_depth3", 32, 3)):
        cfg = compose_cfg(bench.recipe_overrides(args, recipe))
        assert cfg.regularizer._target_.endswith("SURE") and cfg.iterations == 1000 and cfg.net.input_depth == 3
        assert list(cfg.net.num_channels_down) == list(cfg.net.num_channels_up) == [channels] * scales
        assert list(cfg.net.num_channels_skip) == [4] * scales
    net = instantiate(compose_cfg(bench.recipe_overrides(args, "sure_depth3")).net, output_channels=3)
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_a_white_noise_recipe_skips_the_correlated_case(bench, tmp_path):
    args = bench.parse_args(["--recipes", "plain,sure,sure_skip64", "--out", str(tmp_path)])
    found = {case: [("x", tmp_path / "x_GT.png", tmp_path / "x_noisy.png")] for case in ("denoise", "correlated")}
    runs = {(j["case"], j["recipe"]) for j in bench.jobs(args, found) if j["kind"] == "dip"}
    assert runs == {("denoise", "plain"), ("denoise", "sure"), ("denoise", "sure_skip64"), ("correlated", "plain")}


def test_each_fusion_is_what_its_name_says(bench, tmp_path):
    clean = np.full((8, 8, 3), 100, np.uint8)
    save_png(tmp_path / "ground_truth.png", clean)
    offsets = [10, -10, 30, 6]  # seeds 0..3: the mean of the first 2 is the ground truth
    for seed, offset in enumerate(offsets):
        member = tmp_path / "members" / f"seed_{seed}"
        member.mkdir(parents=True)
        save_png(member / "restored.png", clean + np.uint8(offset) if offset > 0 else clean - np.uint8(-offset))

    def psnr(error: float) -> float:
        return 10 * np.log10(255.0**2 / error**2)

    scores = bench.fusions(tmp_path, 4)
    assert scores["1"] == pytest.approx(psnr(10), abs=1e-3)
    assert scores["mean 2"] == float("inf")  # +10 and -10 average to the ground truth
    assert scores["mean 4"] == pytest.approx(psnr(9), abs=1e-3)  # (10 - 10 + 30 + 6) / 4
    assert scores["median 4"] == pytest.approx(psnr(6), abs=1e-3)  # the lower of the middle two of -10, 6, 10, 30
    save_png(tmp_path / "restored.png", clean + np.uint8(3))  # an ensemble=1 run: its own result, no members
    assert bench.fusions(tmp_path, 1) == {"1": pytest.approx(psnr(3), abs=1e-3)}


def test_the_search_preset_scores_what_the_gt_free_rule_returns():
    cfg = compose_cfg(["hparams_search=gt_free", "data.image=some/folder"])
    assert cfg.optimized_metric == "psnr_result"  # the rule's choice, not the oracle psnr_best
    assert cfg.callbacks.early_stopping._target_.endswith("Discrepancy") and cfg.callbacks.early_stopping.sigma is None
    assert cfg.task.noise_seed == 0 and cfg.net.num_channels_down == [32] * 5


def test_the_averaging_studys_plain_mean_is_what_average_from_computes(monkeypatch, tmp_path):
    """experiments/bench_sure_averaging.py's probe keeps the mean of the outputs from an iteration on beside the
    task's average: with task.average_from at that iteration, the two are the same image."""
    import functools

    import torch

    from dip_lightning.data.datamodule import SingleImageDataModule
    from dip_lightning.nets import Skip
    from dip_lightning.tasks import Denoising

    study = import_experiment("bench_sure_averaging")
    monkeypatch.setattr(study, "STARTS", (4,))
    torch.manual_seed(0)
    net = Skip(input_depth=4, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])
    task = Denoising(net, functools.partial(torch.optim.Adam, lr=0.01), exp_weight=0.99, average_from=4)
    task.prepare(SingleImageDataModule(image="astronaut", crop=32).load(net.size_multiple))
    task.jitter_gen = torch.Generator().manual_seed(1)
    probe, opt = study.AveragingProbe(str(tmp_path)), task.make_optimizer()
    for _ in range(10):
        task.dip_iteration(opt, hooks=[probe])
    assert probe.counts == [6]
    assert torch.allclose(probe.sums[0] / probe.counts[0], task.out_avg, atol=1e-6)
