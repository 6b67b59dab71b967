"""The noise level of an observation, estimated without ground truth (Donoho's wavelet MAD rule).

sigma = median(|HH|) / 0.6745 over the finest diagonal Haar band, per channel, then averaged: the rule of
scikit-image's `estimate_sigma` (which uses a Daubechies wavelet). It assumes independent Gaussian noise: on
spatially correlated noise (a camera's JPEG) it reads far too low (0.5/255 where the residual std is 2.4-7.2/255
was measured on camera crops), so rules that use it report the estimate beside their choice.
"""
from __future__ import annotations

import torch


def estimate_sigma(image: torch.Tensor, known: torch.Tensor | None = None) -> float:
    """Noise std of `image` (N, C, H, W) in [0, 1] units. `known`: a mask (1 = observed pixel) of the same height
    and width; only 2x2 blocks whose four pixels are observed count (an inpainting input's holes are not noise)."""
    x = image.detach().float()[..., : image.shape[-2] // 2 * 2, : image.shape[-1] // 2 * 2]
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    hh = (a - b - c + d) / 2  # orthonormal Haar: the noise keeps its std in this band
    use = None
    if known is not None:
        k = known.detach().float()[..., : x.shape[-2], : x.shape[-1]].expand_as(x)
        use = (k[..., 0::2, 0::2] * k[..., 0::2, 1::2] * k[..., 1::2, 0::2] * k[..., 1::2, 1::2]) > 0.5
    sigmas = []
    for ch in range(hh.shape[1]):
        values = hh[:, ch].abs()
        values = values[use[:, ch]] if use is not None else values.flatten()
        if values.numel():
            sigmas.append(float(values.median()) / 0.6745)
    return sum(sigmas) / len(sigmas) if sigmas else 0.0
