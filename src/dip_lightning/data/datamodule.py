"""The single-image DataModule: loads the clean image and/or the observation, applies the size rule.

Size rule: the network output must have H and W divisible by the net's `size_multiple` (2^scales, the reference's
d=32 for 5 scales), so images are centre-cropped to the largest such size, after the optional `crop`.

Paired images (data.image with data.observed, 1/factor of its size for super-resolution; the mask, flash and
no-flash photos) take the same region: one crop box is computed in the reference's pixels (`crop_box`: data.crop's
centre crop, then the size rule's), on the grid of the scale factor, and each image is cropped to it in its own
pixels, as it is read.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pytorch_lightning as pl
import torch

from ..config.schema import Len, PositiveFloat, PositiveInt
from ..errors import DIPError
from .builtin import is_builtin, load_builtin
from .io import MAX_PIXELS, is_measurement_file, read_alpha, read_image, read_measurement, read_size
from .masks import alpha_mask, is_generated
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


@dataclass(frozen=True)
class CropBox:
    """A region of an image in its own pixels: rows top..top+height-1, columns left..left+width-1."""

    top: int
    left: int
    height: int
    width: int

    def scaled(self, factor: int) -> CropBox:
        """The same region in an image `factor` times smaller (the box's values are multiples of `factor`)."""
        return CropBox(self.top // factor, self.left // factor, self.height // factor, self.width // factor)

    def of(self, img: torch.Tensor) -> torch.Tensor:
        return img[..., self.top : self.top + self.height, self.left : self.left + self.width]


def size_error(source: str, size: tuple[int, int], multiple: int, min_size: int, unit: int) -> DIPError:
    h, w = size
    factor = f" and of the scale factor between the paired images (so a multiple of {unit})" if unit != multiple else ""
    return DIPError(
        f"Image {source!r} is {w}x{h} pixels (after data.crop), smaller than the net's minimum size: H "
        f"and W must be at least {min_size} and a multiple of 2^scales = {multiple}{factor}. Use a larger "
        "image or crop, or a net with fewer scales (shorter net.num_channels_down)."
    )


def crop_box(
    size: tuple[int, int],
    crop: tuple[int, int] | None,
    multiple: int,
    source: str,
    min_size: int | None = None,
    pad: int = 0,
    step: int = 1,
) -> CropBox:
    """The one region of an image of `size` (height, width) that a run uses, in its pixels: data.crop's centre crop,
    then (without data.pad) the size rule's centre crop to a multiple of `multiple`, at least `min_size`. `step` is
    the scale factor between this image and a smaller one paired with it (an SR observation): the box's top, left,
    height and width are then multiples of `step` (the centre offsets rounded down, the size rule's multiple made
    one of `step` too), so that `box.scaled(step)` is the same region of the smaller image, whole pixels of it."""
    h, w = size
    ch, cw = (min(crop[0], h), min(crop[1], w)) if crop is not None else (h, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    if not pad:
        unit = math.lcm(multiple, step)
        least = max(min_size or multiple, multiple)
        nh, nw = ch - ch % unit, cw - cw % unit
        if nh < least or nw < least:
            raise size_error(source, (ch, cw), multiple, least, unit)
        if (nh, nw) != (ch, cw):
            log.info("size rule: %s cropped from %dx%d to %dx%d (multiple of %d)", source, cw, ch, nw, nh, unit)
        top, left, ch, cw = top + (ch - nh) // 2, left + (cw - nw) // 2, nh, nw
    return CropBox(top - top % step, left - left % step, ch, cw)


def crop_to_multiple(img: torch.Tensor, multiple: int, source: str, min_size: int | None = None) -> torch.Tensor:
    """The size rule on one image: its centre crop to the largest multiple of `multiple` (at least `min_size`)."""
    return crop_box(tuple(img.shape[-2:]), None, multiple, source, min_size).of(img)


def enclosing_crop(size: tuple[int, int], box: CropBox) -> tuple[tuple[int, int], CropBox]:
    """The smallest centre crop (height, width) of an image of `size` that holds `box`, and the box in that crop's
    pixels: what `read_image` (which takes centre crops while reading) reads to give the box."""

    def side(n: int, start: int, length: int) -> tuple[int, int]:
        c = max(length, n - 2 * start - 1)
        while (n - c) // 2 > start or (n - c) // 2 + c < start + length:
            c += 1
        return c, start - (n - c) // 2

    (ch, top), (cw, left) = side(size[0], box.top, box.height), side(size[1], box.left, box.width)
    return (ch, cw), CropBox(top, left, box.height, box.width)


DEMO_IMAGE = "astronaut"  # restored when no image is given at all: `dip-run` alone is a demo
AUXILIARY = {"mask"}  # data.* files that go with an image (the others, data.flash / data.no_flash, are the input)


class SingleImageDataModule(pl.LightningDataModule):
    def __init__(
        self,
        image: str | None = None,
        observed: str | None = None,
        root: str | None = None,
        crop: PositiveInt | Annotated[list[PositiveInt], Len(2, 2)] | None = None,
        iterations: PositiveInt = 1000,
        chunk: int | Literal["auto"] = "auto",
        chunk_seconds: PositiveFloat = 1.0,
        max_pixels: PositiveInt | None = MAX_PIXELS,
        pad: int = 0,
        **extras: str | float | None,
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
        return resolve_path(value, self.root)

    def read(self, value: str, crop: tuple[int, int] | None = None) -> tuple[torch.Tensor, str, tuple[int, int]]:
        """(image centre-cropped to `crop`, its source, its (height, width) before cropping)."""
        source, size, loaded = self.locate(value)
        if crop is None:
            return (loaded if loaded is not None else read_image(source, None, self.max_pixels)), source, size
        ch, cw = min(crop[0], size[0]), min(crop[1], size[1])
        box = CropBox((size[0] - ch) // 2, (size[1] - cw) // 2, ch, cw)
        return self.read_box("", source, size, box, loaded), source, size

    def locate(self, value: str) -> tuple[str, tuple[int, int], torch.Tensor | None]:
        """(its source, its (height, width) as shown, the image itself for a built-in name, else None): a file's size
        comes from its header, nothing of it is decoded."""
        path = self.resolve(value)
        if not path.exists() and (is_builtin(value) or (os.sep not in value and "." not in value)):
            img = load_builtin(value)  # an unknown name raises the 'unknown built-in name' error
            return value, tuple(img.shape[-2:]), img
        return str(path), tuple(read_size(path)), None

    def read_box(
        self, key: str, source: str, size: tuple[int, int], box: CropBox, loaded: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The region `box` of an image (`loaded`, or the file `source` of `size`), read as the file is decoded
        (memory: the region's, not the file's). A data.mask file with transparent pixels gives its alpha channel
        (transparent = missing; `masks.alpha_mask`)."""
        if loaded is not None:
            return box.of(loaded)
        crop, inner = enclosing_crop(size, box)
        crop = None if crop == tuple(size) else crop
        img = inner.of(read_image(source, crop, self.max_pixels))
        if key == "mask":
            alpha = read_alpha(source, crop, self.max_pixels)
            coded = alpha_mask(img, None if alpha is None else inner.of(alpha), source)
            img = img if coded is None else coded
        return img

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
        `min_size` is the smallest network output the net can make (H and W).

        Paired images take the same region: one crop box is computed in the pixels of the reference (data.image,
        else data.observed, else the first image extra) and each image of its group is cropped to that box in its
        own pixels (data.observed of an SR pair: the box / factor, whole pixels of it; `crop_box`)."""
        crop = self._crop_size()
        sources: dict[str, str] = {}
        files: dict[str, str] = {}  # what is read as an image: data.image, data.observed, the image extras
        options: dict[str, Any] = {}
        observed = None
        if self.image is not None:
            files["image"] = str(self.image)
        measurement = self.observed is not None and is_measurement_file(str(self.observed))
        if measurement:  # a tensor as the task's operator makes it (task=physics): no crop, no size rule
            sources["observed"] = str(self.resolve(str(self.observed)))
            observed = read_measurement(sources["observed"])
        elif self.observed is not None:
            files["observed"] = str(self.observed)
        for key, value in self.extra_paths.items():
            if not isinstance(value, str) or (key == "mask" and is_generated(value)):
                options[key] = value  # other values (numbers, generated-mask names) pass through as options
            else:
                files[key] = value
        sizes: dict[str, tuple[int, int]] = {}  # as shown, before cropping (from the headers)
        loaded: dict[str, torch.Tensor | None] = {}  # built-in images (files are decoded once their box is known)
        for key, value in files.items():
            sources[key], sizes[key], loaded[key] = self.locate(value)
        images: dict[str, torch.Tensor] = {}
        for main, members, multiple, least in self._groups(list(files), observed_scale, size_multiple, min_size):
            images.update(self._load_group(main, members, sources, sizes, loaded, crop, multiple, least))
        clean = images.get("image")
        if "observed" in images:
            observed = images["observed"]
            if clean is not None and observed.shape[1] != clean.shape[1]:
                raise DIPError(
                    f"data.observed has {observed.shape[1]} channels but data.image has "
                    f"{clean.shape[1]}; expected the same colour format."
                )
        extras = {k: images[k] for k in files if k not in ("image", "observed")}
        if measurement:
            options["measurement"] = True  # data.observed is a measurement tensor, not an image
        main = self.image if self.image is not None else self.observed
        name = Path(str(main if main is not None else sources[next(iter(extras))])).stem
        self.data = ImageData(
            name=name, clean=clean, observed=observed, extras=extras, sources=sources, options=options
        )
        return self.data

    @staticmethod
    def _groups(keys: list[str], scale: int, size_multiple: int, min_size: int | None):
        """[(reference, {key: reference size / its size}, multiple, min_size)]: the images cropped to one region
        together. With data.image, everything is aligned with it (data.observed at 1/`scale` of its size); without
        it, data.observed is the reference of the image extras where it has the output's size, and else (an SR
        observation, no ground truth) the extras (flash/no-flash) are a group of their own."""
        extras = [k for k in keys if k not in ("image", "observed")]
        if "image" in keys:
            members = {"image": 1, **({"observed": scale} if "observed" in keys else {}), **dict.fromkeys(extras, 1)}
            return [("image", members, size_multiple, min_size)]
        if "observed" in keys and scale == 1:
            return [("observed", {"observed": 1, **dict.fromkeys(extras, 1)}, size_multiple, min_size)]
        groups = []
        if "observed" in keys:  # the net's multiple and minimum in the observation's pixels
            groups.append(
                ("observed", {"observed": 1}, max(size_multiple // scale, 1), max((min_size or 0) // scale, 1))
            )
        if extras:
            groups.append((extras[0], dict.fromkeys(extras, 1), size_multiple, min_size))
        return groups

    def _load_group(self, main, members, sources, sizes, loaded, crop, multiple, min_size) -> dict[str, torch.Tensor]:
        """The images of one group, each cropped to the group's one box in its own pixels (then data.pad's
        reflection padding): sizes checked against the reference's first."""
        ref = sizes[main]
        for key, scale in members.items():
            expected = (ref[0] // scale, ref[1] // scale)
            if tuple(sizes[key]) != expected:
                raise self._mismatch(key, main, scale, sources, sizes, expected)
        step = math.lcm(*members.values())
        if self.pad and step > 1:
            raise DIPError(
                f"data.pad={self.pad} pads data.image {sources[main]!r} by reflection, which the {step}x smaller "
                f"data.observed {sources['observed']!r} cannot follow pixel for pixel (reflecting an image does "
                "not commute with downscaling it); expected data.pad=0 with a super-resolution pair (the size "
                "rule then crops both to the same region), or data.image alone (its observation is simulated)."
            )
        box = crop_box(ref, crop, multiple, sources[main], min_size, self.pad, step)
        out = {}
        for key, scale in members.items():
            img = self.read_box(key, sources[key], sizes[key], box.scaled(scale), loaded[key])
            out[key] = reflect_pad(img, self.pad) if self.pad else img
        return out

    @staticmethod
    def _mismatch(key, main, scale, sources, sizes, expected) -> DIPError:
        (h, w), (rh, rw) = sizes[key], sizes[main]
        if key == "observed" and main == "image":
            what = "the same size" if scale == 1 else f"1/{scale} of its size"
            return DIPError(
                f"data.observed {sources['observed']!r} is {w}x{h} pixels but data.image {sources['image']!r} is "
                f"{rw}x{rh}; expected {what} ({expected[1]}x{expected[0]}): the two must show the same scene, "
                "aligned pixel for pixel. Give a matching pair, or only one of them."
            )
        return DIPError(
            f"data.{key} {sources[key]!r} is {w}x{h} pixels but data.{main} {sources[main]!r} is {rw}x{rh}; "
            f"expected the same size (data.{key} is aligned pixel for pixel with it)."
        )

    def fit(self, img: torch.Tensor, multiple: int, source: str, min_size: int | None = None) -> torch.Tensor:
        """The size rule (a centre crop to the net's multiple), or with data.pad the reflection-padded image as the
        reference pads barbara to 514x514: then the net must make an output of that size (train.py checks). For
        one image alone: `load` crops paired images to one box (`crop_box`)."""
        if self.pad:
            return reflect_pad(img, self.pad)
        return crop_to_multiple(img, multiple, source, min_size)

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


def resolve_path(value: str, root: str | None) -> Path:
    """A data path as a run reads it: `~` expanded, a relative one under data.root where that is set."""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and root:
        path = Path(os.path.expanduser(root)) / path
    return path
