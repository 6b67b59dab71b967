"""Speed options (precision, channels_last, compile) and the flat training state, on the CPU. The GPU side of the
same options runs in tests/test_gpu.py; what they gain is measured by experiments/bench_gpu.py."""

import pytest
import torch
from conftest import TINY

from dip_lightning.errors import DIPError
from dip_lightning.loop.flat_state import fit_snapshot, flatten_training_state
from dip_lightning.run.fit import fit

FAST = [*TINY, "cpu_threads=1"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("precision=fp16", "precision='fp16' is not supported: float16 needs a gradient scaler.*precision=bf16"),
        ("precision=int8", "precision='int8' is not known; expected one of fp32, tf32, bf16"),
        ("+trainer.precision=bf16-mixed", "trainer.precision='bf16-mixed' is not used by dip-run.*precision=bf16"),
        ("compile=fast", "compile='fast' is not known; expected false or one of default, reduce-overhead"),
        ("channels_last=maybe", "channels_last='maybe' is not valid; expected true or false"),
    ],
)
def test_bad_speed_options_are_one_clear_error_before_anything_runs(run_dip, tmp_path, override, message):
    with pytest.raises(DIPError, match=message):
        run_dip([*FAST, "iterations=5", override], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bf16_and_channels_last_restore_on_the_cpu(run_dip):
    m, _ = run_dip([*FAST, "iterations=200", "task.exp_weight=0", "precision=bf16", "channels_last=true"])
    assert m["speed"] == "bf16, channels_last"
    assert m["psnr_final"] > m["psnr_observed"] + 2


def test_a_refused_nondeterministic_kernel_becomes_one_paragraph():
    class Trainer:
        def fit(self, *args, **kwargs):
            raise RuntimeError(
                "reflection_pad2d_backward_cuda does not have a deterministic implementation, but you "
                "set 'torch.use_deterministic_algorithms(True)'.\nmore torch text"
            )

    with pytest.raises(
        DIPError, match="trainer.deterministic=true.*reflection_pad2d_backward_cuda.*trainer.deterministic=false"
    ):
        fit(Trainer(), None)


def test_weights_and_adam_state_become_views_of_one_buffer_with_their_values_and_layout():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 3, 1))
    net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.rand(1, 3, 8, 8)).sum().backward()
    opt.step()
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    moments = [opt.state[p]["exp_avg_sq"].clone() for p in net.parameters()]
    strides = [p.stride() for p in net.parameters()]
    flat = flatten_training_state(net, opt)
    params = list(net.parameters())
    assert flat.numel() == 3 * sum(p.numel() for p in params)  # weights, exp_avg, exp_avg_sq
    assert all(p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in params)
    assert [p.stride() for p in params] == strides  # channels_last kept
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    assert all(torch.equal(opt.state[p]["exp_avg_sq"], m) for p, m in zip(params, moments))
    flat.zero_()  # one write reaches every weight and moment
    assert all(not p.any() for p in params) and not opt.state[params[0]]["exp_avg"].any()
    opt.step()  # and the optimizer still works on the views


@pytest.mark.parametrize(
    "make, kept",
    [
        (lambda ps: torch.optim.Adam(ps, lr=0.1), {"exp_avg", "exp_avg_sq"}),
        (lambda ps: torch.optim.Adam(ps, lr=0.1, amsgrad=True), {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
        (lambda ps: torch.optim.AdamW(ps, lr=0.1), {"exp_avg", "exp_avg_sq"}),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), {"momentum_buffer"}),
        (lambda ps: torch.optim.SGD(ps, lr=0.1), set()),
    ],
)
def test_backtracking_restores_each_optimizers_per_weight_state(make, kept):
    """What the snapshot keeps per optimizer: every per-weight tensor of its state (Adam/AdamW: the two moments,
    amsgrad's maximum too; SGD: the momentum buffer, none without momentum), never the step count. A restore of the
    flat buffer brings back the weights and that state exactly, and later steps still update them in place."""
    from dip_lightning.loop.flat_state import training_state

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 3, 1))
    opt = make(net.parameters())
    for _ in range(2):
        opt.zero_grad()
        net(torch.rand(1, 3, 8, 8)).square().sum().backward()
        opt.step()
    assert {key for _, key in training_state(net, opt) if key is not None} == kept
    flat = flatten_training_state(net, opt)
    snapshot = flat.clone()
    saved = [
        (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)})
        for p in net.parameters()
    ]
    opt.zero_grad()
    (1e3 * net(torch.rand(1, 3, 8, 8)).square().sum()).backward()  # a wild step moves weights and state
    opt.step()
    assert not torch.equal(flat, snapshot)
    flat.copy_(snapshot)  # what a backtrack does (with torch.where)
    for p, (weight, state) in zip(net.parameters(), saved):
        assert torch.equal(p, weight)
        for key in kept:
            assert torch.equal(opt.state[p][key], state[key]), key


def test_the_snapshot_grows_when_the_optimizer_state_appears_and_keeps_a_resumed_one():
    flat = torch.arange(6.0)
    assert torch.equal(fit_snapshot(None, flat), flat)
    assert torch.equal(fit_snapshot(torch.ones(2), flat), torch.tensor([1.0, 1, 0, 0, 0, 0]))
    resumed = torch.full((6,), 7.0)
    assert fit_snapshot(resumed, flat) is resumed
    assert torch.equal(fit_snapshot([torch.ones(2, 1), torch.zeros(4)], flat), torch.tensor([1.0, 1, 0, 0, 0, 0]))
    with pytest.raises(DIPError, match="snapshot holds 8 values but the net and optimizer have 6"):
        fit_snapshot(torch.zeros(8), flat)


# ------------------------------------------------------------------------------------------------- cuda_graph
class AdamOnAnyDevice(torch.optim.Adam):
    """Adam that takes capturable=True and ignores it: the CPU stand-in for a captured optimizer step."""

    def __init__(self, params, capturable=False, **kwargs):
        super().__init__(params, **kwargs)


class ReplayByCalling:
    """A stand-in for a captured CUDA graph on the CPU: replay runs the captured body again."""

    captured = 0

    def __init__(self, body):
        self.body = body
        ReplayByCalling.captured += 1

    def replay(self):
        return self.body()


@pytest.mark.parametrize("compiled", [[], ["compile=default"]], ids=["eager net", "compiled net"])
def test_the_graph_path_warms_up_captures_once_and_replays_to_the_eager_result(run_dip, monkeypatch, compiled):
    """The control flow of cuda_graph=true (jitter drawn outside the graph, 3 eager warm-up steps, one capture,
    hooks after each replay) on the CPU, with a replay that re-runs the captured body: the same ops in the same
    order, so the same result bit for bit; with compile=default the net compiles in the warm-up and the capture
    calls the compiled net. The real capture is tested on CUDA (tests/test_gpu.py)."""
    import contextlib

    from dip_lightning.loop import cuda_graph

    monkeypatch.setattr(cuda_graph, "check_device", lambda device: None)
    monkeypatch.setattr(cuda_graph, "warmup_stream", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(cuda_graph, "capture", ReplayByCalling)
    args = [
        *FAST,
        *compiled,
        "iterations=40",
        "chunk=10",
        "optimizer._target_=test_speed.AdamOnAnyDevice",
        "callbacks=es_wmv",
        "callbacks.early_stopping.window=5",
        "callbacks.early_stopping.stop=false",
    ]
    ReplayByCalling.captured = 0
    eager, _ = run_dip(args)
    graphed, _ = run_dip([*args, "cuda_graph=true"])
    assert ReplayByCalling.captured == 1 and graphed["speed"] == ", ".join(["fp32", *compiled, "cuda_graph"])
    for key in ("psnr_final", "psnr_best", "best_step", "stop_step", "backtracks"):
        assert graphed[key] == eager[key], key


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["cuda_graph=true"], "cuda_graph=true needs a CUDA device, and this run is on cpu"),
        (["cuda_graph=true", "optimizer=sgd"], "cuda_graph=true needs an optimizer that can be captured"),
        (["cuda_graph=true", "compile=reduce-overhead"], "compile=reduce-overhead captures CUDA graphs of its own"),
        (["cuda_graph=true", "compile=max-autotune"], "use it with compile=default or compile=max-autotune-no-cud"),
        # a compiled net inside the captured iteration is allowed: on the CPU the run reaches the device check
        (["cuda_graph=true", "compile=default"], "cuda_graph=true needs a CUDA device, and this run is on cpu"),
        (["cuda_graph=yes"], "cuda_graph='yes' is not valid; expected true or false"),
    ],
)
def test_cuda_graph_refusals(run_dip, overrides, message):
    with pytest.raises(DIPError, match=message):
        run_dip([*FAST, "iterations=5", *overrides])
