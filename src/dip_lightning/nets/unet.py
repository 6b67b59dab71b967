"""U-Net (the reference's `UNet`): per scale two 3x3 conv-norm-act, max-pool down, deconv/upsample up, concat.

As the reference: the up path concatenates [upsampled, skip] and its two convs have no normalisation
(`merge_norm=false`; 2,164,899 parameters at the defaults, the reference's count)."""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import Channels, PositiveInt
from ..errors import DIPError
from .base import Generator
from .common import act, conv


def norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise DIPError(f"net.norm={kind!r} is not known; expected 'batch', 'instance' or 'none'.")


def double_conv(cin: int, cout: int, pad: str, norm_kind: str, act_fun: str, bias: bool) -> nn.Sequential:
    return nn.Sequential(
        conv(cin, cout, 3, bias=bias, pad=pad),
        norm(norm_kind, cout),
        act(act_fun),
        conv(cout, cout, 3, bias=bias, pad=pad),
        norm(norm_kind, cout),
        act(act_fun),
    )


class UNet(Generator):
    def __init__(
        self,
        input_depth: PositiveInt = 32,
        output_channels: PositiveInt = 3,
        num_channels: Channels = (16, 32, 64, 128, 256),
        upsample_mode: str = "bilinear",
        pad: str = "reflection",
        norm: str = "batch",
        act_fun: str = "ReLU",
        need_sigmoid: bool = True,
        need_bias: bool = True,
        merge_norm: bool = False,
    ):
        super().__init__()
        if upsample_mode not in ("deconv", "nearest", "bilinear"):
            raise DIPError(
                f"net.upsample_mode={upsample_mode!r} is not known for unet; expected 'deconv', "
                "'nearest' or 'bilinear'."
            )
        ch = list(num_channels)
        self.input_depth, self.output_channels, self.size_multiple = input_depth, output_channels, 2 ** (len(ch) - 1)
        self.start = double_conv(input_depth, ch[0], pad, norm, act_fun, need_bias)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(ch[i], ch[i + 1], pad, norm, act_fun, need_bias))
            for i in range(len(ch) - 1)
        )
        self.ups, self.merges = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            if upsample_mode == "deconv":
                self.ups.append(nn.ConvTranspose2d(ch[i + 1], ch[i], 4, stride=2, padding=1))
            else:
                self.ups.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode=upsample_mode),
                        conv(ch[i + 1], ch[i], 3, bias=need_bias, pad=pad),
                    )
                )
            self.merges.append(double_conv(2 * ch[i], ch[i], pad, norm if merge_norm else "none", act_fun, need_bias))
        # the deepest scale (H / size_multiple) needs 2 pixels for reflection padding and for a norm in training mode
        self._min_size = self.size_multiple * (1 if pad == "zero" and norm == "none" else 2)
        self.final = nn.Sequential(
            nn.Conv2d(ch[0], output_channels, 1, bias=need_bias), nn.Sigmoid() if need_sigmoid else nn.Identity()
        )

    @property
    def min_size(self) -> int:
        return self._min_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.start(z)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.ups, self.merges):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.final(x)
