"""The Deep Decoder (Heckel and Hand, ICLR 2019): 1x1 convs, bilinear x2 upsampling, ReLU, BatchNorm; no 3x3 convs.

Per scale: 1x1 conv -> upsample x2 -> ReLU -> BN, then one more 1x1 conv -> ReLU -> BN at full size and a 1x1
conv to the image (+ sigmoid). Its input z is small: (num_channels[0], H / 2^n, W / 2^n) for n scales, so it
tells the task the input size through `input_size`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config.schema import Channels, PositiveInt
from ..errors import DIPError
from .base import Generator


class DeepDecoder(Generator):
    def __init__(
        self,
        output_channels: PositiveInt = 3,
        num_channels: Channels = (128, 128, 128, 128, 128),
        upsample_mode: str = "bilinear",
        need_sigmoid: bool = True,
        need_bias: bool = False,
    ):
        super().__init__()
        ch = list(num_channels)
        if not ch:
            raise DIPError("net.num_channels is empty; expected one channel count per scale, e.g. [64,64,64,64,64].")
        if upsample_mode not in ("bilinear", "nearest"):
            raise DIPError(f"net.upsample_mode={upsample_mode!r} is not known; expected 'bilinear' or 'nearest'.")
        self.size_multiple = 2 ** len(ch)
        self.input_depth, self.output_channels = ch[0], output_channels
        layers: list[nn.Module] = []
        widths = ch + [ch[-1]]
        for i in range(len(widths)):
            cout = widths[i + 1] if i + 1 < len(widths) else widths[-1]
            layers.append(nn.Conv2d(widths[i], cout, 1, bias=need_bias))
            if i < len(ch):
                layers.append(
                    nn.Upsample(
                        scale_factor=2,
                        mode=upsample_mode,
                        **({} if upsample_mode == "nearest" else {"align_corners": False}),
                    )
                )
            layers += [nn.ReLU(), nn.BatchNorm2d(cout)]
        layers.append(nn.Conv2d(widths[-1], output_channels, 1, bias=need_bias))
        if need_sigmoid:
            layers.append(nn.Sigmoid())
        self.model = nn.Sequential(*layers)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.size_multiple, width // self.size_multiple

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)
