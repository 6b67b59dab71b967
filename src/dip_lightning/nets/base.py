"""What a DIP generator must provide: the one place the task, the data module, packing and cuda_graph read it from.

A net is a `Generator` (an nn.Module) with four numbers and one method, all read from here, never probed:

- `input_depth`: the channels of z, its input (the task draws z with that many channels).
- `output_channels`: the channels of its output, which must be the image's. Its constructor must take
  `output_channels` as an argument: a config's `output_channels: null` means "the image's", and dip-run builds the
  net again with `output_channels=1` for a gray image (same seed).
- `size_multiple`: what the output's H and W must be multiples of (2^scales for a net that halves its input n
  times); images are cropped to it when read. 1: no constraint.
- `min_size`: the smallest H and W it can be trained at (at its deepest scale, reflection padding needs more pixels
  than the pad, and BatchNorm in training mode more than one value per channel); by default `size_multiple`.
- `input_size(h, w)`: the (height, width) of z for an output of h x w; by default (h, w). The Deep Decoder's z is
  smaller than its output.

What it must survive, because of how runs are trained:

- `copy.deepcopy(net).to("meta")`, then `torch.func.functional_call` with weights of its own and `vmap` over runs:
  a pack trains K copies as one (loop/stacked.py). So the forward reads its weights only through its registered
  parameters and buffers, keeps no tensor state between calls (nothing cached, no Python-side counters that change
  the computation), and does nothing data-dependent on the host (no `.item()`, no `if tensor:`).
- one fixed input shape for a whole run: `cuda_graph=true` captures the iteration once and replays it, so the forward
  must take the same path every call (shapes that depend only on the input's shape).
- BatchNorm stays in training mode during a run (batch statistics, as the reference); its running statistics are
  never used.

Registering the net: a config file conf/net/<name>.yaml with `_target_: <module>.<Class>` and its arguments
(`output_channels: null`); tests/test_contracts.py then checks it against everything above.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DIPError


class Generator(nn.Module):
    """A DIP generator: maps z, shaped (1, input_depth, *input_size(H, W)), to an image (1, output_channels, H, W).

    Subclasses call `super().__init__()` first, then set `input_depth` and `output_channels` (and `size_multiple`
    where it is not 1, as an attribute or a class attribute), and define `forward`. See this module's docstring for
    what a forward must survive (deepcopy to the meta device, vmap, a captured CUDA graph).
    """

    #: the channels of z
    input_depth: int
    #: the channels of the output (the image's: 3 for colour, 1 for gray); a constructor argument too
    output_channels: int
    #: H and W of the output must be multiples of it (2^scales); 1: no constraint
    size_multiple: int = 1

    @property
    def min_size(self) -> int:
        """The smallest H and W the net can be trained at (BatchNorm in training mode, as DIP runs it); by default
        `size_multiple`."""
        return self.size_multiple

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of z for an output of `height` x `width` pixels; by default the output's."""
        return height, width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


CONTRACT = ("input_depth", "output_channels", "size_multiple", "min_size")


def check_generator(net: nn.Module, what: str = "the net") -> Generator:
    """`net` if it keeps the Generator contract (its class and typed attributes); else a DIPError saying what
    is missing, before anything is built on it."""
    if not isinstance(net, Generator):
        raise DIPError(
            f"{what} is a {type(net).__module__}.{type(net).__qualname__}, not a dip_lightning.nets.base.Generator: "
            "a DIP net subclasses Generator and sets input_depth, output_channels and size_multiple "
            "(dip_lightning/nets/base.py says what each means)."
        )
    for name in CONTRACT:
        try:
            value = getattr(net, name)
        except AttributeError:
            value = None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DIPError(
                f"{what} ({type(net).__qualname__}) has {name}={value!r}; a Generator sets {name} to a whole number "
                ">= 1 (dip_lightning/nets/base.py)."
            )
    return net
