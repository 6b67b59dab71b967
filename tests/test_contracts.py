"""The extension points keep their contracts: every net in conf/net/ is a Generator that builds for colour and gray,
packs and resumes; every callback in conf/callbacks/ takes exactly the roles whose methods it defines, its stopping
rule works on a tiny run and through a checkpoint, and no iteration hook reads a tensor back to the host; every
metric in conf/metric/ is a Metric that tells a result from its ground truth, in every task's convention."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_cfg
from hydra.utils import instantiate
from test_resume import (
    SignalAt,  # noqa: F401  (a hook the runs name as test_contracts.SignalAt)
    assert_same,
)

from dip_lightning.callbacks import BestIterate
from dip_lightning.callbacks.roles import (
    IterationHook,
    StoppingRule,
    claimed_roles,
    configured,
    lightning_callbacks,
    roles_of,
)
from dip_lightning.checkpoint import (
    CHECKPOINT,
    Interrupted,
    checkpoint_state,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from dip_lightning.config.compose import CONFIG_DIR
from dip_lightning.data.datamodule import SingleImageDataModule
from dip_lightning.errors import DIPError
from dip_lightning.loop.stacked import StackedNets
from dip_lightning.nets import Skip
from dip_lightning.nets.base import CONTRACT, Generator, check_generator
from dip_lightning.run.fit import train_runs
from dip_lightning.run.job import run
from dip_lightning.run.packs import group_packs
from dip_lightning.run.prepare import prepare_run
from dip_lightning.tasks import Denoising

NETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "net").glob("*.yaml"))
CALLBACKS = sorted(p.stem for p in (Path(CONFIG_DIR) / "callbacks").glob("*.yaml"))
METRICS = sorted(p.stem for p in (Path(CONFIG_DIR) / "metric").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------------- nets
def build_net(name: str, **kw) -> Generator:
    return instantiate(compose_cfg([f"net={name}"]).net, **{"output_channels": 3, **kw})


def smallest_side(net: Generator) -> int:
    """The smallest H = W a data module crops an image to for this net (a multiple of size_multiple >= min_size)."""
    m = net.size_multiple
    return -(-max(net.min_size, m) // m) * m


def output_for(net: Generator, height: int, width: int) -> torch.Tensor:
    h, w = net.input_size(height, width)
    assert all(type(v) is int and v >= 1 for v in (h, w)), (h, w)
    with torch.no_grad():  # in training mode, as DIP runs it: BatchNorm with the batch's statistics
        return net.train()(torch.zeros(1, net.input_depth, h, w))


@pytest.mark.parametrize("name", NETS)
def test_every_net_config_builds_a_generator_that_keeps_its_contract(name):
    net = build_net(name)
    assert isinstance(net, Generator) and check_generator(net) is net
    for attr in CONTRACT:
        value = getattr(net, attr)
        assert type(value) is int and value >= 1, (attr, value)
    assert net.output_channels == 3 and net.min_size >= 1
    side = smallest_side(net)
    for height, width in ((side, side), (side, 2 * side)):
        assert output_for(net, height, width).shape == (1, 3, height, width)

    gray = build_net(name, output_channels=1)  # dip-run builds the net again for a gray image
    assert gray.output_channels == 1 and gray.input_depth == net.input_depth
    assert output_for(gray, side, side).shape == (1, 1, side, side)

    meta = copy.deepcopy(net).to("meta")  # packing's functional copy
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert meta(torch.zeros(1, net.input_depth, *net.input_size(side, side), device="meta")).shape[1] == 3


@pytest.mark.parametrize("name", NETS)
def test_every_net_runs_under_vmap_as_it_runs_alone(name):
    """A pack on a GPU calls the net through functional_call + vmap on its meta copy (loop/stacked.py)."""
    nets = []
    for seed in range(2):
        torch.manual_seed(seed)
        nets.append(build_net(name))
    side = max(smallest_side(nets[0]), 2 * nets[0].size_multiple)  # BatchNorm in training mode: > 1 value
    z = torch.rand(2, 1, nets[0].input_depth, *nets[0].input_size(side, side), generator=torch.Generator())
    alone = torch.stack([n(x) for n, x in zip(nets, z)])
    batched = StackedNets(nets, [0.01, 0.01], batched=True).forward(z)
    assert batched.shape == (2, 1, 3, side, side)
    assert torch.allclose(batched, alone, atol=1e-4)  # vmap's grouped convolutions round differently


@pytest.mark.parametrize("name", NETS)
def test_every_net_trains_packed_and_resumes_as_it_trains_alone(tmp_path, name):
    """A few iterations at the net's smallest size: alone, as one of a pack of two (loop.engine.train_runs), and
    stopped by SIGTERM then resumed; restored.png is the same bytes each way."""
    side = max(smallest_side(build_net(name)), 16)
    base = [f"net={name}", f"data.crop={side}", "logger=none", "callbacks=none", "cpu_threads=1", "chunk=2"]
    base += ["iterations=4", "task.backtracking=true", "task.exp_weight=0.9"]
    jobs = [["seed=0", "optimizer.lr=0.01"], ["seed=1", "optimizer.lr=0.02"]]
    alone = run(compose_cfg([*base, *jobs[0]]), tmp_path / "alone")
    restored = (tmp_path / "alone" / "restored.png").read_bytes()

    runs = [prepare_run(compose_cfg([*base, *job]), tmp_path / f"packed{i}") for i, job in enumerate(jobs)]
    assert group_packs(runs, 8) == [[0, 1]]
    packed = train_runs(runs)
    assert packed[0]["pack"] == 2 and packed[0]["psnr_final"] == alone["psnr_final"]
    assert (tmp_path / "packed0" / "restored.png").read_bytes() == restored

    kill = ["+callbacks.kill._target_=test_contracts.SignalAt", "+callbacks.kill.at=2"]
    with pytest.raises(Interrupted):
        run(compose_cfg([*base, *jobs[0], *kill]), tmp_path / "killed")
    assert 2 <= load_checkpoint(tmp_path / "killed" / CHECKPOINT)["iteration"] < 4
    resumed = run(compose_cfg([*base, *jobs[0], f"resume={tmp_path / 'killed'}"]), tmp_path / "resumed")
    assert resumed["iterations"] == 4 and resumed["psnr_final"] == alone["psnr_final"]
    assert (tmp_path / "resumed" / "restored.png").read_bytes() == restored


def test_a_net_that_breaks_the_contract_is_refused_with_what_it_lacks():
    class Bare(torch.nn.Module):
        def forward(self, z):
            return z

    class NoDepth(Generator):
        def __init__(self):
            super().__init__()
            self.output_channels = 3

    opt = functools.partial(torch.optim.Adam, lr=0.01)
    with pytest.raises(DIPError, match="not a dip_lightning.nets.base.Generator"):
        Denoising(Bare(), opt)
    with pytest.raises(DIPError, match="input_depth=None"):
        Denoising(NoDepth(), opt)


# -------------------------------------------------------------------------------------------------- callbacks
def preset_callbacks(preset: str, overrides: tuple[str, ...] = ()) -> dict:
    """callbacks.<key> -> the callback built from conf/callbacks/<preset>.yaml."""
    cfg = compose_cfg([f"callbacks={preset}", *overrides])
    return {key: instantiate(node) for key, node in cfg.callbacks.items() if node is not None}


# small windows for a 12-iteration run
SHORT = {
    "patience": "callbacks.early_stopping.patience=3",
    "es_wmv": "callbacks.early_stopping.window=3",
    "es_emv": "callbacks.early_stopping.warmup=2",
}


def short_rule(preset: str) -> StoppingRule:
    extra = [SHORT["patience"]] + ([SHORT[preset]] if preset in SHORT else [])
    rule = preset_callbacks(preset, tuple(extra))["early_stopping"]
    assert isinstance(rule, StoppingRule)
    return rule.named("early_stopping")


RULES = [p for p in CALLBACKS if "early_stopping" in compose_cfg([f"callbacks={p}"]).callbacks]


@pytest.mark.parametrize("preset", CALLBACKS)
def test_every_callback_takes_exactly_the_roles_it_claims(preset):
    for key, callback in preset_callbacks(preset).items():
        roles = roles_of(callback)
        assert roles == claimed_roles(callback), (key, roles)  # no role method the loop would never call
        assert roles or isinstance(callback, pl.Callback), key  # else a plain Lightning callback
        assert (StoppingRule not in roles) or IterationHook in roles
        assert (lightning_callbacks([callback]) == [callback]) == (not roles)
        assert configured(callback, key) is callback
        assert not roles or callback.config_name == key  # what its checkpoint state is filed under


def test_a_callback_with_a_role_method_but_not_the_role_is_refused():
    class Forgot:  # on_dip_iteration, but not an IterationHook: the loop would never call it
        def on_dip_iteration(self, task, it):
            pass

    class Stops(IterationHook):
        def on_dip_iteration(self, task, it):
            pass

        def should_stop(self):
            return True

    with pytest.raises(DIPError, match=r"callbacks.mine \(.*Forgot\) defines on_dip_iteration .*IterationHook"):
        configured(Forgot(), "mine")
    with pytest.raises(DIPError, match="defines should_stop but is not a StoppingRule"):
        configured(Stops(), "mine")
    lightning = pl.callbacks.LearningRateMonitor()
    assert configured(lightning, "lr") is lightning and roles_of(lightning) == set()


def tiny_task(net_seed: int = 0):
    """A prepared 32-px denoising task with jitter, averaging and backtracking: a given noisy observation (the
    discrepancy rule estimates its noise) and the ground truth (PSNR patience needs it)."""
    torch.manual_seed(net_seed)
    net = Skip(input_depth=4, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])
    opt = functools.partial(torch.optim.Adam, lr=0.01)
    task = Denoising(net, opt, seed=0, reg_noise_std=0.03, exp_weight=0.9, backtracking=True)
    data = SingleImageDataModule(image="astronaut", crop=32).load(net.size_multiple)
    noise = torch.randn(data.clean.shape, generator=torch.Generator().manual_seed(0)) * 0.1
    data.observed = (data.clean + noise).clamp(0, 1)
    task.prepare(data)
    return task


def start(task, hooks: list):
    """The task's loop iteration with these hooks (stopping rules attached), to step with once()."""
    for rule in hooks:
        if isinstance(rule, StoppingRule):
            rule.attach(task)
    task.start_on_device()
    return task.by_hand(task.make_optimizer(), hooks)


@pytest.mark.parametrize("preset", RULES)
def test_every_stopping_rule_works_on_a_tiny_run_and_survives_a_checkpoint(tmp_path, preset):
    rule, best = short_rule(preset), BestIterate().named("best_iterate")
    task = tiny_task()
    loop = start(task, [best, rule])
    for _ in range(6):
        loop.once()
        assert type(rule.fired()) is bool and rule.should_stop() == (rule.stop and rule.fired())

    state = checkpoint_state(task, loop.trainable, 0, [best, rule])
    path = save_checkpoint(tmp_path / "last.ckpt", {**state, "identity": {}})
    fresh_rule, fresh_best = short_rule(preset), BestIterate().named("best_iterate")
    fresh = tiny_task(net_seed=1)
    fresh_loop = start(fresh, [fresh_best, fresh_rule])
    restore_checkpoint(fresh, load_checkpoint(path), path, fresh_loop.trainable, 0, [fresh_best, fresh_rule])
    assert_same(rule.state_dict(), fresh_rule.state_dict())

    for _ in range(6):  # both go on identically, and choose the same iterate
        assert torch.equal(loop.once(), fresh_loop.once())
    assert_same(rule.state_dict(), fresh_rule.state_dict())
    assert rule.fired() == fresh_rule.fired() and rule.should_stop() == (rule.stop and rule.fired())
    result, again = rule.stop_result(task), fresh_rule.stop_result(fresh)
    assert_same(result, again, "stop_result")
    assert result["image"].shape == task.out_avg.shape and 0 <= result["image"].min() <= result["image"].max() <= 1
    assert all(torch.is_tensor(c) and c.shape == task.out_avg.shape for c in result["candidates"].values())
    assert type(result["stop_step"]) is int
    assert result["stop_reason"] == (rule.reason if rule.fired() else "max_iterations")


HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def host_reads(monkeypatch, hooks: list, iterations: int = 8) -> list[str]:
    """The tensor reads to the host made inside the hooks' on_dip_iteration over `iterations` iterations of a
    tiny run, after its first iteration (which creates the hooks' lazily built state, and may read the host once:
    the discrepancy rule's sigma)."""
    task = tiny_task()
    loop = start(task, hooks)
    loop.once()
    reads, inside = [], [False]
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if inside[0]:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for hook in hooks:

        def watched(t, it, _original=hook.on_dip_iteration):
            inside[0] = True
            try:
                _original(t, it)
            finally:
                inside[0] = False

        monkeypatch.setattr(hook, "on_dip_iteration", watched)
    for _ in range(iterations):
        loop.once()
    monkeypatch.undo()
    return reads


@pytest.mark.parametrize("preset", CALLBACKS)
def test_no_iteration_hook_reads_a_tensor_back_to_the_host(monkeypatch, preset):
    """What tests/test_gpu.py::test_no_host_sync_inside_a_chunk checks on CUDA, on the CPU: every .item(),
    .cpu(), .tolist(), float(t), int(t), bool(t) inside on_dip_iteration is counted; there must be none."""
    callbacks = preset_callbacks(preset, (SHORT["patience"],) if preset in RULES else ())
    hooks = [c for c in callbacks.values() if isinstance(c, IterationHook)]
    if not any(isinstance(h, BestIterate) for h in hooks):
        hooks.append(BestIterate())  # dip-run always adds it
    assert host_reads(monkeypatch, hooks) == [], preset


def test_the_host_read_count_sees_a_hook_that_reads():
    class Reads(IterationHook):
        def on_dip_iteration(self, task, it):
            if it.out.mean() > 2:  # bool(t)
                pass
            self.last = float(it.out.mean()) + it.out.max().item()

    with pytest.MonkeyPatch.context() as monkeypatch:
        assert host_reads(monkeypatch, [Reads()], iterations=2) == ["__bool__", "__float__", "item"] * 2


# ---------------------------------------------------------------------------------------------------- metrics
def test_the_metric_presets_include_ssim():
    assert "ssim" in METRICS


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("convention", ["rgb", "y_shaved:4", "reference_script"])
def test_every_metric_config_builds_a_metric_that_tells_a_result_from_its_ground_truth(name, convention):
    from omegaconf import OmegaConf

    from dip_lightning.metrics import Metric, score

    metric = instantiate(OmegaConf.load(Path(CONFIG_DIR) / "metric" / f"{name}.yaml"))
    assert isinstance(metric, Metric), name
    truth = SingleImageDataModule(image="astronaut", crop=48).load(1).clean
    noisy = truth + 0.2 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))  # leaves [0, 1]
    same, other = (float(score(x, truth, convention, metric)) for x in (truth, noisy))
    assert all(v == v and abs(v) != float("inf") for v in (same, other)) and same != other, (same, other)
    assert float(score(noisy, truth, convention, metric)) == other  # a score, not a draw


def test_a_metric_config_that_builds_no_metric_is_refused_with_its_target(tmp_path):
    cfg = compose_cfg(["metrics=[psnr,odd]", "+metric.odd._target_=collections.OrderedDict"])
    with pytest.raises(DIPError, match=r"metric.odd \(_target_: collections.OrderedDict\) builds an instance of "):
        prepare_run(cfg, tmp_path)
    with pytest.raises(DIPError, match=r"names 'lpips', which is no metric: expected psnr .*\(ssim\)"):
        prepare_run(compose_cfg(["metrics=[psnr,lpips]"]), tmp_path)
