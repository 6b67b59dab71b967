"""Flash / no-flash: fit the no-flash photo (A = identity) with the flash photo itself as the input z."""

from __future__ import annotations

import torch

from ..data.datamodule import ImageData
from ..errors import DIPError
from ..nets.inputs import image_input
from ..operators.base import Identity
from .base import DIPTask


class FlashNoFlash(DIPTask):
    name = "flash_no_flash"

    def build_operator(self, data: ImageData) -> Identity:
        missing = [k for k in ("flash", "no_flash") if k not in data.extras]
        if missing:
            raise DIPError(
                f"flash_no_flash needs two photos of the same size: data.flash=<flash photo> and "
                f"data.no_flash=<no-flash photo>; missing: {', '.join('data.' + k for k in missing)}."
            )
        if data.observed is not None:
            raise DIPError("flash_no_flash reads the no-flash photo from data.no_flash; leave data.observed unset.")
        return Identity()

    def output_shape(self, data: ImageData) -> tuple[int, int, int]:
        if data.clean is None and data.observed is None and "no_flash" in data.extras:
            return tuple(data.extras["no_flash"].shape[1:])
        return super().output_shape(data)

    def prepare_observation(self, data: ImageData) -> torch.Tensor:
        return data.extras["no_flash"]  # the target; data.image, if given, is a ground truth for it

    def make_input(self, data: ImageData, shape, generator: torch.Generator) -> torch.Tensor:
        return image_input(data.extras["flash"], self.net.input_depth, f"data.flash {data.sources['flash']!r}")
