"""Any deepinv forward model as a DIP task: `task=physics` with `task.physics` a deepinv Physics config.

    task:
      physics:
        _target_: deepinv.physics.Blur
        filter: {_target_: deepinv.physics.blur.gaussian_blur, sigma: [2.0, 2.0]}
        padding: circular
        noise_model: {_target_: deepinv.physics.GaussianNoise, sigma: 0.02}

The net fits A f(z) to the observation (operators/physics.py). The observation is simulated from data.image with
the physics' noise model (seeded by task.noise_seed), or read from data.observed: an image file where the
measurement is an image (a blur), else a tensor file (.pt/.pth: torch.save of one tensor; .npy: numpy.save of one
array) holding y as the physics' A returns it, with or without its batch dimension. `task.generator` (a deepinv
PhysicsGenerator config, e.g. an MRI mask generator) draws the physics' parameters once, seeded by task.noise_seed.
The forward model is built with the global generator seeded by task.noise_seed too (a physics that draws from it),
so every seed of an ensemble sees one operator. Beside the ground-truth metrics, metrics.json scores
deepinv's own reconstruction from the same observation (task.baseline: A_dagger or A_adjoint), saved as
baseline.png; observed.png shows the observation where it is an image of the output's shape, else that baseline.

deepinv is an optional extra (pip install -e '.[deepinv]'): docs/physics.md.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.datamodule import ImageData
from ..errors import DIPError, root_cause
from ..metrics import psnr, ssim
from ..operators.physics import PhysicsOperator
from .base import DIPTask

log = logging.getLogger(__name__)

INSTALL = (
    "task=physics runs deepinv's forward models, and deepinv is an optional extra that this environment lacks "
    "({why}). In this project's checkout, build its own environment with make install-physics and run "
    ".venv-physics/bin/dip-run task=physics ... (the main .venv's CPU torch has no matching torchvision: leave it "
    "as it is). Elsewhere: pip install -e '.[deepinv]' beside the torchvision release that matches your torch "
    "(docs/physics.md)."
)


def import_deepinv():
    """deepinv, or the one-paragraph DIPError saying what to install."""
    try:
        import deepinv
    except Exception as err:  # ImportError, or torchvision's RuntimeError ('operator torchvision::nms ...')
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else err!r}"
        raise DIPError(INSTALL.format(why=why)) from None
    return deepinv


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_object(node):
    """A plain config as objects: a dict with _target_ is that callable called with its other keys (built first),
    a list a tuple (deepinv takes sizes and stds as tuples, not lists), anything else itself."""
    import hydra

    if isinstance(node, dict):
        args = {k: build_object(v) for k, v in node.items() if k != "_target_"}
        return hydra.utils.get_object(node["_target_"])(**args) if "_target_" in node else args
    if isinstance(node, (list, tuple)):
        return tuple(build_object(v) for v in node)
    return node


def instantiate(node, what: str):
    """A deepinv object from its config (build_object); its errors as one paragraph naming the key."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise DIPError(
            f"{what}={node!r} is not valid; expected a deepinv config with _target_, e.g. {what}: {{_target_: "
            "deepinv.physics.Blur, filter: ..., noise_model: {_target_: deepinv.physics.GaussianNoise, sigma: 0.02}}"
            " (docs/physics.md)."
        )
    try:
        return build_object(node)
    except Exception as err:
        cause = root_cause(err)
        if isinstance(cause, DIPError):
            raise cause from None
        raise DIPError(
            f"{what} ({node['_target_']}) could not be built: {type(cause).__name__}: "
            f"{str(cause).splitlines()[0] if str(cause) else cause!r}. Check its arguments against deepinv's "
            "documentation of that class (docs/physics.md shows the presets' configs)."
        ) from None


def to_gray(img: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R BT.601) of a (1, 3, H, W) image, as (1, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    return (img * w).sum(dim=1, keepdim=True)


class Physics(DIPTask):
    name = "physics"
    reads_measurements = True
    BASELINES = {"dagger": "A_dagger", "adjoint": "A_adjoint"}

    def __init__(
        self,
        *args,
        physics: Any = None,
        generator: Any = None,
        channels: int | None = None,
        image_size: int | list[int] | None = None,
        baseline: str = "dagger",
        complex_image: bool | Literal["auto"] = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.deepinv = import_deepinv()
        if baseline not in self.BASELINES:
            raise DIPError(
                f"task.baseline={baseline!r} is not known; expected dagger (deepinv's A_dagger, its pseudo-inverse) "
                "or adjoint (A_adjoint): the reconstruction metrics.json scores beside DIP's."
            )
        if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
            raise DIPError(
                f"task.channels={channels!r} is not valid; expected null (the image's own channels), 1 (a colour "
                "image is made gray, as CT, MRI and compressed sensing usually are) or 3."
            )
        if image_size is not None:
            size = list(_plain(image_size)) if not isinstance(image_size, int) else [image_size, image_size]
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
                raise DIPError(
                    f"task.image_size={image_size!r} is not valid; expected [height, width] of the image to "
                    "reconstruct (needed with data.observed and no data.image), e.g. task.image_size=[64,64]."
                )
            image_size = size
        if complex_image not in ("auto", True, False):
            raise DIPError(
                f"task.complex_image={complex_image!r} is not valid; expected auto (deepinv's MRI takes complex "
                "images as 2 channels), true or false."
            )
        self.channels, self.image_size, self.baseline_kind = channels, image_size, baseline
        physics, generator = _plain(physics), _plain(generator)
        if physics is None:
            raise DIPError(
                "task=physics needs task.physics, a deepinv Physics config, e.g. experiment=physics_deblur_gaussian "
                "or task.physics._target_=deepinv.physics.Denoising (docs/physics.md lists the presets)."
            )
        self.physics_name = str(physics.get("_target_", "?")) if isinstance(physics, dict) else "?"
        # the global generator seeded by noise_seed: an operator drawn at random (CompressedSensing's matrix) is
        # the same for every seed of an ensemble, and the process's own stream stays as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.noise_seed)
            self.physics = instantiate(physics, "task.physics")
            if not isinstance(self.physics, self.deepinv.physics.Physics):
                raise DIPError(
                    f"task.physics builds a {type(self.physics).__name__}, not a deepinv.physics.Physics; expected "
                    "a forward model such as deepinv.physics.Blur, CompressedSensing, MRI or Tomography."
                )
            if generator is not None:
                gen = instantiate(generator, "task.generator")
                if not hasattr(gen, "step"):
                    raise DIPError(
                        f"task.generator builds a {type(gen).__name__}, which has no step(); expected a deepinv "
                        "PhysicsGenerator, e.g. deepinv.physics.generator.GaussianMaskGenerator."
                    )
                try:
                    self.physics.update(**gen.step(batch_size=1, seed=self.noise_seed))
                except Exception as err:
                    raise DIPError(
                        f"task.generator ({generator.get('_target_')}) made parameters that task.physics "
                        f"({self.physics_name}) does not take: {type(err).__name__}: {err}. Give the generator the "
                        "physics' image size, as the presets do."
                    ) from None
        if complex_image == "auto":
            complex_image = isinstance(self.physics, self.deepinv.utils.mixins.MRIMixin)
        self.complex_image = bool(complex_image)
        self.baseline_image: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------ shapes, data
    def output_shape(self, data: ImageData) -> tuple[int, int, int]:
        if data.clean is not None:
            c = self.channels or data.clean.shape[1]
            return c, data.clean.shape[2], data.clean.shape[3]
        if self.image_size is None:
            if data.observed is not None and not data.options.get("measurement") and data.observed.ndim == 4:
                return self.channels or data.observed.shape[1], data.observed.shape[2], data.observed.shape[3]
            raise DIPError(
                "task=physics with data.observed and no data.image needs the size of the image to reconstruct: "
                "task.image_size=[height, width] (and task.channels, 1 by default), the size the physics was "
                "built for."
            )
        h, w = self.image_size
        m = self.net.size_multiple
        if h % m or w % m or min(h, w) < (self.net.min_size or m):
            raise DIPError(
                f"task.image_size={self.image_size} does not suit the net: H and W must be multiples of "
                f"{m} and at least {max(self.net.min_size or m, m)}; choose such a size for the physics and the image, "
                "or a net with fewer scales."
            )
        return self.channels or 1, h, w

    def build_operator(self, data: ImageData) -> PhysicsOperator:
        if data.clean is None and data.observed is None:
            raise DIPError("task=physics needs data.image (the observation is simulated) or data.observed.")
        c, h, w = self.output_shape(data)
        if data.clean is not None and data.clean.shape[1] != c:
            if c != 1:
                raise DIPError(
                    f"task.channels={c} but data.image {data.name!r} has {data.clean.shape[1]} channel(s); set "
                    "task.channels=null (the image's own) or 1."
                )
        op = PhysicsOperator(self.physics, self.complex_image)
        try:
            probe = op(torch.zeros(1, c, h, w))
        except Exception as err:
            raise DIPError(
                f"task.physics ({self.physics_name}) does not take the {c}x{h}x{w} image (channels x height x "
                f"width) of {data.name!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else err!r}. "
                "Give the physics (and task.generator) that image size (img_size, img_width: the presets set them "
                "with data.crop), or crop the image to the size the physics was built for."
            ) from None
        self.measurement_shape = tuple(probe.shape)  # what A makes of one image: a given y must have it
        op.sigma = op.noise_sigma(probe)  # the discrepancy principle's sigma, per measurement entry
        return op

    def prepare_ground_truth(self, data: ImageData) -> torch.Tensor | None:
        clean = data.clean
        if clean is not None and clean.shape[1] != self.output_shape(data)[0]:  # task.channels=1 of a colour image
            return to_gray(clean)
        return clean

    def prepare_observation(self, data: ImageData) -> torch.Tensor | None:
        """A given measurement in the shape A makes: as it is, or without its batch dimension."""
        y, shape = data.observed, self.measurement_shape
        if y is None or tuple(y.shape) == shape:
            return y
        if tuple(y.shape) == shape[1:]:
            return y.unsqueeze(0)
        raise DIPError(
            f"data.observed {data.sources.get('observed')!r} is a {tuple(y.shape)} tensor, but task.physics "
            f"({self.physics_name}) makes {shape} measurements from a "
            f"{'x'.join(map(str, self.output_shape(data)))} image; expected y as its A returns it (with or without "
            "the batch dimension), from a physics built with the same arguments."
        )

    def prepare(self, data: ImageData) -> None:
        super().prepare(data)
        with torch.no_grad():
            try:
                self.baseline_image = self.operator.baseline(self.observed, self.baseline_kind).float().clamp(0, 1)
            except Exception as err:
                raise DIPError(
                    f"deepinv's {self.BASELINES[self.baseline_kind]} of {self.physics_name} failed on the observation "
                    f"({type(err).__name__}: {err}); set task.baseline to the other of dagger and adjoint."
                ) from None
        if self.regularizer.image_input:  # z was made before the baseline existed: it starts from the baseline
            self.z.copy_(self.baseline_image.to(self.z))

    @torch.no_grad()
    def image_estimate(self, shape: tuple[int, int, int]) -> torch.Tensor:
        return torch.zeros(1, *shape)  # the baseline, once prepare has made it (it needs the registered buffers)

    # ------------------------------------------------------------------------------------------------ scores
    def fit_psnr(self, a_out: torch.Tensor) -> torch.Tensor:
        """PSNR (peak 1) of A out against the measurement, unclamped: k-space and sinograms leave [0, 1]."""
        return -10.0 * torch.log10((a_out - self.observed).pow(2).mean())

    def simulated_noise_sigma(self) -> float | None:
        """The noise std per measurement entry the physics' noise model adds (given observations too: the physics
        states its noise level), for the discrepancy principle; None for a non-Gaussian noise model."""
        return self.operator.sigma

    def observed_image(self) -> torch.Tensor:
        y, shape = self.observed, tuple(self.out_avg.shape)
        if tuple(y.shape) == shape:
            return y.clamp(0, 1)
        return self.baseline_image

    def extra_outputs(self) -> dict[str, torch.Tensor]:
        return {"baseline": self.baseline_image}

    def extra_metrics(self, output: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {
            "physics": self.physics_name,
            "baseline": self.BASELINES[self.baseline_kind],
            "noise_sigma": None if self.operator.sigma is None else self.operator.sigma * 255,
        }
        if self.clean is not None:
            clean = self.clean.detach().cpu()
            out["psnr_baseline"] = float(psnr(self.baseline_image.cpu(), clean))
            out["ssim_baseline"] = float(ssim(self.baseline_image.cpu(), clean))
        return out
