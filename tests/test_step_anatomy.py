"""experiments/step_anatomy.py: the per-kind count of one DIP iteration on the meta device. Its table with the CPU
profile runs in the GPU check's CPU mode (tests/test_gpu_check.py)."""

import pytest
import torch
from conftest import import_experiment


@pytest.fixture(scope="module")
def anatomy():
    return import_experiment("step_anatomy")


def test_every_convolution_is_counted_once_forward_and_once_backward(anatomy):
    from torch import nn

    net, _ = anatomy.skip128x5()
    n_conv = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    ops = anatomy.count_iteration(64)
    conv = {name: c for name, c in ops.items() if anatomy.kind_of(name) == "convolution"}
    assert sum(c["calls"] for c in conv.values()) == 2 * n_conv
    # forward 2*MACs, backward 2*MACs for the weight gradient and 2*MACs for the input gradient (not for the
    # convolutions that read z, which needs none): between 4x and 6x each convolution's multiply-adds
    macs = []

    def count(m, inputs, out):
        macs.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    net(torch.rand(1, 32, 64, 64))
    for h in hooks:
        h.remove()
    flops = sum(c["flops"] for c in conv.values())
    assert len(macs) == n_conv and 5 * sum(macs) < flops <= 6 * sum(macs)
    assert ops["cat"]["calls"] == 5 and ops["cat"]["bytes"] > 0  # the five skip concatenations, forward
    assert all(c["bytes"] > 0 for c in ops.values())  # views (no data moved) are left out
