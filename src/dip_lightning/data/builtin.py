"""Built-in example images: scikit-image's sample photos that ship with the package (no download)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DIPError
from .io import array_to_tensor

BUILTIN_IMAGES = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "cat",
    "moon",
    "page",
    "text",
    "immunohistochemistry",
    "hubble_deep_field",
    "coins",
    "clock",
    "grass",
    "gravel",
    "brick",
    "colorwheel",
)


def is_builtin(name: str) -> bool:
    return name in BUILTIN_IMAGES


def load_builtin(name: str) -> torch.Tensor:
    if name not in BUILTIN_IMAGES:
        raise DIPError(
            f"{name!r} is neither an existing file nor a built-in image; built-in images are: "
            f"{', '.join(BUILTIN_IMAGES)}."
        )
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    return array_to_tensor(array)
