"""Classical baselines that DIP is compared with in the paper's tables, each timed.

Images are numpy arrays in [0, 1]: (H, W) grayscale or (H, W, 3) colour (float; uint8 is accepted and scaled).
Every function returns a `BaselineResult` (name, image, seconds) so that a result table can show quality and cost
side by side.

- denoising: colour/grayscale BM3D (the `bm3d` package, `pip install -e '.[baselines]'`), scikit-image's
  non-local means (with the known sigma or an estimate of it), and ZS-N2N (Mansour and Heckel, "Zero-Shot
  Noise2Noise", CVPR 2023), a zero-shot learned denoiser like DIP: a two-layer conv net fitted to the one noisy
  image alone (no training data, no noise level), in PyTorch, on the CPU or a given device;
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


ZS_N2N_CHANNELS = 48  # the paper's default width


def _zs_n2n_check(noisy: np.ndarray, iterations: int, lr: float, seed: int, threads: int | None) -> np.ndarray:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise DIPError(f"iterations={iterations!r} is not valid; expected a whole number >= 1 (the paper: 2000).")
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.number)) or not (np.isfinite(lr) and lr > 0):
        raise DIPError(f"lr={lr!r} is not valid; expected a finite learning rate > 0 (the paper: 0.001).")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DIPError(f"seed={seed!r} is not valid; expected a whole number.")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise DIPError(f"threads={threads!r} is not valid; expected None (leave torch's setting) or a count >= 1.")
    z = as_float_image(noisy, "noisy image")
    if min(z.shape[:2]) < 2:
        raise DIPError(
            f"noisy image is {z.shape[1]}x{z.shape[0]}; ZS-N2N splits it into 2x2 blocks, so it needs at least 2x2 "
            "pixels."
        )
    if not np.isfinite(z).all():
        raise DIPError("noisy image has NaN or infinite pixels; expected finite values in [0, 1].")
    return z


def _torch_device(device):
    import torch

    if device is None:
        return torch.device("cpu")
    name = "cuda" if str(device) == "gpu" else device
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DIPError(f"device={device!r} is not valid; expected cpu, gpu, cuda, cuda:N or a torch.device.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DIPError(f"device={device!r} asks for CUDA, which this torch build or machine does not have; use cpu.")
    return dev


def zs_n2n_denoise(
    noisy: np.ndarray,
    iterations: int = 2000,
    lr: float = 1e-3,
    seed: int = 0,
    device=None,
    threads: int | None = None,
) -> BaselineResult:
    """ZS-N2N: fit a small conv net to the noisy image alone and return the image minus its noise estimate.

    Two fixed stride-2 filters, [[0, .5], [.5, 0]] and [[.5, 0], [0, .5]] on each channel, split the image y into
    two half-size images D1(y), D2(y) whose noise is independent; the net (conv3x3 C->48, LeakyReLU 0.2, conv3x3
    48->48, LeakyReLU, conv1x1 48->C) predicts the noise, so the denoiser is f(x) = x - net(x). Loss: the residual
    term (MSE(D1, f(D2)) + MSE(D2, f(D1))) / 2 (Noise2Noise between the halves) plus the consistency term
    (MSE(f(D1), D1(f(y))) + MSE(f(D2), D2(f(y)))) / 2; Adam at `lr`, halved after every 1000 iterations, for
    `iterations` steps (the paper's 2000); the result is clip(y - net(y), 0, 1). No noise level is needed.

    `seed` fixes the net's initial weights (the only randomness; the global torch RNG is left as it was). `device`:
    None or "cpu" (default), "gpu"/"cuda"/"cuda:N" or a torch.device; `threads`: torch's CPU threads for this call
    (None: torch's current setting), restored afterwards. Timed from the image's upload to its result on the host.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    z = _zs_n2n_check(noisy, iterations, lr, seed, threads)
    dev = _torch_device(device)
    channels = 1 if z.ndim == 2 else z.shape[-1]
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG state
        torch.manual_seed(int(seed))
        net = nn.Sequential(
            nn.Conv2d(channels, ZS_N2N_CHANNELS, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ZS_N2N_CHANNELS, ZS_N2N_CHANNELS, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ZS_N2N_CHANNELS, channels, 1),
        )
    split = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]], [[[0.5, 0.0], [0.0, 0.5]]]], dtype=torch.float32)

    def run() -> np.ndarray:
        net.to(dev)
        y = torch.from_numpy((z[..., None] if z.ndim == 2 else z).transpose(2, 0, 1)[None].astype(np.float32))
        y = y.to(dev)
        filters = split.to(dev).repeat(channels, 1, 1, 1)  # (2C, 1, 2, 2): both filters on every channel

        def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            both = F.conv2d(x, filters, stride=2, groups=channels)  # channel c: outputs 2c (D1), 2c + 1 (D2)
            return both[:, 0::2], both[:, 1::2]

        def denoise(x: torch.Tensor) -> torch.Tensor:
            return x - net(x)

        d1, d2 = halves(y)
        opt = torch.optim.Adam(net.parameters(), lr=float(lr))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000, gamma=0.5)
        for _ in range(int(iterations)):
            f1, f2 = denoise(d1), denoise(d2)
            g1, g2 = halves(denoise(y))
            residual = 0.5 * (F.mse_loss(f2, d1) + F.mse_loss(f1, d2))
            consistency = 0.5 * (F.mse_loss(f1, g1) + F.mse_loss(f2, g2))
            opt.zero_grad(set_to_none=True)
            (residual + consistency).backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            out = denoise(y).clamp(0, 1)[0].cpu().numpy().astype(np.float64).transpose(1, 2, 0)
        return out[..., 0] if z.ndim == 2 else out

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _timed("ZS-N2N", run)
    finally:
        if threads is not None:
            torch.set_num_threads(before)


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
