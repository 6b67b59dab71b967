"""Classical baselines that DIP is compared with in the paper's tables, each timed.

Images are numpy arrays in [0, 1]: (H, W) grayscale or (H, W, 3) colour (float; uint8 is accepted and scaled).
Every function returns a `BaselineResult` (name, image, seconds) so that a result table can show quality and cost
side by side.

- denoising: colour/grayscale BM3D (the `bm3d` package, `pip install -e '.[baselines]'`) and scikit-image's
  non-local means (with the known sigma or an estimate of it);
- super-resolution: bicubic and nearest upsampling with PIL (through 8 bits, as the reference's scripts do), and
  `make_lr`, the paper's LR image (PIL's antialiased Lanczos resize of the HR image, 8-bit);
- inpainting: scikit-image's biharmonic inpainting of the missing pixels (a simple, training-free, honest
  baseline; the paper's own comparison, Papyan et al.'s convolutional sparse coding, has no maintained package).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import DIPError


@dataclass
class BaselineResult:
    name: str
    image: np.ndarray  # (H, W) or (H, W, C) float in [0, 1]
    seconds: float


def as_float_image(img: np.ndarray, what: str = "image") -> np.ndarray:
    """(H, W) or (H, W, C) float64 in [0, 1]; a (1, C, H, W) or (C, H, W) torch-layout array is transposed."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise DIPError(f"{what} has shape {np.asarray(img).shape}; expected (H, W) grayscale or (H, W, 3) colour.")
    return arr


def _timed(name: str, fn, *args, **kwargs) -> BaselineResult:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    return BaselineResult(name, np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0), seconds)


def _check_sigma(sigma: float | None) -> None:
    if sigma is not None and (not np.isfinite(sigma) or not 0 < sigma <= 255):
        raise DIPError(f"sigma={sigma!r} is not valid; expected the noise std in 0-255 units, 0 < sigma <= 255.")


# ------------------------------------------------------------------------------------------------------ denoising
def bm3d_denoise(noisy: np.ndarray, sigma: float) -> BaselineResult:
    """BM3D with the known noise std `sigma` (0-255 units): CBM3D (opponent colour space) for colour images."""
    _check_sigma(sigma)
    if sigma is None:
        raise DIPError("BM3D needs the noise level: sigma=<std in 0-255 units> (25 in the paper's table).")
    try:
        import bm3d
    except ImportError:
        raise DIPError("The BM3D baseline needs the `bm3d` package: pip install -e '.[baselines]'.") from None
    z = as_float_image(noisy, "noisy image")
    s = sigma / 255.0
    if z.ndim == 3:
        return _timed("BM3D", bm3d.bm3d_rgb, z, s)
    return _timed("BM3D", bm3d.bm3d, z, s)


def estimate_sigma(noisy: np.ndarray) -> float:
    """Noise std in 0-255 units, estimated from the image (scikit-image's wavelet estimator, channel average)."""
    from skimage.restoration import estimate_sigma as est

    z = as_float_image(noisy, "noisy image")
    return float(est(z, channel_axis=-1 if z.ndim == 3 else None, average_sigmas=True)) * 255.0


def nlm_denoise(
    noisy: np.ndarray, sigma: float | None = None, h_factor: float = 0.8, patch_size: int = 5, patch_distance: int = 6
) -> BaselineResult:
    """scikit-image non-local means, h = h_factor * sigma, the noise std known (0-255 units) or estimated (None).

    Estimating sigma is part of the timed work. The defaults are scikit-image's documented recipe.
    """
    from skimage.restoration import denoise_nl_means

    _check_sigma(sigma)
    z = as_float_image(noisy, "noisy image")

    def run() -> np.ndarray:
        s = (sigma if sigma is not None else estimate_sigma(z)) / 255.0
        return denoise_nl_means(
            z,
            h=h_factor * s,
            sigma=s,
            fast_mode=True,
            patch_size=patch_size,
            patch_distance=patch_distance,
            channel_axis=-1 if z.ndim == 3 else None,
        )

    name = "NLM" + (" (sigma known)" if sigma is not None else " (sigma estimated)")
    return _timed(name, run)


# -------------------------------------------------------------------------------------------- super-resolution
_PIL_FILTERS = {"bicubic": "BICUBIC", "nearest": "NEAREST", "bilinear": "BILINEAR", "lanczos": "LANCZOS"}


def _pil_resize(img: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Resize through 8-bit PIL to size=(width, height), as the reference's SR scripts do."""
    from PIL import Image

    if method not in _PIL_FILTERS:
        raise DIPError(f"resize method {method!r} is not known; expected one of {', '.join(_PIL_FILTERS)}.")
    arr = as_float_image(img)
    u8 = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    out = Image.fromarray(u8).resize(size, getattr(Image, _PIL_FILTERS[method]))
    return np.asarray(out, dtype=np.float64) / 255.0


def _check_factor(factor: int) -> int:
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise DIPError(f"factor={factor!r} is not valid; expected a positive integer (4 or 8 in the paper).")
    return int(factor)


def make_lr(hr: np.ndarray, factor: int) -> np.ndarray:
    """The paper's LR image: HR resized by 1/factor with PIL's antialiased Lanczos filter, 8-bit."""
    factor = _check_factor(factor)
    hr = as_float_image(hr, "HR image")
    h, w = hr.shape[:2]
    if h % factor or w % factor:
        raise DIPError(f"HR image is {w}x{h}, not a multiple of factor {factor}; crop it first.")
    return _pil_resize(hr, (w // factor, h // factor), "lanczos")


def upsample(lr: np.ndarray, factor: int, method: str = "bicubic") -> BaselineResult:
    """Bicubic (or nearest, bilinear, lanczos) upsampling of the LR image by `factor` with PIL."""
    factor = _check_factor(factor)
    lr = as_float_image(lr, "LR image")
    h, w = lr.shape[:2]
    return _timed(method.capitalize(), _pil_resize, lr, (w * factor, h * factor), method)


# --------------------------------------------------------------------------------------------------- inpainting
def mask_from_input(observed: np.ndarray) -> np.ndarray:
    """The paper's inputs mark missing pixels with 0: known = observed != 0 (in any channel)."""
    arr = as_float_image(observed, "observed image")
    return arr.any(axis=-1) if arr.ndim == 3 else arr != 0


def biharmonic_inpaint(observed: np.ndarray, known: np.ndarray | None = None) -> BaselineResult:
    """scikit-image biharmonic inpainting of the pixels where `known` is False (default: observed == 0)."""
    from skimage.restoration import inpaint_biharmonic

    arr = as_float_image(observed, "observed image")
    known = mask_from_input(arr) if known is None else np.asarray(known, dtype=bool)
    if known.ndim == 3:
        known = known.any(axis=-1)
    if known.shape != arr.shape[:2]:
        raise DIPError(f"mask shape {known.shape} does not match the image {arr.shape[:2]}; expected the same H, W.")
    if known.all():
        return BaselineResult("Biharmonic", arr.copy(), 0.0)
    return _timed("Biharmonic", inpaint_biharmonic, arr, ~known, channel_axis=-1 if arr.ndim == 3 else None)


# ---------------------------------------------------------------------------------------------------- scoring
def psnr(x: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB, data_range=1, all channels (the framework's convention, dip_lightning.metrics.psnr)."""
    x, target = as_float_image(x), as_float_image(target)
    if x.shape != target.shape:
        raise DIPError(f"PSNR of images of different shapes {x.shape} and {target.shape}.")
    mse = float(np.mean((np.clip(x, 0, 1) - target) ** 2))
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def psnr_y_shaved(x: np.ndarray, target: np.ndarray, border: int) -> float:
    """The paper's SR score on numpy images: Y of YCbCr in studio range, `border` pixels shaved on every side."""
    import torch

    from .metrics import psnr_y_shaved as score

    def t(a: np.ndarray) -> torch.Tensor:
        a = as_float_image(a)
        a = a[..., None] if a.ndim == 2 else a
        return torch.from_numpy(a.transpose(2, 0, 1)[None].copy()).double()

    return float(score(t(x), t(target), border))
