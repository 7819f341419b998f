"""What the package says about its tensors: valid sizes, test input and output, cover image.

Sizes come from the network's geometry (`emseg.models.geometry`): valid inputs are
min + n * step with step = 2**depth, and an unpadded U-Net returns an output 2 * margin smaller.
The smallest valid size is also run once, because a geometry-valid size can still fail in a
layer (instance norm cannot normalise a 1 x 1 map at the bottom of a padded net); the package then
names the smallest size that runs.

The test tensors are a real held-out slice (a crop of at most `MAX_TEST_SIZE` pixels of output)
and emseg's own prediction of it with `emseg.tiling.predict_slice`, so the model test of any
consumer checks that the package computes what emseg computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from emseg.io import InputError
from emseg.models.geometry import Geometry
from emseg.preprocess import Normalization, mirror_pad
from emseg.tiling import TileOptions, predict_slice

MAX_TEST_SIZE = 512  # output pixels per side of the test tensors: one ISBI slice
COVER_HEIGHT = 256  # pixels; the Model Zoo asks for covers under 500 kB
PROBE_SIZES = 8  # valid sizes tried from the smallest before giving up


@dataclass(frozen=True)
class SizeRule:
    """Valid input sides min_input + n * step; each output side is 2 * halo pixels smaller."""

    min_input: int
    step: int
    halo: int

    def output_size(self, input_size: int) -> int:
        return input_size - 2 * self.halo


@dataclass(frozen=True)
class Example:
    """A square crop of a held-out slice as the package sees it, and emseg's prediction of it."""

    slice_index: int
    image: np.ndarray  # raw gray values, float32 (s, s), mirror-padded by the halo for valid nets
    prob: np.ndarray  # membrane probability, float32 (s - 2 halo, s - 2 halo)


def size_rule(model: torch.nn.Module, geometry: Geometry) -> SizeRule:
    """The smallest valid input side that `model` runs on, the step and the halo."""
    first = geometry.input_size_for_output(1)
    for size in geometry.valid_input_sizes(first, first + (PROBE_SIZES - 1) * geometry.multiple):
        if _runs(model, size):
            return SizeRule(min_input=size, step=geometry.multiple, halo=geometry.margin)
    raise InputError(f"the network runs on none of the valid input sizes from {first} on")


def _runs(model: torch.nn.Module, size: int) -> bool:
    parameter = next(model.parameters())
    probe = torch.zeros((1, 1, size, size), dtype=parameter.dtype, device=parameter.device)
    try:
        with torch.inference_mode():
            model(probe)
    except (ValueError, RuntimeError):
        return False
    return True


def example(
    model: torch.nn.Module,
    rule: SizeRule,
    normalization: Normalization,
    raw: np.ndarray,
    slice_index: int,
) -> Example:
    """The top-left crop of `raw` (one slice, gray values) of the largest valid square size.

    The package's input is the crop mirror-padded by the halo, as emseg pads it; the output is
    emseg's `predict_slice` of it with one tile of the input's size and no test-time augmentation,
    which is what one pass of the exported network computes.
    """
    size = example_output_size(rule, min(raw.shape[0], raw.shape[1], MAX_TEST_SIZE))
    if size is None:
        raise InputError(
            f"slice {slice_index}: {raw.shape[0]} x {raw.shape[1]} px is smaller than the "
            f"network's smallest output, {rule.output_size(rule.min_input)} px"
        )
    crop = raw[:size, :size].astype(np.float32)
    image = mirror_pad(crop, rule.halo)
    options = TileOptions(tile_size=image.shape[0], batch_size=1, tta=False)
    device = next(model.parameters()).device
    prob = predict_slice(model, normalization.apply(image), options, device)
    return Example(slice_index=slice_index, image=image, prob=prob.astype(np.float32))


def example_output_size(rule: SizeRule, limit: int) -> int | None:
    """The largest output side of a valid input that is at most `limit` pixels; None if none."""
    smallest = rule.output_size(rule.min_input)
    if smallest > limit:
        return None
    return smallest + (limit - smallest) // rule.step * rule.step


def cover_image(example: Example, normalization: Normalization) -> Image.Image:
    """Image | membrane probability side by side (2:1), gray, `COVER_HEIGHT` pixels high."""
    halo = (example.image.shape[0] - example.prob.shape[0]) // 2
    height, width = example.prob.shape
    image = example.image[halo : halo + height, halo : halo + width]
    scaled = np.clip(normalization.apply(image), 0.0, 1.0)
    both = np.concatenate([scaled, np.clip(example.prob, 0.0, 1.0)], axis=1)
    cover = Image.fromarray(np.round(both * 255).astype(np.uint8))
    height = min(COVER_HEIGHT, cover.height)
    return cover.resize((2 * height, height), Image.Resampling.LANCZOS)
