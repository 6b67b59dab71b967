"""PSNR (and SSIM) conventions of the paper: float images in [0, 1], all channels, data_range=1.

`psnr` is the fast on-device version used inside the DIP loop (no host sync); `psnr_y_shaved` is the paper's
super-resolution score (Y of YCbCr in studio range, a border shaved). Tests check both against torchmetrics.
"""

from __future__ import annotations

import torch


def psnr(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB with data_range=1 after clamping x to [0, 1]; a 0-d tensor on x's device."""
    mse = (x.clamp(0, 1) - target).pow(2).mean()
    return -10.0 * torch.log10(mse)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Y channel of YCbCr in studio range (16/255..235/255), as OpenCV/Matlab's rgb2ycbcr; img (..., 3, H, W)."""
    if img.shape[-3] == 1:
        return img
    r, g, b = img[..., 0, :, :], img[..., 1, :, :], img[..., 2, :, :]
    y = (65.481 * r + 128.553 * g + 24.966 * b + 16.0) / 255.0
    return y.unsqueeze(-3)


def shave(img: torch.Tensor, border: int) -> torch.Tensor:
    if border <= 0:
        return img
    return img[..., border:-border, border:-border]


def psnr_y_shaved(x: torch.Tensor, target: torch.Tensor, border: int) -> torch.Tensor:
    """The paper's SR score: PSNR on Y (studio range) with `border` pixels shaved on every side."""
    return psnr(shave(rgb_to_y(x.clamp(0, 1)), border), shave(rgb_to_y(target), border))


def reference_script_view(img: torch.Tensor) -> torch.Tensor:
    """What the reference's super-resolution_eval_script.py scores: the image as the uint8 PNG the notebook saved
    (truncated, not rounded), grey as three equal channels (so Y is in studio range too), 4 pixels shaved at the
    top and left and 5 at the bottom and right (its `t[0] + 4 : t[-1] - 4` with t[-1] the last row)."""
    img = torch.floor(img.clamp(0, 1) * 255) / 255
    if img.shape[-3] == 1:
        img = img.expand(*img.shape[:-3], 3, *img.shape[-2:])
    return rgb_to_y(img)[..., 4:-5, 4:-5]


CONVENTIONS = "rgb, y_shaved:<border> or reference_script"


def score(x: torch.Tensor, target: torch.Tensor, convention: str = "rgb", metric="psnr") -> torch.Tensor:
    """PSNR (or SSIM, or any `Metric`) of x against target in a named convention: rgb (all channels),
    y_shaved:<border> (Y in studio range, border shaved on every side: the project's SR default) or reference_script
    (the reference's SR script)."""
    measure = psnr if metric == "psnr" else ssim if metric == "ssim" else metric
    if convention == "rgb":
        return measure(x, target)
    if convention == "reference_script":
        return measure(reference_script_view(x), reference_script_view(target))
    kind, _, border = convention.partition(":")
    if kind == "y_shaved" and border.isdigit():
        return measure(shave(rgb_to_y(x.clamp(0, 1)), int(border)), shave(rgb_to_y(target), int(border)))
    from .errors import DIPError

    raise DIPError(f"PSNR convention {convention!r} is not known; expected {CONVENTIONS}.")


def ssim(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (torchmetrics: Gaussian window 11, sigma 1.5, data_range=1) after clamping x to [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(x.clamp(0, 1).float(), target.float(), data_range=1.0)


class Metric:
    """A full-reference score that metrics.json reports beside PSNR: `metrics: [psnr, <name>]` builds it from
    conf/metric/<name>.yaml (or a metric/<name>.yaml of the user's config folder), and a run writes <name>_observed,
    <name>_final, <name>_best and <name>_stop (an ensemble: <name>_ensemble) when it has a ground truth.

    `__call__(x, target)` gets a result and the ground truth as (1, C, H, W) float tensors on one device, in the
    task's view of them (super-resolution: the Y channel, its border shaved: `score`); x may lie outside [0, 1]
    (clamp it where the score needs that). It returns a number or a 0-d tensor, and runs after the loop, a few
    times per run: it may read the host."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor | float:
        raise NotImplementedError


class SSIM(Metric):
    """SSIM as `ssim` measures it (conf/metric/ssim.yaml)."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ssim(x, target)
