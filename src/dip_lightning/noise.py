"""The noise level of an observation, estimated without ground truth (Donoho's wavelet MAD rule, two scales).

White noise: sigma = median(|HH|) / 0.6745 over the finest diagonal Haar band, per channel, then averaged (the rule
of scikit-image's `estimate_sigma`, which uses a Daubechies wavelet). It assumes noise independent from pixel to
pixel. Spatially correlated noise (a camera's JPEG, demosaicking, a blur after the noise) has little energy in the
finest band, so that estimate reads far too low (0.5/255 where the residual std was 2.4-7.2/255 on camera crops;
4-9/255 for 15/255 noise blurred by a 1 px Gaussian in bench_early_stopping.py). White noise has the same std in
every band of an orthonormal wavelet, so the next scale's HH band reads about the same: on denoise9 at sigma=25 the
ratio coarse/fine was 1.00-1.19, on the blurred noise 2.3-3.8. Above CORRELATED_RATIO the noise counts as
correlated and its per-pixel std comes from the energy of every band (Parseval: the Haar transform is orthonormal)
over two levels: sigma^2 = 3/4 m1^2 + 1/4 m2^2, with m_j the mean MAD std of level j's three detail bands and the
rest of the spectrum taken to hold level 2's (the blurred noise: 13-19/255 for 15/255).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CORRELATED_RATIO = 1.5


@dataclass
class NoiseEstimate:
    sigma: float  # the estimate to use, [0, 1] units
    fine: float  # finest scale's HH estimate
    coarse: float  # the next scale's HH estimate
    correlated: bool  # coarse / fine > CORRELATED_RATIO


def _blocks(x: torch.Tensor):
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def _mad_sigma(hh: torch.Tensor, use: torch.Tensor | None) -> float:
    sigmas = []
    for ch in range(hh.shape[1]):
        values = hh[:, ch].abs()
        values = values[use[:, ch]] if use is not None else values.flatten()
        if values.numel():
            sigmas.append(float(values.median()) / 0.6745)
    return sum(sigmas) / len(sigmas) if sigmas else 0.0


def _haar(x: torch.Tensor, known: torch.Tensor | None):
    """(LL, [LH, HL, HH], known blocks) of one orthonormal Haar step: white noise keeps its std in every band."""
    a, b, c, d = _blocks(x)
    use = None
    if known is not None:
        ka, kb, kc, kd = _blocks(known.expand(x.shape[0], x.shape[1], *known.shape[-2:]))
        use = (ka * kb * kc * kd) > 0.5
    return (a + b + c + d) / 2, [(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], use


def estimate_noise(image: torch.Tensor, known: torch.Tensor | None = None) -> NoiseEstimate:
    """Noise std of `image` (N, C, H, W) in [0, 1] units. `known`: a mask (1 = observed pixel) of the same height
    and width; only blocks whose pixels are all observed count (an inpainting input's holes are not noise)."""
    x = image.detach().float()
    k = known.detach().float()[..., : x.shape[-2], : x.shape[-1]] if known is not None else None
    ll, details, use = _haar(x, k)
    _, details2, use2 = _haar(ll, use.float() if use is not None else None)
    fine, coarse = _mad_sigma(details[2], use), _mad_sigma(details2[2], use2)
    if not (fine > 0 and coarse / fine > CORRELATED_RATIO):
        return NoiseEstimate(fine, fine, coarse, False)
    m1 = sum(_mad_sigma(band, use) for band in details) / 3
    m2 = sum(_mad_sigma(band, use2) for band in details2) / 3
    return NoiseEstimate((0.75 * m1**2 + 0.25 * m2**2) ** 0.5, fine, coarse, True)


def estimate_sigma(image: torch.Tensor, known: torch.Tensor | None = None) -> float:
    """The finest-scale estimate alone (scikit-image's rule), [0, 1] units."""
    return estimate_noise(image, known).fine
