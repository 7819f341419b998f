"""What the package says about its tensors: valid sizes, halo, test input and output, cover image.

The exported network (`network.MembraneProbability`) returns a map of its input's size for input
sides that are multiples of the pooling factor 2**depth (an unpadded U-Net mirrors its input by
its margin itself). The package declares the network's reach as the output's halo (`halo.py`),
so bioimageio.core and deepImageJ tile large images without seams. The smallest input it names
is the smallest block that keeps one step of output once the halo is cut from both sides, run
once, because a geometry-valid size can still fail in a layer.

The test tensors are a real held-out slice (a crop of at most `MAX_TEST_SIZE` pixels, mirrored up
to the smallest input where the slice is smaller, since bioimageio.core tests no smaller input)
and emseg's own prediction of it with `emseg.tiling.predict_slice`, so the model test of any
consumer checks that the package computes what emseg computes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from emseg.export.halo import output_halo
from emseg.export.network import MembraneProbability
from emseg.io import InputError
from emseg.preprocess import Normalization, mirror_pad
from emseg.tiling import TileOptions, predict_slice

MAX_TEST_SIZE = 512  # pixels per side of the test tensors: one ISBI slice
COVER_HEIGHT = 256  # pixels; the Model Zoo asks for covers under 500 kB
PROBE_SIZES = 8  # valid sizes tried from the smallest before giving up


@dataclass(frozen=True)
class SizeRule:
    """Input sides min_input + n * step; the output has the input's size, and a tiler cuts
    `halo` px from every side of each output block. `margin`: the mirror an unpadded U-Net adds
    to its input itself (0 for padded networks)."""

    min_input: int
    step: int
    halo: int
    margin: int = 0


@dataclass(frozen=True)
class Example:
    """A square crop of a held-out slice as the package sees it, and emseg's prediction of it."""

    slice_index: int
    image: np.ndarray  # raw gray values, float32 (s, s)
    prob: np.ndarray  # membrane probability, float32 (s, s)
    mirrored: int = 0  # px of mirror around the crop, where the slice is smaller than min_input


def size_rule(network: MembraneProbability, spec: Mapping[str, Any]) -> SizeRule:
    """The sizes and halo of the exported `network`, built from the `model:` config `spec`."""
    step = network.net.geometry.multiple
    halo = output_halo(spec)
    first = 2 * halo + step  # one step of output left once the halo is cut from both sides
    for size in range(first, first + PROBE_SIZES * step, step):
        if _runs(network, size):
            return SizeRule(min_input=size, step=step, halo=halo, margin=network.margin)
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

    The output is emseg's `predict_slice` of the crop (mirror-padded by the margin of an unpadded
    U-Net, as emseg pads it) with one tile and no test-time augmentation, which is what one pass
    of the exported network computes.
    """
    limit = min(raw.shape[0], raw.shape[1], max(MAX_TEST_SIZE, rule.min_input))
    size = limit // rule.step * rule.step
    if size == 0:
        raise InputError(
            f"slice {slice_index}: {raw.shape[0]} x {raw.shape[1]} px is smaller than one "
            f"step of the network's sizes, {rule.step} px"
        )
    mirrored = max(0, rule.min_input - size) // 2
    image = mirror_pad(raw[:size, :size].astype(np.float32), mirrored)
    padded = mirror_pad(normalization.apply(image), rule.margin)
    tile = model.geometry.input_size_for_output(image.shape[0])  # one tile that covers it
    options = TileOptions(tile_size=tile, batch_size=1, tta=False)
    device = next(model.parameters()).device
    prob = predict_slice(model, padded, options, device).astype(np.float32)
    return Example(slice_index=slice_index, image=image, prob=prob, mirrored=mirrored)


def cover_image(example: Example, normalization: Normalization) -> Image.Image:
    """Image | membrane probability side by side (2:1), gray, `COVER_HEIGHT` pixels high."""
    scaled = np.clip(normalization.apply(example.image), 0.0, 1.0)
    both = np.concatenate([scaled, np.clip(example.prob, 0.0, 1.0)], axis=1)
    cover = Image.fromarray(np.round(both * 255).astype(np.uint8))
    height = min(COVER_HEIGHT, cover.height)
    return cover.resize((2 * height, height), Image.Resampling.LANCZOS)
