"""docs/design.md's examples work as written: its Python blocks, saved as one module, give a net that dip-run
trains, an iteration hook that runs in the loop, a metric that metrics.json reports and a task whose observation and
ground truth come from its hooks."""

import functools
import re
import sys

import pytest
import torch
from conftest import REPO, TINY, compose_cfg
from omegaconf import OmegaConf, open_dict

from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.nets.base import check_generator
from dip_lightning.run.job import run


@pytest.fixture
def examples(tmp_path, monkeypatch):
    """docs/design.md's Python blocks as the module `design_examples`."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "design.md").read_text(), re.S)
    assert len(blocks) == 4
    (tmp_path / "design_examples.py").write_text("\n\n".join(blocks))
    monkeypatch.syspath_prepend(str(tmp_path))
    import design_examples

    yield design_examples
    monkeypatch.delitem(sys.modules, "design_examples")


def test_the_net_and_the_metric_run_through_dip_run(examples, tmp_path):
    net = check_generator(examples.TinyConv(input_depth=8, output_channels=1, width=8))
    assert net(torch.zeros(1, 8, 16, 16)).shape == (1, 1, 16, 16)
    mae = "+metric.mae._target_=design_examples.MeanAbsoluteError"
    cfg = compose_cfg([*TINY, "iterations=10", "metrics=[psnr,mae]", mae])
    with open_dict(cfg):  # the net's config as the page registers it, with a narrower body
        net = {"_target_": "design_examples.TinyConv", "input_depth": 32, "output_channels": None, "width": 16}
        cfg.net = OmegaConf.create(net)
    metrics = run(cfg, tmp_path / "run")
    assert metrics["iterations"] == 10 and 0 < metrics["mae_final"] < 1 and 0 < metrics["mae_observed"] < 1


def prepared_task(cls, observed: bool):
    net = examples_net()
    task = cls(net, functools.partial(torch.optim.Adam, lr=0.01), seed=0)
    data = SingleImageDataModule(image="astronaut", crop=64).load(net.size_multiple)
    if observed:
        noise = torch.randn(data.clean.shape, generator=torch.Generator().manual_seed(0))
        data.observed = (data.clean + 0.1 * noise).clamp(0, 1)
    loaded = (data.clean.clone(), None if data.observed is None else data.observed.clone())
    task.prepare(data)
    task.start_on_device()
    return task, data, loaded


def examples_net():
    from dip_lightning.nets import Skip

    return Skip(input_depth=4, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])


def test_the_hook_runs_in_the_loop_without_host_reads(examples):
    from dip_lightning.tasks import Denoising

    task, _, _ = prepared_task(Denoising, observed=False)
    hook = examples.LargestJump()
    loop = task.by_hand(task.make_optimizer(), [hook])
    for _ in range(5):
        loop.once()
    assert hook.jump > 0 and 1 <= int(hook.step) <= 4


@pytest.mark.parametrize("observed", [True, False])
def test_the_task_fits_and_scores_the_centre_and_leaves_the_data_as_read(examples, observed):
    task, data, (clean, given) = prepared_task(examples.CentreDenoising, observed)
    assert task.clean.shape == task.observed.shape == task.out_avg.shape == (1, 3, 32, 32)
    assert torch.equal(task.clean, clean[..., 16:48, 16:48]) and torch.equal(data.clean, clean)
    if observed:
        assert torch.equal(task.observed, given[..., 16:48, 16:48]) and torch.equal(data.observed, given)
    else:  # simulated from the centre: the noise is the only difference
        assert 0.05 < (task.observed - task.clean).std() < 0.15
    row = task.dip_iteration(task.make_optimizer())
    assert torch.isfinite(row).all()
