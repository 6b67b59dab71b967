"""The single-image DataModule: loads the clean image and/or the observation, applies the size rule.

Size rule: the network output must have H and W divisible by the net's `size_multiple` (2^scales, the reference's
d=32 for 5 scales), so images are centre-cropped to the largest such size, after the optional `crop`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..errors import DIPError
from .builtin import is_builtin, load_builtin
from .io import MAX_PIXELS, is_measurement_file, read_image, read_measurement, read_size
from .masks import is_generated
from .schedule import ChunkSchedule

log = logging.getLogger(__name__)


@dataclass
class ImageData:
    """What a task restores from: `observed` (given) and/or `clean` (ground truth); extras such as masks."""

    name: str
    clean: torch.Tensor | None = None
    observed: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # non-image data.* values (mask_ratio, mask=random)


def centre_crop(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return img[..., top : top + height, left : left + width]


def reflect_pad(img: torch.Tensor, pad: int) -> torch.Tensor:
    return torch.nn.functional.pad(img, (pad, pad, pad, pad), mode="reflect")


def crop_to_multiple(img: torch.Tensor, multiple: int, source: str, min_size: int | None = None) -> torch.Tensor:
    h, w = img.shape[-2:]
    new_h, new_w = h - h % multiple, w - w % multiple
    min_size = max(min_size or multiple, multiple)
    if new_h < min_size or new_w < min_size:
        raise DIPError(
            f"Image {source!r} is {w}x{h} pixels (after data.crop), smaller than the net's minimum size: H "
            f"and W must be at least {min_size} and a multiple of 2^scales = {multiple}. Use a larger "
            "image or crop, or a net with fewer scales (shorter net.num_channels_down)."
        )
    if (new_h, new_w) != (h, w):
        log.info("size rule: %s cropped from %dx%d to %dx%d (multiple of %d)", source, w, h, new_w, new_h, multiple)
    return centre_crop(img, new_h, new_w)


DEMO_IMAGE = "astronaut"  # restored when no image is given at all: `dip-run` alone is a demo
AUXILIARY = {"mask"}  # data.* files that go with an image (the others, data.flash / data.no_flash, are the input)


class SingleImageDataModule(pl.LightningDataModule):
    def __init__(
        self,
        image: str | None = None,
        observed: str | None = None,
        root: str | None = None,
        crop: int | list[int] | None = None,
        iterations: int = 1000,
        chunk: int | str = "auto",
        chunk_seconds: float = 1.0,
        max_pixels: int | None = MAX_PIXELS,
        pad: int = 0,
        **extras: str | None,
    ):
        super().__init__()
        inputs = {k: v for k, v in extras.items() if k not in AUXILIARY and isinstance(v, str)}
        if image is None and observed is None and not inputs:
            # only then: a user's data.observed (or flash pair) must never get the demo photo as its ground truth
            log.info("no data.image or data.observed given: restoring the built-in demo image %r", DEMO_IMAGE)
            image = DEMO_IMAGE
        self.image, self.observed, self.root, self.crop = image, observed, root, crop
        self.max_pixels = max_pixels
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise DIPError(
                f"data.pad={pad!r} is not valid; expected a number of pixels >= 0 (the reference pads barbara by 1)."
            )
        self.pad = pad
        self.iterations, self.chunk, self.chunk_seconds = int(iterations), chunk, chunk_seconds
        self.extra_paths = {k: v for k, v in extras.items() if v is not None}
        self.data: ImageData | None = None

    # -- loading -----------------------------------------------------------------------------------------------
    def resolve(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        if not path.is_absolute() and self.root:
            path = Path(os.path.expanduser(self.root)) / path
        return path

    def read(self, value: str, crop: tuple[int, int] | None = None) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """(image centre-cropped to `crop`, its source, its (height, width) before cropping)."""
        path = self.resolve(value)
        if not path.exists() and (is_builtin(value) or (os.sep not in value and "." not in value)):
            img = load_builtin(value)  # an unknown name raises the 'unknown built-in name' error
            size = tuple(img.shape[-2:])
            if crop is not None:
                img = centre_crop(img, min(crop[0], size[0]), min(crop[1], size[1]))
            return img, value, size
        size = read_size(path) if path.is_file() else None
        return read_image(path, crop, self.max_pixels), str(path), size

    def _crop_size(self) -> tuple[int, int] | None:
        if self.crop is None:
            return None
        crop = (
            list(self.crop)
            if isinstance(self.crop, (list, tuple)) or hasattr(self.crop, "__len__")
            else [self.crop, self.crop]
        )
        if len(crop) != 2 or any(int(c) <= 0 for c in crop):
            raise DIPError(f"data.crop={self.crop!r} is not valid; expected a positive size or [height, width].")
        return int(crop[0]), int(crop[1])

    def load(self, size_multiple: int, observed_scale: int = 1, min_size: int | None = None) -> ImageData:
        """Load and crop everything; `observed_scale` is output size / observed size (the SR factor, else 1);
        `min_size` is the smallest network output the net can make (H and W)."""
        clean = observed = None
        sources: dict[str, str] = {}
        sizes: dict[str, tuple[int, ...]] = {}  # sizes as read, before cropping: extras must match them
        crop = self._crop_size()
        if self.image is not None:  # the crop is taken as the file is read (memory: the crop's, not the file's)
            clean, sources["image"], sizes["image"] = self.read(str(self.image), crop)
        measurement = self.observed is not None and is_measurement_file(str(self.observed))
        if measurement:  # a tensor as the task's operator makes it (task=physics): no crop, no size rule
            sources["observed"] = str(self.resolve(str(self.observed)))
            observed = read_measurement(sources["observed"])
        elif self.observed is not None:
            observed, sources["observed"], sizes["observed"] = self.read(
                str(self.observed), crop if clean is None and crop is not None else None
            )
        if clean is not None:
            clean = self.fit(clean, size_multiple, sources["image"], min_size)
        if observed is not None and not measurement:
            if clean is not None:
                expected = (sizes["image"][0] // observed_scale, sizes["image"][1] // observed_scale)
                if tuple(sizes["observed"]) != expected:
                    what = "the same size" if observed_scale == 1 else f"1/{observed_scale} of its size"
                    raise DIPError(
                        f"data.observed {sources['observed']!r} is {sizes['observed'][1]}x{sizes['observed'][0]} "
                        f"pixels but data.image {sources['image']!r} is {sizes['image'][1]}x{sizes['image'][0]}; "
                        f"expected {what} ({expected[1]}x{expected[0]}): the two must show the same scene, aligned "
                        "pixel for pixel. Give a matching pair, or only one of them."
                    )
                want = (clean.shape[-2] // observed_scale, clean.shape[-1] // observed_scale)
                if self.pad and observed_scale == 1:  # the same padding as the image: aligned again
                    observed = reflect_pad(observed, self.pad)
                observed = (
                    centre_crop(observed, *want)
                    if (crop is not None or observed_scale == 1)
                    else observed[..., : want[0], : want[1]]
                )
                if observed.shape[1] != clean.shape[1]:
                    raise DIPError(
                        f"data.observed has {observed.shape[1]} channels but data.image has "
                        f"{clean.shape[1]}; expected the same colour format."
                    )
            else:
                multiple = max(size_multiple // observed_scale, 1)
                observed = self.fit(observed, multiple, sources["observed"], max((min_size or 0) // observed_scale, 1))
        extras, options = self._load_extras(
            sources, sizes, crop, size_multiple, aligned=clean is not None or observed_scale == 1
        )
        if measurement:
            options["measurement"] = True  # data.observed is a measurement tensor, not an image
        main = self.image if self.image is not None else self.observed
        name = Path(str(main if main is not None else sources[next(iter(extras))])).stem
        self.data = ImageData(
            name=name, clean=clean, observed=observed, extras=extras, sources=sources, options=options
        )
        return self.data

    def fit(self, img: torch.Tensor, multiple: int, source: str, min_size: int | None = None) -> torch.Tensor:
        """The size rule (a centre crop to the net's multiple), or with data.pad the reflection-padded image as the
        reference pads barbara to 514x514: then the net must make an output of that size (train.py checks)."""
        if self.pad:
            return reflect_pad(img, self.pad)
        return crop_to_multiple(img, multiple, source, min_size)

    def _load_extras(self, sources: dict[str, str], sizes: dict, crop, size_multiple: int, aligned: bool):
        """Image extras (mask, flash, no_flash, ...) are aligned pixel for pixel with the main image: same size
        required, same crop applied. Other values (numbers, generated-mask names) pass through as options."""
        main_key = "image" if self.image is not None else "observed"
        ref_size = sizes.get(main_key) if aligned else None  # a low-resolution observation is no reference
        extras: dict[str, torch.Tensor] = {}
        options: dict[str, Any] = {}
        for key, value in self.extra_paths.items():
            if not isinstance(value, str) or (key == "mask" and is_generated(value)):
                options[key] = value
                continue
            img, sources[key], size = self.read(value, crop)
            if ref_size is None:  # no main image (flash/no-flash): the first extra sets the size and crop
                ref_size, main_key = tuple(size), key
            if tuple(size) != ref_size:
                raise DIPError(
                    f"data.{key} {sources[key]!r} is {size[1]}x{size[0]} pixels but "
                    f"data.{main_key} {sources[main_key]!r} is {ref_size[1]}x{ref_size[0]}; expected the "
                    f"same size (data.{key} is aligned pixel for pixel with it)."
                )
            extras[key] = self.fit(img, size_multiple, sources[key])
        return extras, options

    # -- what the Trainer iterates over ----------------------------------------------------------------------
    def train_dataloader(self) -> ChunkSchedule:
        """What a Trainer fitting a task with this data module iterates over: data.iterations in chunks (the task
        stops earlier at the Trainer's max_steps)."""
        return self.schedule()

    def schedule(self, remaining: int | None = None, checkpoints=()) -> ChunkSchedule:
        """The chunks of DIP iterations the loop's Trainer iterates over: `remaining` iterations (default
        data.iterations: a fresh run's; a resumed run's, what remains), in chunks of data.chunk (auto:
        data.chunk_seconds apart), ending a chunk at every (start, checkpoint_every) of `checkpoints`."""
        total = self.iterations if remaining is None else remaining
        return ChunkSchedule(total, self.chunk, self.chunk_seconds, checkpoints=checkpoints)
