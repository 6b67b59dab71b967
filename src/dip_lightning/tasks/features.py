"""Feature inversion and activation maximisation: what a CNN sees, through the DIP prior.

As the reference code: the net generates a larger image (`generate_size`, 256: a multiple of its 2^scales) and
the CNN sees its top-left crop (`out[:, :, :size, :size]`): 224 px for feature inversion, whose target image is
resized to 224 first, and 227 px for activation maximisation with Caffe's AlexNet (224 with the other CNNs). The
crop is the run's output (restored.png, PSNRs, snapshots). The CNN's weights come from a file (`task.weights`) or
are random (`task.weights=random`, smoke tests); features are read at one named layer with a forward hook.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..data.datamodule import ImageData
from ..errors import DIPError
from ..nets.base import Generator
from ..nets.cnns import FeatureExtractor, load_cnn
from ..operators.nonlinear import Features
from .base import DIPTask

log = logging.getLogger(__name__)


class CroppedGenerator(Generator):
    """The net run at `generate` x `generate` pixels, its output cropped to the top-left `size` x `size`.

    A Generator itself: z has the net's depth and the size the net wants for `generate` x `generate`, the output
    the net's channels. `size_multiple` and `min_size` are 1: the crop, not the net, sets the output size, so
    images are not cropped to the net's multiple when read."""

    size_multiple = 1
    min_size = 1

    def __init__(self, net: Generator, generate: int, size: int):
        super().__init__()
        multiple = net.size_multiple
        least = max(size, net.min_size)  # reflection padding needs room at the deepest scale
        if isinstance(generate, bool) or not isinstance(generate, int) or generate < least or generate % multiple:
            raise DIPError(
                f"task.generate_size={generate!r} is not valid for an output of {size} px; expected a multiple of "
                f"the net's size multiple {multiple} (2^scales) that is at least {least}, e.g. "
                f"{-(-least // multiple) * multiple}."
            )
        self.net, self.generate, self.size = net, int(generate), int(size)
        self.input_depth, self.output_channels = net.input_depth, net.output_channels

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return self.net.input_size(self.generate, self.generate)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)[:, :, : self.size, : self.size]


def resize_shorter_side(img: torch.Tensor, size: int) -> torch.Tensor:
    """The image resized so that its shorter side is `size` (bilinear with antialiasing, as PIL's resize that
    the reference's torchvision Resize uses), then centre-cropped to a square: the reference's crop of the output
    is square, so a non-square target would not line up with it."""
    h, w = img.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        shape = (max(size, round(h * scale)), max(size, round(w * scale)))
        img = F.interpolate(img, size=shape, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size]


def probe(extractor: FeatureExtractor, size: int, what: str) -> torch.Tensor:
    """The layer's output for a size x size input, or a clear error where the CNN cannot take that size (Caffe's
    nets have no adaptive pooling: their fc layers need 219-227 px for AlexNet, 224 for VGG)."""
    try:
        with torch.no_grad():
            return extractor(torch.zeros(1, 3, size, size))
    except RuntimeError as err:
        raise DIPError(
            f"{what}={size} px does not fit layer {extractor.layer!r} of the CNN ({str(err).splitlines()[0][:200]}); "
            "the fully connected layers of the Caffe nets need their training size: 224 px (AlexNet: 219-227), "
            "or choose a conv layer."
        ) from None


def check_size(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DIPError(f"task.{name}={value!r} is not valid; expected a whole number of pixels >= {minimum}.")
    return int(value)


class FeatureInversion(DIPTask):
    """min ||phi(f(z)) - phi(x0)||^2 at `layer`: an image whose features match the target image's."""

    judges_fit = False  # the fit is in feature space: PSNR against the image says nothing about a collapse

    name = "feature_inversion"

    def __init__(
        self,
        *args,
        cnn: str = "alexnet_caffe",
        layer: str = "fc6",
        weights: str | None = None,
        target_size: int | None = 224,
        generate_size: int | None = 256,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # Not registered as a submodule here (the operator registers it): one copy in the state_dict.
        self.__dict__["extractor"] = FeatureExtractor(load_cnn(cnn, weights), layer)
        self.cnn_name = cnn
        self.target_size = None if target_size is None else check_size("target_size", target_size)
        self.generate_size = generate_size
        if self.target_size is not None:
            self.net = self.cropped(self.target_size)

    def cropped(self, size: int) -> CroppedGenerator:
        generate = self.generate_size
        if generate is None:  # the smallest size the net can make that covers the crop
            multiple = self.net.size_multiple
            generate = -(-max(size, self.net.min_size) // multiple) * multiple
        return CroppedGenerator(self.net, generate, size)

    def build_operator(self, data: ImageData) -> Features:
        if data.clean is None:
            raise DIPError("feature inversion needs the target image as data.image (its features are inverted).")
        probe(self.extractor, min(self.output_shape(data)[1:]), "the target image's size")
        return Features(self.extractor)

    def output_shape(self, data: ImageData) -> tuple[int, int, int]:
        if self.target_size is not None and data.clean is not None:  # the target, resized (prepare_ground_truth)
            return data.clean.shape[1], self.target_size, self.target_size
        return super().output_shape(data)

    def prepare_ground_truth(self, data: ImageData) -> torch.Tensor | None:
        if self.target_size is None:
            return data.clean
        return resize_shorter_side(data.clean, self.target_size)

    def observed_psnr(self) -> float | None:
        return None  # the "observation" is the target image itself


class UnitActivation(Features):
    """The loss that drives one unit (channel) of the layer, as the reference's matcher: a fully connected layer's
    logit towards `target` (|target - logit|), a conv layer's map summed over the central window of half-width
    `window` (minus the sum: maximised); times `scale`. objective="mean": minus the unit's mean activation."""

    def __init__(
        self,
        extractor: torch.nn.Module,
        unit: int,
        objective: str = "reference",
        target: float = 300.0,
        window: int = 20,
        scale: float = 5.0,
        tv_weight: float = 0.0,
    ):
        super().__init__(extractor)
        if objective not in ("reference", "mean"):
            raise DIPError(f"task.objective={objective!r} is not known; expected reference or mean.")
        self.unit, self.objective = unit, objective
        self.target, self.window, self.scale, self.tv_weight = float(target), int(window), float(scale), tv_weight

    def unit_loss(self, features: torch.Tensor) -> torch.Tensor:
        unit = features[:, self.unit]
        if self.objective == "mean":
            return -unit.mean()
        if features.dim() == 2:
            return self.scale * (self.target - unit).abs().sum()
        h, w, ws = unit.shape[-2] // 2, unit.shape[-1] // 2, self.window
        return -self.scale * unit[:, max(h - ws, 0) : h + ws, max(w - ws, 0) : w + ws].sum()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.unit_loss(self.forward(x))
        if self.tv_weight > 0:  # the notebook's optional term, on the CNN's input (Caffe's: x255, BGR)
            loss = loss + self.tv_weight * tv_loss(self.extractor.preprocess(x), beta=2.0)
        return loss, x


def tv_loss(x: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Total variation as the reference's sr_utils.tv_loss: sum of (dx^2 + dy^2)^(beta/2)."""
    dh = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2)
    dw = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2)
    return (dh[:, :, :-1] + dw[:, :, :, :-1]).pow(beta / 2).sum()


class ActivationMaximization(FeatureInversion):
    """max_theta phi_unit(f(z)): an image of `image_size` pixels that excites one unit; no input image is used."""

    name = "activation_maximization"

    def __init__(
        self,
        *args,
        layer: str = "fc8",
        unit: int = 0,
        image_size: int | None = None,
        objective: str = "reference",
        target_logit: float = 300.0,
        window_size: int = 20,
        loss_scale: float = 5.0,
        tv_weight: float = 0.0,
        **kwargs,
    ):
        kwargs["target_size"] = None  # no target image; the crop is image_size
        super().__init__(*args, layer=layer, **kwargs)
        if image_size is None:  # the reference's: 227 for Caffe's AlexNet, 224 for the others
            image_size = 227 if self.cnn_name == "alexnet_caffe" else 224
        self.image_size = check_size("image_size", image_size)
        self.net = self.cropped(self.image_size)
        self.unit = int(unit)
        self.objective_args = dict(
            objective=objective, target=target_logit, window=window_size, scale=loss_scale, tv_weight=tv_weight
        )

    def build_operator(self, data: ImageData) -> UnitActivation:
        channels = probe(self.extractor, self.image_size, "task.image_size").shape[1]
        if not 0 <= self.unit < channels:
            raise DIPError(
                f"task.unit={self.unit} is not a unit of layer {self.extractor.layer!r}; expected "
                f"0 <= unit < {channels}."
            )
        log.info("activation maximisation starts from no image: data.image is not used")
        return UnitActivation(self.extractor, self.unit, **self.objective_args)

    def prepare_ground_truth(self, data: ImageData) -> None:
        return None  # no image is inverted: nothing to score against

    def prepare_observation(self, data: ImageData) -> torch.Tensor:
        return torch.full((1, 3, self.image_size, self.image_size), 0.5)  # a gray image: the loss never reads it

    def output_shape(self, data: ImageData) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size
