import pytest
import torch

from dip_lightning.errors import DIPError
from dip_lightning.nets import Skip, make_input
from dip_lightning.nets.common import count_parameters


def test_skip128x5_has_the_reference_parameter_count():
    # The reference skip net with 32 input channels: 2,217,831 parameters (docs/reference.md).
    assert count_parameters(Skip(input_depth=32)) == 2_217_831


def test_skip_output_shape_and_range():
    net = Skip(input_depth=4, num_channels_down=[8, 8], num_channels_up=[8, 8], num_channels_skip=[2, 2])
    out = net(torch.rand(1, 4, 32, 48))
    assert out.shape == (1, 3, 32, 48)
    assert 0 <= out.min() and out.max() <= 1  # sigmoid
    assert net.size_multiple == 4


def test_hourglass_has_no_skip_branches_and_fewer_parameters():
    with_skip = Skip(input_depth=4, num_channels_down=[8] * 3, num_channels_up=[8] * 3, num_channels_skip=[4] * 3)
    hourglass = Skip(input_depth=4, num_channels_down=[8] * 3, num_channels_up=[8] * 3, num_channels_skip=[0] * 3)
    assert count_parameters(hourglass) < count_parameters(with_skip)
    assert hourglass(torch.rand(1, 4, 16, 16)).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    "options",
    [
        dict(upsample_mode=["nearest", "bilinear", "bilinear"], downsample_mode="avg"),
        dict(downsample_mode="max", act_fun="Swish", pad="zero"),
        dict(downsample_mode="lanczos2", act_fun="ELU", filter_size_down=[5, 3, 3], need1x1_up=False),
        dict(need_sigmoid=False, need_bias=False),
    ],
)
def test_skip_options_build_and_run(options):
    net = Skip(input_depth=2, num_channels_down=[8] * 3, num_channels_up=[8] * 3, num_channels_skip=[4] * 3, **options)
    assert net(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_align_corners_upsamples_as_pytorch_before_0_4():
    """net.align_corners=true: the bilinear x2 upsampling that the 2017 code got (corner pixels kept in place); the
    same weights give another output than with the default False."""
    small = dict(input_depth=2, num_channels_down=[8] * 2, num_channels_up=[8] * 2, num_channels_skip=[2] * 2)
    torch.manual_seed(0)
    old = Skip(**small, align_corners=True)
    new = Skip(**small)
    new.load_state_dict(old.state_dict())
    ups = [m for m in old.modules() if isinstance(m, torch.nn.Upsample)]
    assert ups and all(m.align_corners for m in ups)
    z = torch.rand(1, 2, 32, 32)
    assert not torch.allclose(old(z), new(z))
    # corners kept: a 2x2 ramp upsampled with align_corners=True keeps its corner values
    ramp = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    assert ups[0](ramp)[0, 0, [0, 0, -1, -1], [0, -1, 0, -1]].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(DIPError, match="net.align_corners='yes' is not valid"):
        Skip(**small, align_corners="yes")


def test_bad_net_settings_are_named():
    with pytest.raises(DIPError, match="same length"):
        Skip(num_channels_down=[8, 8], num_channels_up=[8], num_channels_skip=[0, 0])
    with pytest.raises(DIPError, match="upsample_mode"):
        Skip(num_channels_down=[8], num_channels_up=[8], num_channels_skip=[0], upsample_mode="cubic-ish")
    with pytest.raises(DIPError, match="filter_size_down has 2 entries"):
        Skip(num_channels_down=[8] * 3, num_channels_up=[8] * 3, num_channels_skip=[0] * 3, filter_size_down=[3, 3])


def test_inputs():
    g = torch.Generator().manual_seed(0)
    z = make_input("noise", 32, 16, 24, generator=g)
    assert z.shape == (1, 32, 16, 24) and 0 <= z.min() and z.max() <= 0.1
    assert torch.equal(z, make_input("noise", 32, 16, 24, generator=torch.Generator().manual_seed(0)))
    grid = make_input("meshgrid", 2, 8, 8)
    assert grid[0, 0, 0, -1] == 1 and grid[0, 1, -1, 0] == 1 and grid.min() == 0
    with pytest.raises(DIPError, match="input_depth=2"):
        make_input("meshgrid", 3, 8, 8)
