"""Super-resolution: A = the reference's Lanczos2 downsampler; the LR image is made from the HR one (PIL's
antialiased Lanczos resize, the paper's protocol) or given (`data.observed`, output factor x its size).

Scores follow the paper: PSNR on the Y channel (studio range) with `shave` (4) pixels shaved, used for every PSNR
of the run (curves, best iterate, psnr_observed = the bicubic upsampling's). RGB PSNRs go in metrics.json too.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ..data.datamodule import ImageData
from ..errors import DIPError
from ..metrics import psnr
from ..metrics import score as score_in
from ..operators.linear import Downsample, pil_resize
from ..operators.resampling import get_kernel
from .base import DIPTask


class SuperResolution(DIPTask):
    name = "super_resolution"

    def __init__(
        self,
        *args,
        factor: int = 4,
        kernel: str = "lanczos2",
        lr_method: str = "pil",
        sigma: float = 0.0,
        shave: int = 4,
        convention: str = "y_shaved",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise DIPError(
                f"task.factor={factor!r} is not valid; expected an integer upscaling factor >= 2 "
                "(the paper uses 4 and 8)."
            )
        get_kernel(factor, kernel)  # an unknown kernel name fails here, before any image is read
        self.factor, self.kernel, self.lr_method, self.sigma = factor, kernel, lr_method, float(sigma)
        self.observed_scale = factor
        self.shave = int(shave)  # the paper's SR script shaves 4 pixels at x4 and x8 alike (docs/reference.md)
        if convention not in ("y_shaved", "reference_script"):
            raise DIPError(
                f"task.convention={convention!r} is not known; expected y_shaved (Y channel, task.shave pixels "
                "shaved on every side, float images) or reference_script (the reference's evaluation script: "
                "uint8 images, 4 pixels shaved top/left and 5 bottom/right)."
            )
        self.convention = convention
        self.baselines: dict[str, torch.Tensor] = {}

    def build_operator(self, data: ImageData) -> Downsample:
        if data.clean is not None:
            h, w = data.clean.shape[-2:]
            if h % self.factor or w % self.factor:
                raise DIPError(
                    f"super-resolution x{self.factor} cannot use {data.sources['image']!r} at {w}x{h} pixels (after "
                    f"cropping): H and W must be multiples of task.factor={self.factor}. Set data.crop to a multiple "
                    f"of {self.factor}, or use a net whose size multiple ({self.net.size_multiple}) it divides."
                )
        ref = data.clean if data.clean is not None else data.observed
        return Downsample(ref.shape[1], self.factor, self.kernel, self.lr_method, sigma=self.sigma / 255.0)

    def prepare(self, data: ImageData) -> None:
        super().prepare(data)
        size = (self.out_avg.shape[-1], self.out_avg.shape[-2])  # the output's (width, height)
        self.baselines = {
            "bicubic": pil_resize(self.observed, size, Image.BICUBIC),
            "nearest": pil_resize(self.observed, size, Image.NEAREST),
        }

    @property
    def psnr_convention(self) -> str:
        return f"y_shaved:{self.shave}" if self.convention == "y_shaved" else self.convention

    def gt_psnr(self, output: torch.Tensor) -> torch.Tensor:
        return score_in(output, self.clean, self.psnr_convention)

    def observed_estimate(self) -> torch.Tensor | None:
        return None if self.clean is None else self.baselines["bicubic"].to(self.clean.device)

    def extra_metrics(self, output: torch.Tensor) -> dict[str, Any]:
        if self.clean is None:
            return {}
        out = {"psnr_rgb_final": float(psnr(output, self.clean))}
        for name, img in self.baselines.items():
            img = img.to(self.clean.device)
            out[f"psnr_{name}"] = self.score(img)
            out[f"psnr_rgb_{name}"] = float(psnr(img, self.clean))
        return out

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        return dict(self.baselines)
