"""The CNNs that feature inversion and activation maximisation look through, in two families:

- `alexnet_caffe`, `vgg16_caffe`, `vgg19_caffe`: the Caffe models the reference code inverts (its
  `get_pretrained_net`), as one `nn.Sequential` whose children carry the reference's layer names (conv1, relu1,
  norm1, pool1, ..., fc8), so the state_dict keys are `conv1.weight`, `fc6.bias`, ... Input: BGR, x255, minus the
  BGR mean (103.939, 116.779, 123.680). AlexNet is Caffe's (bvlc_alexnet): 96 filters in conv1, local response
  normalisation after conv1 and conv2, grouped conv2/4/5, ceil-mode pooling (a 224 px input reaches pool5 at 6x6).
- `alexnet`, `vgg16`, `vgg19`: torchvision's module layout, so a torchvision weight file loads as is. Input: RGB in
  [0, 1] normalised by ImageNet's mean and std.

torchvision itself is not a dependency (its PyPI build does not import beside this torch). Weights never come
from the network: `load_cnn(arch, weights)` reads a state_dict file the user gives, or uses random weights
(with a warning) when weights='random', for smoke tests. A weight file is data, which someone may have sent: it is
read with torch.load(weights_only=True), so one that holds a pickled Python object is refused and no code in it runs.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..errors import DIPError

log = logging.getLogger(__name__)

VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
ARCHS = ("alexnet_caffe", "vgg16_caffe", "vgg19_caffe", "alexnet", "vgg16", "vgg19")
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


def caffe_classifier(features: int, num_classes: int) -> list[tuple[str, nn.Module]]:
    """The Caffe nets' fully connected head, with the reference's names (torch_view, fc6, relu6, drop6, ..., fc8)."""
    return [
        ("torch_view", nn.Flatten()),
        ("fc6", nn.Linear(features, 4096)),
        ("relu6", nn.ReLU()),
        ("drop6", nn.Dropout()),
        ("fc7", nn.Linear(4096, 4096)),
        ("relu7", nn.ReLU()),
        ("drop7", nn.Dropout()),
        ("fc8", nn.Linear(4096, num_classes)),
    ]


def caffe_alexnet(num_classes: int = 1000) -> nn.Sequential:
    """bvlc_alexnet with the reference's layer names: 60,965,224 parameters."""

    def pool():  # Caffe rounds the pooled size up
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    def lrn():  # Caffe's LRN across channels: local_size 5, alpha 1e-4 (divided by the size, as torch does), beta 0.75
        return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    layers = [
        ("conv1", nn.Conv2d(3, 96, 11, 4)),
        ("relu1", nn.ReLU()),
        ("norm1", lrn()),
        ("pool1", pool()),
        ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=2)),
        ("relu2", nn.ReLU()),
        ("norm2", lrn()),
        ("pool2", pool()),
        ("conv3", nn.Conv2d(256, 384, 3, padding=1)),
        ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=2)),
        ("relu4", nn.ReLU()),
        ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=2)),
        ("relu5", nn.ReLU()),
        ("pool5", pool()),
        *caffe_classifier(256 * 36, num_classes),
    ]
    return nn.Sequential(OrderedDict(layers))


def caffe_vgg(arch: str, num_classes: int = 1000) -> nn.Sequential:
    """VGG-16/19 with the reference's layer names (conv1_1, relu1_1, ..., pool5, torch_view, fc6, ..., fc8)."""
    layers: list[tuple[str, nn.Module]] = []
    channels, block, conv_in_block = 3, 1, 0
    for v in VGG_CFG[arch]:
        if v == "M":
            layers.append((f"pool{block}", nn.MaxPool2d(2, 2)))
            block, conv_in_block = block + 1, 0
        else:
            conv_in_block += 1
            layers.append((f"conv{block}_{conv_in_block}", nn.Conv2d(channels, v, 3, padding=1)))
            layers.append((f"relu{block}_{conv_in_block}", nn.ReLU()))
            channels = v
    layers += caffe_classifier(512 * 49, num_classes)
    return nn.Sequential(OrderedDict(layers))


def build_cnn(arch: str) -> nn.Module:
    """The CNN, with `preprocessing` ("caffe" or "torchvision") telling FeatureExtractor how to feed it."""
    if arch == "alexnet_caffe":
        net = caffe_alexnet()
    elif arch.endswith("_caffe") and arch[: -len("_caffe")] in VGG_CFG:
        net = caffe_vgg(arch[: -len("_caffe")])
    elif arch == "alexnet":
        net = AlexNet()
    elif arch in VGG_CFG:
        net = VGG(arch)
    else:
        net = None
    if net is not None:
        net.preprocessing = "caffe" if arch.endswith("_caffe") else "torchvision"
        return net
    raise DIPError(f"task.cnn={arch!r} is not known; expected one of {', '.join(ARCHS)}.")


def unreadable_weights(err: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one paragraph (torch's own message has several)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
    if found:
        return (
            f"holds a pickled Python object ({found.group(1)}), not only tensors: weight files are data, read "
            "with torch.load(weights_only=True), which runs no code from a file, so it is not loaded. Expected a "
            "state_dict of tensors: save one with torch.save(model.state_dict(), path) from code you trust."
        )
    first = " ".join(str(err).strip().split("\n")[0].split()) or type(err).__name__
    first = first if len(first) <= 300 else first[:297] + "..."
    return f"could not be read as a PyTorch state_dict ({first}); expected a state_dict (.pth) saved by torch.save."


def load_cnn(arch: str, weights: str | None) -> nn.Module:
    """The CNN with the user's weights (a state_dict file in its layout), or random weights for weights='random'."""
    net = build_cnn(arch)
    layout = "the reference code's" if arch.endswith("_caffe") else "torchvision's"
    if weights is None:
        raise DIPError(
            f"task.weights is not set: this task needs {arch} weights from a file. Give "
            f"task.weights=<path to a state_dict (.pth) in {layout} {arch} layout (docs/presets.md: CNN weights)>, or "
            "task.weights=random to run with random weights (smoke tests only; the result means nothing)."
        )
    if str(weights) == "random":
        log.warning("task.weights=random: %s runs with random weights; the result is only a smoke test.", arch)
        return net
    path = Path(os.path.expanduser(str(weights)))
    if not path.is_file():
        raise DIPError(
            f"task.weights file {str(path)!r} does not exist; expected a state_dict (.pth) in {layout} {arch} "
            "layout (docs/presets.md: CNN weights)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # data: never unpickles code
    except Exception as err:  # any unpickling/format problem is the file's fault
        raise DIPError(f"task.weights file {str(path)!r} {unreadable_weights(err)}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise DIPError(
            f"task.weights file {str(path)!r} does not fit {layout} {arch}: {str(err).splitlines()[0][:300]}"
        ) from None
    return net


class _Stop(Exception):
    """Raised by the hook: nothing after the chosen layer needs to run."""


class FeatureExtractor(nn.Module):
    """The activations of `cnn` at one named layer for an RGB image in [0, 1], fed as the CNN was trained (its
    `preprocessing`: "caffe" = BGR x255 minus the BGR mean, as the reference; else ImageNet's mean and std).

    The CNN is frozen and always in eval mode (no dropout), whatever Lightning asks of the parent module.
    """

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    CAFFE_BGR_MEAN = (103.939, 116.779, 123.680)

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
        self.caffe = getattr(cnn, "preprocessing", "torchvision") == "caffe"
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1))
        self.register_buffer("bgr_mean", torch.tensor(self.CAFFE_BGR_MEAN).view(1, 3, 1, 1))
        self.train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)

    def _capture(self, module, inputs, output):
        if self._running:  # only while this extractor runs the CNN (another may share it)
            self._out = output
            raise _Stop

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if self.caffe:
            return x.flip(1) * 255 - self.bgr_mean
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        self._running, self._out = True, None
        try:
            self.cnn(self.preprocess(x))
        except _Stop:
            pass
        finally:
            self._running = False
        out, self._out = self._out, None
        return out
