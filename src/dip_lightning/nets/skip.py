"""The reference "skip" encoder-decoder (Ulyanov et al.), with the reference's per-scale parameter names.

Per scale i (top to bottom), going down: conv(stride 2) -> BN -> act -> conv -> BN -> act.
Coming up: concat(skip_i, up(deeper)) -> BN -> conv -> BN -> act (-> 1x1 conv -> BN -> act).
A skip branch is conv(filter_skip_size) -> BN -> act with num_channels_skip[i] channels; 0 = no skip (hourglass).
"""

from __future__ import annotations

from typing import Annotated, Sequence

import torch
from torch import nn

from ..config.schema import Channels, Len, NonNegativeInt, PositiveInt
from ..errors import DIPError
from .base import Generator
from .common import act, bn, check_lists_match, conv, per_scale, upsample


class Concat(nn.Module):
    """Concatenate branch outputs along channels, centre-cropping to the smallest size (as the reference does)."""

    def __init__(self, *branches: nn.Module):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        h = min(o.shape[2] for o in outs)
        w = min(o.shape[3] for o in outs)
        if any(o.shape[2] != h or o.shape[3] != w for o in outs):
            outs = [
                o[
                    :,
                    :,
                    (o.shape[2] - h) // 2 : (o.shape[2] - h) // 2 + h,
                    (o.shape[3] - w) // 2 : (o.shape[3] - w) // 2 + w,
                ]
                for o in outs
            ]
        return torch.cat(outs, dim=1)


class Skip(Generator):
    def __init__(
        self,
        input_depth: PositiveInt = 32,
        output_channels: PositiveInt = 3,
        num_channels_down: Channels = (128, 128, 128, 128, 128),
        num_channels_up: Channels = (128, 128, 128, 128, 128),
        num_channels_skip: Annotated[Sequence[NonNegativeInt], Len(1)] = (4, 4, 4, 4, 4),
        filter_size_down: int | Sequence[int] = 3,
        filter_size_up: int | Sequence[int] = 3,
        filter_skip_size: int = 1,
        need_sigmoid: bool = True,
        need_bias: bool = True,
        pad: str = "reflection",
        upsample_mode: str | Sequence[str] = "bilinear",
        downsample_mode: str | Sequence[str] = "stride",
        act_fun: str = "LeakyReLU",
        need1x1_up: bool = True,
        trainable_downsampler: bool = False,
        align_corners: bool = False,
    ):
        super().__init__()
        n = check_lists_match(
            {
                "num_channels_down": num_channels_down,
                "num_channels_up": num_channels_up,
                "num_channels_skip": num_channels_skip,
            }
        )
        up_modes = per_scale(upsample_mode, n, "upsample_mode")
        down_modes = per_scale(downsample_mode, n, "downsample_mode")
        k_down = per_scale(filter_size_down, n, "filter_size_down")
        k_up = per_scale(filter_size_up, n, "filter_size_up")
        for name, given, sizes in (
            ("filter_size_down", filter_size_down, k_down),
            ("filter_size_up", filter_size_up, k_up),
            ("filter_skip_size", filter_skip_size, [filter_skip_size]),
        ):
            if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in sizes):
                shown = given if isinstance(given, (int, str)) else list(given)
                per = "" if name == "filter_skip_size" else ", or a list of them, one per scale"
                raise DIPError(
                    f"net.{name}={shown!r} is not valid; expected an odd kernel size >= 1 (1, 3, 5, 7){per}: an even "
                    "kernel has no centre pixel, so its padding cannot keep the size and the net's output would come "
                    "out smaller than the image."
                )
        self.size_multiple = 2**n
        # at the deepest scale (H / 2^n): reflection padding needs more pixels than the pad, and BatchNorm in
        # training mode more than one value per channel
        deepest_pad = max((k_down[-1] - 1) // 2, (k_up[-1] - 1) // 2)
        self._min_size = self.size_multiple * max(2, deepest_pad + 1 if pad == "reflection" else 1)
        self.input_depth, self.output_channels = input_depth, output_channels

        model = nn.Sequential()
        model_tmp = model
        depth = input_depth
        for i in range(n):
            deeper = nn.Sequential()
            skip = nn.Sequential()
            if num_channels_skip[i] != 0:
                model_tmp.add_module("concat", Concat(skip, deeper))
            else:
                model_tmp.add_module("deeper", deeper)
            model_tmp.add_module(
                "bn_in", bn(num_channels_skip[i] + (num_channels_up[i + 1] if i < n - 1 else num_channels_down[i]))
            )
            if num_channels_skip[i] != 0:
                skip.add_module("conv", conv(depth, num_channels_skip[i], filter_skip_size, bias=need_bias, pad=pad))
                skip.add_module("bn", bn(num_channels_skip[i]))
                skip.add_module("act", act(act_fun))

            deeper.add_module(
                "conv_down",
                conv(
                    depth,
                    num_channels_down[i],
                    k_down[i],
                    2,
                    bias=need_bias,
                    pad=pad,
                    downsample_mode=down_modes[i],
                    trainable_downsampler=trainable_downsampler,
                ),
            )
            deeper.add_module("bn_down", bn(num_channels_down[i]))
            deeper.add_module("act_down", act(act_fun))
            deeper.add_module(
                "conv", conv(num_channels_down[i], num_channels_down[i], k_down[i], bias=need_bias, pad=pad)
            )
            deeper.add_module("bn", bn(num_channels_down[i]))
            deeper.add_module("act", act(act_fun))

            deeper_main = nn.Sequential()
            if i == n - 1:
                k = num_channels_down[i]  # the deepest scale has nothing below it
            else:
                deeper.add_module("deeper_main", deeper_main)
                k = num_channels_up[i + 1]
            deeper.add_module("up", upsample(up_modes[i], align_corners))

            model_tmp.add_module(
                "conv_up", conv(num_channels_skip[i] + k, num_channels_up[i], k_up[i], bias=need_bias, pad=pad)
            )
            model_tmp.add_module("bn_up", bn(num_channels_up[i]))
            model_tmp.add_module("act_up", act(act_fun))
            if need1x1_up:
                model_tmp.add_module(
                    "conv_1x1", conv(num_channels_up[i], num_channels_up[i], 1, bias=need_bias, pad=pad)
                )
                model_tmp.add_module("bn_1x1", bn(num_channels_up[i]))
                model_tmp.add_module("act_1x1", act(act_fun))
            depth = num_channels_down[i]
            model_tmp = deeper_main

        model.add_module("conv_out", conv(num_channels_up[0], output_channels, 1, bias=need_bias, pad=pad))
        if need_sigmoid:
            model.add_module("sigmoid", nn.Sigmoid())
        self.model = model

    @property
    def min_size(self) -> int:
        return self._min_size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
