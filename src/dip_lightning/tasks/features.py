"""Feature inversion and activation maximisation: what a CNN (AlexNet, VGG16/19) sees, through the DIP prior.

The CNN's weights come from a file (`task.weights`, a torchvision state_dict) or are random
(`task.weights=random`, smoke tests). Features are read at one named layer with a forward hook.
"""

from __future__ import annotations

import logging

import torch

from ..data.datamodule import ImageData
from ..errors import DIPError
from ..nets.cnns import FeatureExtractor, load_cnn
from ..operators.nonlinear import Features
from .base import DIPTask

log = logging.getLogger(__name__)


class FeatureInversion(DIPTask):
    """min ||phi(f(z)) - phi(x0)||^2 at `layer`: an image whose features match the target image's."""

    judges_fit = False  # the fit is in feature space: PSNR against the image says nothing about a collapse

    name = "feature_inversion"

    def __init__(self, *args, cnn: str = "alexnet", layer: str = "fc6", weights: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Not registered as a submodule here (the operator registers it): one copy in the state_dict.
        self.__dict__["extractor"] = FeatureExtractor(load_cnn(cnn, weights), layer)

    def build_operator(self, data: ImageData) -> Features:
        if data.clean is None:
            raise DIPError("feature inversion needs the target image as data.image (its features are inverted).")
        return Features(self.extractor)

    def observed_psnr(self) -> float | None:
        return None  # the "observation" is the target image itself


class UnitActivation(Features):
    """The loss is minus the mean activation of one unit (channel) at the layer."""

    def __init__(self, extractor: torch.nn.Module, unit: int):
        super().__init__(extractor)
        self.unit = unit

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return -self.forward(x)[:, self.unit].mean(), x


class ActivationMaximization(FeatureInversion):
    """max_theta phi_unit(f(z)): an image of `image_size` pixels that excites one unit; no input image is used."""

    name = "activation_maximization"

    def __init__(self, *args, layer: str = "fc8", unit: int = 0, image_size: int = 224, **kwargs):
        super().__init__(*args, layer=layer, **kwargs)
        multiple = getattr(self.net, "size_multiple", 1)
        if (
            isinstance(image_size, bool)
            or not isinstance(image_size, int)
            or image_size < multiple
            or image_size % multiple
        ):
            raise DIPError(
                f"task.image_size={image_size} is not a multiple of the net's size multiple "
                f"{multiple}; expected a positive multiple of it, e.g. {multiple * 4}."
            )
        self.unit, self.image_size = int(unit), int(image_size)

    def build_operator(self, data: ImageData) -> UnitActivation:
        with torch.no_grad():
            channels = self.extractor(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1]
        if not 0 <= self.unit < channels:
            raise DIPError(
                f"task.unit={self.unit} is not a unit of layer {self.extractor.layer!r}; expected "
                f"0 <= unit < {channels}."
            )
        log.info("activation maximisation starts from no image: data.image is not used")
        data.clean, data.observed = None, torch.full((1, 3, self.image_size, self.image_size), 0.5)
        return UnitActivation(self.extractor, self.unit)

    def output_shape(self, data: ImageData) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size
