"""The task base class: backtracking, divergence, BatchNorm mode, output averaging, determinism."""

import functools
import math

import pytest
import torch

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import DIPError
from dip_lightning.nets import Skip
from dip_lightning.tasks import Denoising


def make_task(**kwargs):
    torch.manual_seed(0)
    net = Skip(input_depth=4, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])
    task = Denoising(net, functools.partial(torch.optim.Adam, lr=0.01), seed=0, **kwargs)
    data = SingleImageDataModule(image="astronaut", crop=32).load(net.size_multiple)
    task.prepare(data)
    task.jitter_gen = torch.Generator().manual_seed(1)
    return task, task.make_optimizer()


def test_observation_is_seeded_and_has_the_requested_noise():
    a, _ = make_task(sigma=25)
    b, _ = make_task(sigma=25)
    assert torch.equal(a.observed, b.observed)
    residual = (a.observed - a.clean)[(a.clean > 0.15) & (a.clean < 0.85)]  # away from clipping
    assert abs(residual.std().item() * 255 - 25) < 2


def test_bad_sigma_is_rejected():
    net = Skip(input_depth=4, num_channels_down=[8], num_channels_up=[8], num_channels_skip=[2])
    for sigma in (-1, 1e6, float("nan")):
        with pytest.raises(DIPError, match="task.sigma"):
            Denoising(net, torch.optim.Adam, sigma=sigma)


@pytest.mark.parametrize("sabotage", ["nan", "collapse"])
def test_backtracking_restores_the_last_good_weights_and_optimizer_state(sabotage):
    task, opt = make_task(backtracking=True)
    for _ in range(40):  # until the output fits the observation to ~15 dB
        task.dip_iteration(opt)
    good_weights = [p.detach().clone() for p in task.net.parameters()]
    good_state = [(opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone()) for p in task.net.parameters()]
    task.dip_iteration(opt)  # healthy: its pre-step weights and state (the ones above) become the snapshot
    with torch.no_grad():
        first = list(task.net.parameters())[-1]  # the output bias: BatchNorm cannot undo it
        # NaN weights (a divergence), or weights that saturate the output (PSNR to y drops by more than 5 dB)
        first.fill_(float("nan")) if sabotage == "nan" else first.add_(1e4)
    task.dip_iteration(opt)
    assert int(task.n_backtracks) == 1
    for p, g, (m, v) in zip(task.net.parameters(), good_weights, good_state):
        assert torch.equal(p, g)
        assert torch.equal(opt.state[p]["exp_avg"], m) and torch.equal(opt.state[p]["exp_avg_sq"], v)
    for _ in range(3):  # and the run goes on
        row = task.dip_iteration(opt)
    assert torch.isfinite(row[:2]).all() and int(task.n_backtracks) == 1


def test_divergence_without_backtracking_is_a_clear_error():
    task, opt = make_task(backtracking=False)
    with torch.no_grad():
        next(task.net.parameters()).fill_(float("nan"))
    hist = torch.stack([task.dip_iteration(opt) for _ in range(2)])
    with pytest.raises(DIPError, match="non-finite.*iteration 0.*lr=0.01.*backtracking"):
        task.record_chunk(hist, lambda: opt.param_groups[0]["lr"])


def test_batchnorm_stays_in_training_mode_and_final_output_uses_clean_z():
    task, opt = make_task()
    task.start_on_device()
    assert all(m.training for m in task.net.modules())
    task.dip_iteration(opt)
    out1 = task.final_output()
    out2 = task.final_output()
    assert torch.allclose(out1, out2)  # no jitter in the final output
    assert all(m.training for m in task.net.modules())


def test_output_averaging_follows_the_reference_formula():
    task, opt = make_task(exp_weight=0.9)
    task.dip_iteration(opt)
    first = task.last_out.clone()
    assert torch.equal(task.out_avg, first)
    task.dip_iteration(opt)
    assert torch.allclose(task.out_avg, 0.9 * first + 0.1 * task.last_out)


def test_average_from_makes_the_averaged_output_the_mean_of_the_outputs_from_that_iteration_on():
    task, opt = make_task(exp_weight=0.9, average_from=3)
    outs = []
    for _ in range(8):
        task.dip_iteration(opt)
        outs.append(task.last_out.clone())
        if len(outs) == 3:  # before it, the exponential average
            ema = outs[0]
            for out in outs[1:]:
                ema = 0.9 * ema + 0.1 * out
            assert torch.allclose(task.out_avg, ema, atol=1e-6)
    assert torch.allclose(task.out_avg, torch.stack(outs[3:]).mean(0), atol=1e-6)
    assert int(task.n_averaged) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(exp_weight=0.99, average_from=-1), r"task.average_from=-1 is not valid.*>= 0"),
        (dict(exp_weight=0.99, average_from=True), r"task.average_from=True is not valid"),
        (dict(exp_weight=0.0, average_from=200), r"task.average_from=200 .* task.exp_weight=0 turns output averaging"),
    ],
)
def test_a_bad_average_from_is_refused_with_its_key_and_value(kwargs, message):
    net = Skip(input_depth=4, num_channels_down=[8], num_channels_up=[8], num_channels_skip=[2])
    with pytest.raises(DIPError, match=message):
        Denoising(net, torch.optim.Adam, **kwargs)


def test_no_ground_truth_gives_nan_psnr_columns():
    torch.manual_seed(0)
    net = Skip(input_depth=4, num_channels_down=[8], num_channels_up=[8], num_channels_skip=[2])
    task = Denoising(net, functools.partial(torch.optim.Adam, lr=0.01))
    dm = SingleImageDataModule(image=None, observed="astronaut", crop=16)
    task.prepare(dm.load(net.size_multiple))
    task.jitter_gen = torch.Generator()
    opt = task.make_optimizer()
    hist = torch.stack([task.dip_iteration(opt) for _ in range(3)])  # one chunk of 3 iterations
    hist = torch.cat([hist, torch.full((3, 2), float("nan"))], dim=1)  # the loop's rows: NaN PSNR columns
    task.record_chunk(hist, lambda: 0.01)
    assert len(task.history["loss"]) == 3 and all(math.isfinite(v) for v in task.history["loss"])
    assert all(math.isnan(v) for v in task.history["psnr_gt"] + task.history["psnr_gt_avg"])
    assert task.observed_psnr() is None
