"""Degradations whose observation model is not linear: JPEG compression and CNN features.

JPEG: the observation is made by compressing (PIL, at a quality); the data term is the identity, as the
reference's JPEG artifact removal fits the network to the JPEG itself. Features: A x = phi(x) at one CNN layer.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..errors import DIPError
from .base import Operator


def check_quality(quality) -> int:
    if (
        isinstance(quality, bool)
        or not isinstance(quality, (int, float))
        or quality != int(quality)
        or not 1 <= quality <= 100
    ):
        raise DIPError(
            f"task.quality={quality!r} is not valid; expected a JPEG quality, an integer 1 <= quality "
            "<= 100 (lower is stronger compression)."
        )
    return int(quality)


class JPEG(Operator):
    """A x = x; `simulate` compresses with PIL at `quality` (deterministic: the generator is not needed)."""

    has_adjoint = True

    def __init__(self, quality: int = 10):
        super().__init__(0.0, clip=True)
        self.quality = check_quality(quality)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from ..data.io import array_to_tensor, to_uint8

        buf = io.BytesIO()
        Image.fromarray(to_uint8(x)).save(buf, format="JPEG", quality=self.quality)
        buf.seek(0)
        with Image.open(buf) as img:
            return array_to_tensor(np.asarray(img)).to(x.device)


class Features(Operator):
    """A x = the activations of `extractor` (a FeatureExtractor) for x; the loss compares them by MSE.

    `loss` returns x itself as its second value, so the loop's "PSNR vs observation" is the PSNR of the
    output against the target image, not a meaningless PSNR of activations. The target's features are
    computed once (the target never changes).
    """

    linear = False

    def __init__(self, extractor: torch.nn.Module):
        super().__init__(0.0, clip=False)
        self.extractor = extractor
        self._target: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x.clone()  # the observation is the image whose features are matched

    def target_features(self, y: torch.Tensor) -> torch.Tensor:
        if self._target is None or self._target[0] is not y:
            with torch.no_grad():
                self._target = (y, self.extractor(y))
        return self._target[1]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nn.functional.mse_loss(self.forward(x), self.target_features(y)), x
