"""ResNet generator (the reference's `ResNet`): residual blocks at full resolution, no down/upsampling.

As the reference: the first and last convs pad with `pad`, the blocks and the conv after them with zeros
(`block_pad=zero`; `block_pad=reflection` pads them with `pad` too)."""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import NonNegativeInt, PositiveInt
from ..errors import DIPError
from .base import Generator
from .common import act, conv


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, act_fun: str, pad: str):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, 3, pad=pad, bias=False),
            nn.BatchNorm2d(channels),
            act(act_fun),
            conv(channels, channels, 3, pad=pad, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet(Generator):
    size_multiple = 1
    min_size = 2  # BatchNorm in training mode needs more than one value per channel (reflection padding 2 pixels)

    def __init__(
        self,
        input_depth: PositiveInt = 32,
        output_channels: PositiveInt = 3,
        num_blocks: NonNegativeInt = 8,
        num_channels: PositiveInt = 32,
        act_fun: str = "LeakyReLU",
        pad: str = "reflection",
        need_sigmoid: bool = True,
        block_pad: str = "zero",
    ):
        super().__init__()
        self.input_depth, self.output_channels = input_depth, output_channels
        if block_pad not in ("zero", "reflection"):
            raise DIPError(f"net.block_pad={block_pad!r} is not known; expected zero (the reference's) or reflection.")
        inner = block_pad
        self.model = nn.Sequential(
            conv(input_depth, num_channels, 3, pad=pad),
            act(act_fun),
            *[ResidualBlock(num_channels, act_fun, inner) for _ in range(num_blocks)],
            conv(num_channels, num_channels, 3, pad=inner),
            nn.BatchNorm2d(num_channels),
            conv(num_channels, output_channels, 3, pad=pad),
            nn.Sigmoid() if need_sigmoid else nn.Identity(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
