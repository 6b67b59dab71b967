"""Building blocks of the reference generators: padded conv, norm, activation, downsamplers."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import DIPError

ACTIVATIONS = {
    "LeakyReLU": lambda: nn.LeakyReLU(0.2, inplace=True),
    "ReLU": lambda: nn.ReLU(inplace=True),
    "Swish": nn.SiLU,
    "ELU": nn.ELU,
    "none": nn.Identity,
}


def act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise DIPError(f"net.act_fun={name!r} is not known; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def conv(
    in_ch: int,
    out_ch: int,
    kernel_size: int,
    stride: int = 1,
    bias: bool = True,
    pad: str = "reflection",
    downsample_mode: str = "stride",
    trainable_downsampler: bool = False,
) -> nn.Sequential:
    """Conv with 'same' padding; a stride>1 is replaced by an explicit downsampler unless mode is 'stride'."""
    if pad not in ("reflection", "zero"):
        raise DIPError(f"net.pad={pad!r} is not known; expected 'reflection' or 'zero'.")
    downsampler = None
    if stride != 1 and downsample_mode != "stride":
        if downsample_mode == "avg":
            downsampler = nn.AvgPool2d(stride, stride)
        elif downsample_mode == "max":
            downsampler = nn.MaxPool2d(stride, stride)
        elif downsample_mode in ("lanczos2", "lanczos3"):
            from ..operators.resampling import LanczosDownsampler

            downsampler = LanczosDownsampler(
                out_ch, stride, kernel=downsample_mode, preserve_size=True, trainable=trainable_downsampler
            )
        else:
            raise DIPError(
                f"net.downsample_mode={downsample_mode!r} is not known; "
                "expected one of 'stride', 'avg', 'max', 'lanczos2', 'lanczos3'."
            )
        stride = 1
    to_pad = (kernel_size - 1) // 2
    layers: list[nn.Module] = []
    if pad == "reflection" and to_pad > 0:
        layers.append(nn.ReflectionPad2d(to_pad))
        to_pad = 0
    layers.append(nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=to_pad, bias=bias))
    if downsampler is not None:
        layers.append(downsampler)
    return nn.Sequential(*layers)


def per_scale(value, n_scales: int, name: str) -> list:
    """Expand a scalar to a per-scale list, or check a list has one entry per scale."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        values = list(value)
        if len(values) != n_scales:
            raise DIPError(
                f"net.{name} has {len(values)} entries but the net has {n_scales} scales "
                f"(len(num_channels_down)); give one value per scale or a single value."
            )
        return values
    return [value] * n_scales


def check_lists_match(lists: dict[str, Sequence]) -> int:
    lengths = {k: len(v) for k, v in lists.items()}
    if len(set(lengths.values())) != 1:
        raise DIPError(f"The per-scale channel lists must have the same length; got {lengths}.")
    return next(iter(lengths.values()))


def upsample(mode: str, align_corners: bool = False) -> nn.Upsample:
    """x2 upsampling. `align_corners=True` is bilinear (bicubic) interpolation as PyTorch did it before 0.4, when
    the paper's code was written (its nn.Upsample had no such argument; 0.4 changed the default to False)."""
    if mode not in ("nearest", "bilinear", "bicubic"):
        raise DIPError(f"net.upsample_mode={mode!r} is not known; expected 'nearest', 'bilinear' or 'bicubic'.")
    if not isinstance(align_corners, bool):
        raise DIPError(f"net.align_corners={align_corners!r} is not valid; expected true or false.")
    if mode == "nearest":
        return nn.Upsample(scale_factor=2, mode="nearest")
    return nn.Upsample(scale_factor=2, mode=mode, align_corners=align_corners)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
