"""Fixed network inputs z: uniform/normal noise x 0.1, a meshgrid, or a given image (flash/no-flash)."""

from __future__ import annotations

import torch

from ..errors import DIPError


def make_input(
    kind: str, channels: int, height: int, width: int, scale: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Return z of shape (1, channels, height, width), as the reference's get_noise does."""
    if kind in ("noise", "uniform"):
        return torch.rand(1, channels, height, width, generator=generator) * scale
    if kind == "normal":
        return torch.randn(1, channels, height, width, generator=generator) * scale
    if kind == "meshgrid":
        if channels != 2:
            raise DIPError(
                f"input 'meshgrid' has 2 channels (x and y), but net.input_depth={channels}; set net.input_depth=2."
            )
        ys = torch.arange(height, dtype=torch.float32) / max(height - 1, 1)
        xs = torch.arange(width, dtype=torch.float32) / max(width - 1, 1)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x, grid_y])[None]
    raise DIPError(f"task.input_type={kind!r} is not known; expected 'noise' (uniform), 'normal' or 'meshgrid'.")


def image_input(image: torch.Tensor, channels: int, source: str = "the input image") -> torch.Tensor:
    """z = a given image (flash/no-flash uses the flash photo); its channels must match the net's input_depth."""
    if image.shape[1] != channels:
        raise DIPError(
            f"{source} has {image.shape[1]} channels but net.input_depth={channels}; "
            f"set net.input_depth={image.shape[1]}."
        )
    return image.clone()
