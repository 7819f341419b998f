"""Whole-slice prediction from tiles: the paper's overlap-tile strategy and Gaussian blending.

`predict_slice` takes one slice that is already mirror-padded by the network's margin (what the
preprocessing rule writes) and returns the membrane probability of the original slice.

- Unpadded (valid) networks: each input tile predicts only its central output region; output
  regions start at multiples of the pooling factor, so every tile sees the same pooling grid as a
  single pass over the whole padded slice would, and the stitched result equals that pass to float
  tolerance.
- Padded (same) networks: overlapping tiles are blended with a Gaussian window that trusts tile
  centres more than their borders, as sliding-window inference does elsewhere.

Tiles are built lazily and run in batches, so memory stays bounded by `batch_size` tiles
whatever the slice size. A batch that runs out of GPU memory is retried at half the size, and the
smaller size is kept for the rest of the slice; a single tile that does not fit is a config error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from emseg.io import InputError
from emseg.models.geometry import Geometry

LOG = logging.getLogger("emseg")


@dataclass(frozen=True)
class TileOptions:
    """How to cut and run tiles; see config.yaml's `predict:` section."""

    tile_size: int
    batch_size: int = 4
    overlap: float = 0.25
    tta: bool = False
    amp: bool = False


@dataclass
class _BatchLimit:
    """The tile batch size that currently fits in memory, shared by all views of one slice."""

    size: int


def predict_slice(
    model: torch.nn.Module, padded: np.ndarray, options: TileOptions, device: torch.device
) -> np.ndarray:
    """Membrane probability (H,W) float32 of a slice given mirror-padded by `model.geometry.margin`.

    With `options.tta`, the prediction is the mean over the 8 flips and 90-degree rotations. The
    model runs in eval mode and is put back into the mode it came in.
    """
    geometry: Geometry = model.geometry
    if padded.ndim != 2:
        raise ValueError(f"predict_slice needs a 2-D slice, got shape {padded.shape}")
    geometry.require_valid(options.tile_size, "predict.tile_size")
    if min(padded.shape) <= 2 * geometry.margin:
        raise ValueError(
            f"slice {padded.shape} is not larger than twice the margin {geometry.margin}"
        )
    transforms = range(8) if options.tta else range(1)
    total = np.zeros(tuple(s - 2 * geometry.margin for s in padded.shape), dtype=np.float32)
    limit = _BatchLimit(max(1, options.batch_size))
    was_training = model.training
    model.eval()
    try:
        for k in transforms:
            view = np.ascontiguousarray(_dihedral(padded, k))
            total += _dihedral_inverse(_predict_view(model, view, options, device, limit), k)
    finally:
        model.train(was_training)
    if len(transforms) > 1:
        total /= len(transforms)
    return total


def _predict_view(
    model: torch.nn.Module,
    padded: np.ndarray,
    options: TileOptions,
    device: torch.device,
    limit: _BatchLimit,
) -> np.ndarray:
    geometry: Geometry = model.geometry
    if geometry.padded:
        return _predict_blended(model, padded, options, device, limit)
    return _predict_overlap_tile(model, padded, options, device, limit)


def _predict_overlap_tile(
    model: torch.nn.Module,
    padded: np.ndarray,
    options: TileOptions,
    device: torch.device,
    limit: _BatchLimit,
) -> np.ndarray:
    """Valid network: output regions tile the slice exactly, strides aligned to the pooling grid."""
    geometry: Geometry = model.geometry
    margin, tile = geometry.margin, options.tile_size
    out_tile = geometry.output_size(tile)
    stride = out_tile - out_tile % geometry.multiple
    if stride <= 0:
        raise ValueError(
            f"predict.tile_size {tile} gives an output of {out_tile} px; use a larger tile"
        )
    height, width = (s - 2 * margin for s in padded.shape)
    ys, xs = range(0, height, stride), range(0, width, stride)
    need_h, need_w = ys[-1] + tile, xs[-1] + tile
    image = _grow(padded, need_h, need_w)
    result = torch.zeros((height, width), dtype=torch.float32, device=device)
    corners = [(y, x) for y in ys for x in xs]
    for batch, probs in _run_batches(model, image, corners, tile, options, device, limit):
        for (y, x), prob in zip(batch, probs, strict=True):
            h, w = min(stride, height - y), min(stride, width - x)
            result[y : y + h, x : x + w] = prob[:h, :w]
    return result.cpu().numpy()


def _predict_blended(
    model: torch.nn.Module,
    image: np.ndarray,
    options: TileOptions,
    device: torch.device,
    limit: _BatchLimit,
) -> np.ndarray:
    """Padded network: overlapping tiles averaged with a Gaussian importance window."""
    tile = options.tile_size
    height, width = image.shape
    grown = _grow(image, tile, tile)
    step = max(1, round(tile * (1.0 - options.overlap)))
    ys = _window_starts(grown.shape[0], tile, step)
    xs = _window_starts(grown.shape[1], tile, step)
    window = torch.from_numpy(_gaussian_window(tile)).to(device=device, dtype=torch.float32)
    total = torch.zeros(grown.shape, dtype=torch.float32, device=device)
    weight = torch.zeros(grown.shape, dtype=torch.float32, device=device)
    corners = [(y, x) for y in ys for x in xs]
    for batch, probs in _run_batches(model, grown, corners, tile, options, device, limit):
        for (y, x), prob in zip(batch, probs, strict=True):
            total[y : y + tile, x : x + tile] += prob * window
            weight[y : y + tile, x : x + tile] += window
    return total[:height, :width].div_(weight[:height, :width]).cpu().numpy()


def _grow(image: np.ndarray, min_height: int, min_width: int) -> np.ndarray:
    """Mirror-extend the bottom and right so the image is at least min_height x min_width."""
    extra = (max(0, min_height - image.shape[0]), max(0, min_width - image.shape[1]))
    if extra == (0, 0):
        return image
    mode = "reflect" if min(image.shape) > 1 else "edge"
    return np.pad(image, ((0, extra[0]), (0, extra[1])), mode=mode)


def _window_starts(length: int, tile: int, step: int) -> list[int]:
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _gaussian_window(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian (sigma = tile/8, as MONAI's default); floored so no pixel weighs zero."""
    centre = (tile - 1) / 2.0
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / (sigma_scale * tile)) ** 2)
    window = np.outer(axis, axis)
    return np.maximum(window / window.max(), 1e-3)


def _run_batches(
    model: torch.nn.Module,
    image: np.ndarray,
    corners: list[tuple[int, int]],
    tile: int,
    options: TileOptions,
    device: torch.device,
    limit: _BatchLimit,
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Yield (corners, membrane probabilities on `device`) batch by batch; tiles are cut lazily.

    Probabilities stay on the device and are stitched there, so a GPU is not stalled by a copy
    to the host after every batch.

    Out of memory, the same tiles are retried in batches half the size (down to one tile), so a
    batch size tuned on a larger GPU still finishes; `limit` remembers the size that fitted.
    """
    start = 0
    while start < len(corners):
        batch = corners[start : start + limit.size]
        try:
            probs = _run_batch(model, image, batch, tile, options, device)
        except torch.OutOfMemoryError as error:
            _release_memory(device)
            if limit.size == 1:
                reason = (str(error).strip().splitlines() or ["out of memory"])[0]
                raise InputError(
                    f"predict.tile_size: one tile of {tile} px does not fit in the memory of"
                    f" {device} ({reason}); lower predict.tile_size (and predict.batch_size)"
                ) from error
            limit.size //= 2
            LOG.warning(
                "out of memory on %s with %d tiles of %d px; retrying with batches of %d"
                " (set predict.batch_size: %d to skip this)",
                device,
                len(batch),
                tile,
                limit.size,
                limit.size,
            )
            continue
        yield batch, probs
        start += len(batch)


def _run_batch(
    model: torch.nn.Module,
    image: np.ndarray,
    batch: list[tuple[int, int]],
    tile: int,
    options: TileOptions,
    device: torch.device,
) -> torch.Tensor:
    """Membrane probabilities (N, tile', tile'), float32 on `device`, of the tiles at `batch`."""
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if options.amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    dtype = next(model.parameters()).dtype
    tiles = np.stack([image[y : y + tile, x : x + tile] for y, x in batch])
    inputs = torch.from_numpy(tiles).to(device=device, dtype=dtype).unsqueeze(1)
    with torch.inference_mode(), autocast:
        logits = model(inputs)
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _release_memory(device: torch.device) -> None:
    """Hand the failed batch's cached blocks back so the smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations (k = 0 is the identity)."""
    rotated = np.rot90(array, k % 4)
    return rotated[:, ::-1] if k >= 4 else rotated


def _dihedral_inverse(array: np.ndarray, k: int) -> np.ndarray:
    unflipped = array[:, ::-1] if k >= 4 else array
    return np.rot90(unflipped, -(k % 4))
