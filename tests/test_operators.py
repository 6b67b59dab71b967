"""Every degradation operator through one interface: shape, seeded determinism, linearity, adjoint identity."""

import functools

import pytest
import torch

from dip_lightning.data.masks import random_mask
from dip_lightning.nets.cnns import AlexNet, FeatureExtractor
from dip_lightning.operators import JPEG, Blur, Downsample, Features, Identity, Mask
from dip_lightning.operators.linear import gaussian_kernel, motion_kernel
from dip_lightning.tasks.features import UnitActivation

H = W = 32


@functools.lru_cache(maxsize=None)
def alexnet():
    torch.manual_seed(0)
    return AlexNet()  # 61M random parameters: built once (a second or two)


def alexnet_features(layer):
    return FeatureExtractor(alexnet(), layer)


# name -> (factory, expected shape of A x for x of shape (1, 3, H, W))
OPERATORS = {
    "identity": (lambda: Identity(sigma=0.1), (1, 3, H, W)),
    "mask": (lambda: Mask(random_mask((H, W), 0.5, seed=0), sigma=0.05), (1, 3, H, W)),
    "downsample_lanczos2_x2": (lambda: Downsample(3, 2, "lanczos2", lr_method="kernel", sigma=0.02), (1, 3, 16, 16)),
    "downsample_lanczos3_x4": (lambda: Downsample(3, 4, "lanczos3", lr_method="kernel"), (1, 3, 8, 8)),
    "downsample_gauss_x4": (lambda: Downsample(3, 4, "gauss12", lr_method="kernel"), (1, 3, 8, 8)),
    "downsample_box_x8_pil": (lambda: Downsample(3, 8, "box", lr_method="pil", sigma=0.02), (1, 3, 4, 4)),
    "blur_gaussian": (lambda: Blur(gaussian_kernel(7, 1.5), 3, sigma=0.05), (1, 3, H, W)),
    "blur_motion": (lambda: Blur(motion_kernel(9, 30.0), 3, sigma=0.05), (1, 3, H, W)),
    "jpeg": (lambda: JPEG(quality=20), (1, 3, H, W)),
    "features_conv2": (lambda: Features(alexnet_features("conv2")), (1, 192, 3, 3)),
    "unit_activation_conv5": (lambda: UnitActivation(alexnet_features("conv5"), unit=3), (1, 256, 1, 1)),
}


@pytest.fixture(params=sorted(OPERATORS))
def case(request):
    factory, shape = OPERATORS[request.param]
    return request.param, factory(), shape


def test_operator_contract(case):
    name, op, shape = case
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1))
    assert op(x).shape == shape, name

    # a simulated observation is reproducible under a seed (and differs with another seed when noisy)
    y1 = op.simulate(x, torch.Generator().manual_seed(5))
    y2 = op.simulate(x, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2), name
    if op.sigma > 0:
        assert not torch.equal(y1, op.simulate(x, torch.Generator().manual_seed(6))), name

    # the loss is the MSE of A x against an observation; zero at the noiseless observation of x itself
    if not isinstance(op, (Features, JPEG)) and getattr(op, "lr_method", "kernel") == "kernel":
        loss, ax = op.loss(x, op(x))
        assert loss.item() < 1e-12 and torch.equal(ax, op(x))

    gen = torch.Generator().manual_seed(2)
    x64, u64 = (torch.rand(2, 3, H, W, generator=gen, dtype=torch.float64) for _ in range(2))
    if op.linear:
        a, b = 0.7, -1.3
        assert torch.allclose(op(a * x64 + b * u64), a * op(x64) + b * op(u64), atol=1e-10), name
    if op.has_adjoint:
        y = torch.randn(op(x64).shape, generator=gen, dtype=torch.float64)
        lhs, rhs = (op(x64) * y).sum(), (x64 * op.adjoint(y)).sum()
        assert torch.allclose(lhs, rhs, rtol=1e-9), (name, lhs.item(), rhs.item())


def test_every_operator_class_is_covered():
    import dip_lightning.operators as ops

    covered = {type(f()).__name__ for f, _ in OPERATORS.values()}
    assert set(ops.__all__) - {"Operator"} <= covered


def test_sr_simulation_follows_the_paper_protocol_pil_lanczos():
    import numpy as np
    from PIL import Image

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    arr = (x[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    want = np.asarray(Image.fromarray(arr).resize((8, 8), Image.LANCZOS), dtype=np.float32) / 255
    got = Downsample(3, 4).simulate(x)
    assert torch.allclose(got[0].permute(1, 2, 0), torch.from_numpy(want))


def test_lanczos2_kernel_support_is_4_factor():
    assert Downsample(3, 4).down.weight.shape[-2:] == (16, 16)  # support 4*factor+1 at phase 0.5 -> 16x16
