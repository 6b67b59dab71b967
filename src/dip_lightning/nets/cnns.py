"""AlexNet, VGG16 and VGG19 with torchvision's module layout, so a torchvision weight file loads as is.

torchvision itself is not a dependency (its PyPI build does not import beside this torch). Weights never come
from the network: `load_cnn(arch, weights)` reads a state_dict file the user gives, or uses random weights
(with a warning) when weights='random', for smoke tests.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import DIPError

log = logging.getLogger(__name__)

VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
ARCHS = ("alexnet", "vgg16", "vgg19")
# ReLUs are not in-place: an in-place ReLU would overwrite a hooked conv output.


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(256 * 36, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, num_classes),
        )
        names = [
            "conv1",
            "relu1",
            "pool1",
            "conv2",
            "relu2",
            "pool2",
            "conv3",
            "relu3",
            "conv4",
            "relu4",
            "conv5",
            "relu5",
            "pool5",
        ]
        self.layer_names = {n: f"features.{i}" for i, n in enumerate(names)}
        self.layer_names.update(
            fc6="classifier.1", relu6="classifier.2", fc7="classifier.4", relu7="classifier.5", fc8="classifier.6"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class VGG(nn.Module):
    def __init__(self, arch: str = "vgg16", num_classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = []
        self.layer_names: dict[str, str] = {}
        channels, block, conv_in_block = 3, 1, 0
        for v in VGG_CFG[arch]:
            if v == "M":
                self.layer_names[f"pool{block}"] = f"features.{len(layers)}"
                layers.append(nn.MaxPool2d(2, 2))
                block, conv_in_block = block + 1, 0
            else:
                conv_in_block += 1
                self.layer_names[f"conv{block}_{conv_in_block}"] = f"features.{len(layers)}"
                self.layer_names[f"relu{block}_{conv_in_block}"] = f"features.{len(layers) + 1}"
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU()]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 49, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        self.layer_names.update(
            fc6="classifier.0", relu6="classifier.1", fc7="classifier.3", relu7="classifier.4", fc8="classifier.6"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def build_cnn(arch: str) -> nn.Module:
    if arch == "alexnet":
        return AlexNet()
    if arch in VGG_CFG:
        return VGG(arch)
    raise DIPError(f"task.cnn={arch!r} is not known; expected one of {', '.join(ARCHS)}.")


def load_cnn(arch: str, weights: str | None) -> nn.Module:
    """The CNN with the user's weights (a torchvision state_dict file), or random weights for weights='random'."""
    net = build_cnn(arch)
    if weights is None:
        raise DIPError(
            f"task.weights is not set: this task needs {arch} weights from a file. Give "
            f"task.weights=<path to torchvision's {arch} state_dict (.pth)>, or task.weights=random to "
            "run with random weights (smoke tests only; the result means nothing)."
        )
    if str(weights) == "random":
        log.warning("task.weights=random: %s runs with random weights; the result is only a smoke test.", arch)
        return net
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise DIPError(
            f"task.weights file {str(path)!r} does not exist; expected a torchvision {arch} state_dict "
            "(.pth), e.g. the file torchvision downloads to ~/.cache/torch/hub/checkpoints/."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling/format problem is the file's fault
        raise DIPError(f"task.weights file {str(path)!r} could not be read as a PyTorch state_dict ({err}).") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DIPError(
            f"task.weights file {str(path)!r} does not fit torchvision's {arch}: {str(err).splitlines()[0][:300]}"
        ) from None
    return net


class _Stop(Exception):
    """Raised by the hook: nothing after the chosen layer needs to run."""


class FeatureExtractor(nn.Module):
    """The activations of `cnn` at one named layer for an image in [0, 1] (ImageNet-normalised first).

    The CNN is frozen and always in eval mode (no dropout), whatever Lightning asks of the parent module.
    """

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, cnn: nn.Module, layer: str):
        super().__init__()
        self.cnn = cnn
        names = getattr(cnn, "layer_names", {})
        modules = dict(cnn.named_modules())
        path = names.get(layer, layer)
        if path not in modules or path == "":
            valid = ", ".join(names) if names else ", ".join(m for m in modules if m)
            raise DIPError(
                f"task.layer={layer!r} is not a layer of {type(cnn).__name__}; valid layers: {valid} "
                "(or a module path such as features.10)."
            )
        self.layer, self._running, self._out = layer, False, None
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        modules[path].register_forward_hook(self._capture)
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)

    def _capture(self, module, inputs, output):
        if self._running:  # only while this extractor runs the CNN (another may share it)
            self._out = output
            raise _Stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        self._running, self._out = True, None
        try:
            self.cnn((x - self.mean) / self.std)
        except _Stop:
            pass
        finally:
            self._running = False
        out, self._out = self._out, None
        return out
