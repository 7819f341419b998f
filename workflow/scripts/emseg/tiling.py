"""Prediction from tiles: the paper's overlap-tile strategy and Gaussian blending, for any region.

`predict_slice` takes one slice that is already mirror-padded by the network's margin (what the
preprocessing rule writes) and returns the membrane probability of the original slice.
`predict_region` returns the same values for any rectangle of a slice while reading only the
pixels that rectangle needs, which is what block-wise prediction of large volumes is built on.

- Unpadded (valid) networks: each input tile predicts only its central output region; output
  regions start at multiples of the pooling factor, so every tile sees the same pooling grid as a
  single pass over the whole padded slice would, and the stitched result equals that pass to float
  tolerance.
- Padded (same) networks: overlapping tiles are blended with a Gaussian window that trusts tile
  centres more than their borders, as sliding-window inference does elsewhere.

Tiles are placed on one grid per slice, fixed by the slice's size alone. A region computes just
the tiles that overlap it, in the same order and with the same blending weights, so a slice cut
into blocks gives the values of the whole slice: no seams at block borders. With test-time
augmentation each of the 8 flips and rotations has its own grid (the one `predict_slice` would
use on the flipped slice). The mirror extrapolation at the slice border is an index map, so a
region far from the border reads real neighbour pixels and one at the border reads reflections.

Tiles run in batches, so memory stays bounded by `batch_size` tiles and the region. A batch that
runs out of GPU memory is retried at half the size, and the smaller size is kept for the rest of
the slice; a single tile that does not fit is a config error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from emseg.io import InputError
from emseg.models.geometry import Geometry

LOG = logging.getLogger("emseg")

Region = tuple[int, int, int, int]  # y0, y1, x0, x1 in slice pixels, half-open
Reader = Callable[[slice, slice], np.ndarray]  # (rows, cols) of the source -> float32 pixels


@dataclass(frozen=True)
class TileOptions:
    """How to cut and run tiles; see config.yaml's `predict:` section."""

    tile_size: int
    batch_size: int = 4
    overlap: float = 0.25
    tta: bool = False
    autocast: torch.dtype | None = None  # mixed precision of the forward passes (None: fp32)
    channels_last: bool = False  # memory format of the input batches


@dataclass(frozen=True)
class SliceInput:
    """One slice to predict: its size, a reader of source rectangles, and the mirror extrapolation.

    `to_source[a]` maps each index of the padded frame (the slice mirror-padded by the network's
    margin, as `emseg.preprocess.mirror_pad` makes it) along axis `a` to the source index it holds.
    """

    shape: tuple[int, int]  # (H, W) of the slice, which is also the output's
    margin: int
    read: Reader
    to_source: tuple[np.ndarray, np.ndarray]

    @classmethod
    def from_padded(cls, padded: np.ndarray, margin: int) -> SliceInput:
        """A slice held in memory, already mirror-padded by `margin` (the predict rule's input)."""
        shape = (padded.shape[0] - 2 * margin, padded.shape[1] - 2 * margin)
        maps = (np.arange(padded.shape[0]), np.arange(padded.shape[1]))
        return cls(shape, margin, lambda rows, cols: padded[rows, cols], maps)

    @classmethod
    def mirrored(cls, shape: tuple[int, int], margin: int, read: Reader) -> SliceInput:
        """A slice of `shape` read from its source, mirror-padded on the fly by `margin`."""
        maps = tuple(_pad_map(np.arange(size), (margin, margin), size > 1) for size in shape)
        return cls((int(shape[0]), int(shape[1])), margin, read, maps)


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
    margin = model.geometry.margin
    if padded.ndim != 2:
        raise ValueError(f"predict_slice needs a 2-D slice, got shape {padded.shape}")
    if min(padded.shape) <= 2 * margin:
        raise ValueError(f"slice {padded.shape} is not larger than twice the margin {margin}")
    source = SliceInput.from_padded(padded, margin)
    return predict_region(model, source, (0, source.shape[0], 0, source.shape[1]), options, device)


def predict_region(
    model: torch.nn.Module,
    source: SliceInput,
    region: Region,
    options: TileOptions,
    device: torch.device,
) -> np.ndarray:
    """Membrane probability (float32) of `region` of a slice, equal to that crop of the whole slice.

    Reads the source once, over the rectangle that the region's tiles cover (the region plus the
    network's margin and the tiles' overlap, mirrored where it crosses the slice border).
    """
    geometry: Geometry = model.geometry
    geometry.require_valid(options.tile_size, "predict.tile_size")
    if source.margin != geometry.margin:
        raise ValueError(f"slice padded by {source.margin}, the network needs {geometry.margin}")
    y0, y1, x0, x1 = region
    if not (0 <= y0 < y1 <= source.shape[0] and 0 <= x0 < x1 <= source.shape[1]):
        raise ValueError(f"region {region} is not inside the slice {source.shape}")
    views = [_View.plan(geometry, source, region, options, k) for k in _transforms(options)]
    box, origin = _read_box(source, views)
    total = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    limit = _BatchLimit(max(1, options.batch_size))
    was_training = model.training
    model.eval()
    try:
        for view in views:
            image = view.image(box, origin)
            total += _dihedral_inverse(view.predict(model, image, options, device, limit), view.k)
    finally:
        model.train(was_training)
    if len(views) > 1:
        total /= len(views)
    return total


def tile_work(
    geometry: Geometry, shape: tuple[int, int], block: tuple[int, int], options: TileOptions
) -> float:
    """How many times predicting a slice block by block computes each of its tiles, on average.

    Every block computes the tiles of the whole slice's grid that reach into it, so a tile that
    straddles a block border is computed by each block it reaches: about 1 for blocks much larger
    than a tile, several for blocks no larger than one (a padded network's windows overlap too).
    """
    reach = _reach(geometry, options.tile_size)
    factor = 1.0
    for size, side in zip(shape, block, strict=True):
        starts = _tile_starts(geometry, size, options)
        borders = range(0, size, max(1, side))
        computed = sum(
            1 for b0 in borders for s in starts if s < min(b0 + side, size) and s + reach > b0
        )
        factor *= computed / len(starts)
    return factor


def _transforms(options: TileOptions) -> range:
    return range(8) if options.tta else range(1)


@dataclass(frozen=True)
class _View:
    """One of the 8 flips/rotations of a slice: its tile grid and the part a region needs.

    Coordinates are those of the transformed slice; `axes[a]` = (source axis, reversed) of view
    axis a. The padded frame of the view is the view of the padded frame (mirroring commutes with
    flips), grown at its bottom and right by reflection where the last tiles reach past it, as
    `predict_slice` has always done.
    """

    k: int
    geometry: Geometry
    axes: tuple[tuple[int, bool], tuple[int, bool]]
    shape: tuple[int, int]  # the transformed slice (H', W')
    region: Region  # the wanted region, in view coordinates
    corners: list[tuple[int, int]]  # tiles (padded-frame corners) that overlap the region
    frame: Region  # the padded-frame rectangle those tiles cover
    indices: tuple[np.ndarray, np.ndarray]  # source index of each frame row / column

    @classmethod
    def plan(
        cls,
        geometry: Geometry,
        source: SliceInput,
        region: Region,
        options: TileOptions,
        k: int,
    ) -> _View:
        axes = _view_axes(k)
        shape = (source.shape[axes[0][0]], source.shape[axes[1][0]])
        y0, y1, x0, x1 = region
        spans = {0: (y0, y1), 1: (x0, x1)}
        bounds = []
        for (axis, reversed_), size in zip(axes, shape, strict=True):
            lo, hi = spans[axis]
            bounds.append((size - hi, size - lo) if reversed_ else (lo, hi))
        tile = options.tile_size
        starts = [_tile_starts(geometry, size, options) for size in shape]
        keep = [
            [s for s in axis_starts if s < hi and s + _reach(geometry, tile) > lo]
            for axis_starts, (lo, hi) in zip(starts, bounds, strict=True)
        ]
        corners = [(y, x) for y in keep[0] for x in keep[1]]
        frame = (keep[0][0], keep[0][-1] + tile, keep[1][0], keep[1][-1] + tile)
        view_region = (bounds[0][0], bounds[0][1], bounds[1][0], bounds[1][1])
        indices = _frame_indices(source, geometry.margin, axes, shape, frame)
        return cls(k, geometry, axes, shape, view_region, corners, frame, indices)

    def image(self, box: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
        """The view's padded frame over `self.frame`, cut from the source `box` read at `origin`."""
        rows, cols = self.indices
        by_source = (rows, cols) if self.axes[0][0] == 0 else (cols, rows)
        picked = box[_take(by_source[0] - origin[0]), :][:, _take(by_source[1] - origin[1])]
        return picked if self.axes[0][0] == 0 else picked.T

    def predict(
        self,
        model: torch.nn.Module,
        image: np.ndarray,
        options: TileOptions,
        device: torch.device,
        limit: _BatchLimit,
    ) -> np.ndarray:
        """Probabilities of the region (view coordinates) from the tiles of `image`."""
        if self.geometry.padded:
            return self._blend(model, image, options, device, limit)
        return self._overlap_tile(model, image, options, device, limit)

    def _overlap_tile(
        self,
        model: torch.nn.Module,
        image: np.ndarray,
        options: TileOptions,
        device: torch.device,
        limit: _BatchLimit,
    ) -> np.ndarray:
        """Valid network: each tile fills its stride-sized output region, cut to the region."""
        stride = _stride(self.geometry, options.tile_size)
        y0, y1, x0, x1 = self.region
        result = torch.zeros((y1 - y0, x1 - x0), dtype=torch.float32, device=device)
        for batch, probs in self._batches(model, image, options, device, limit):
            for (y, x), prob in zip(batch, probs, strict=True):
                ty0, ty1 = max(y, y0), min(y + stride, self.shape[0], y1)
                tx0, tx1 = max(x, x0), min(x + stride, self.shape[1], x1)
                result[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = prob[
                    ty0 - y : ty1 - y, tx0 - x : tx1 - x
                ]
        return result.cpu().numpy()

    def _blend(
        self,
        model: torch.nn.Module,
        image: np.ndarray,
        options: TileOptions,
        device: torch.device,
        limit: _BatchLimit,
    ) -> np.ndarray:
        """Padded network: overlapping tiles averaged with a Gaussian importance window."""
        tile = options.tile_size
        y0, y1, x0, x1 = self.region
        window = torch.from_numpy(_gaussian_window(tile)).to(device=device, dtype=torch.float32)
        total = torch.zeros((y1 - y0, x1 - x0), dtype=torch.float32, device=device)
        weight = torch.zeros_like(total)
        for batch, probs in self._batches(model, image, options, device, limit):
            for (y, x), prob in zip(batch, probs, strict=True):
                ty0, ty1, tx0, tx1 = max(y, y0), min(y + tile, y1), max(x, x0), min(x + tile, x1)
                inside = (slice(ty0 - y, ty1 - y), slice(tx0 - x, tx1 - x))
                here = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
                total[here] += prob[inside] * window[inside]
                weight[here] += window[inside]
        return total.div_(weight).cpu().numpy()

    def _batches(
        self,
        model: torch.nn.Module,
        image: np.ndarray,
        options: TileOptions,
        device: torch.device,
        limit: _BatchLimit,
    ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        offset = (self.frame[0], self.frame[2])
        return _run_batches(model, image, offset, self.corners, options, device, limit)


def _frame_indices(
    source: SliceInput,
    margin: int,
    axes: tuple[tuple[int, bool], tuple[int, bool]],
    shape: tuple[int, int],
    frame: Region,
) -> tuple[np.ndarray, np.ndarray]:
    """Per view axis, the source index of every padded-frame position in `frame`.

    The view's padded frame is grown at its end by reflection (of the whole frame, so `np.pad`'s
    rule applies to both axes only when neither is a single pixel), then mapped back through the
    flip and the mirror padding.
    """
    lengths = [size + 2 * margin for size in shape]
    reflect = min(lengths) > 1
    indices = []
    for a, (axis, reversed_) in enumerate(axes):
        lo, hi = frame[2 * a], frame[2 * a + 1]
        grown = _pad_map(np.arange(lengths[a]), (0, max(0, hi - lengths[a])), reflect)
        positions = grown[lo:hi]
        if reversed_:
            positions = lengths[a] - 1 - positions
        indices.append(source.to_source[axis][positions])
    return indices[0], indices[1]


def source_box(
    geometry: Geometry, source: SliceInput, region: Region, options: TileOptions
) -> Region:
    """The source rectangle (r0, r1, c0, c1) that `predict_region` reads for `region`.

    Block-wise prediction reads it ahead of time (in one call, for all of a block's slices).
    """
    views = [_View.plan(geometry, source, region, options, k) for k in _transforms(options)]
    return _box_bounds(views)


def _box_bounds(views: list[_View]) -> Region:
    lows, highs = [np.inf, np.inf], [-np.inf, -np.inf]
    for view in views:
        for a, (axis, _) in enumerate(view.axes):
            lows[axis] = min(lows[axis], int(view.indices[a].min()))
            highs[axis] = max(highs[axis], int(view.indices[a].max()) + 1)
    return int(lows[0]), int(highs[0]), int(lows[1]), int(highs[1])


def _read_box(source: SliceInput, views: list[_View]) -> tuple[np.ndarray, tuple[int, int]]:
    """Read once the source rectangle that every view's tiles need; returns it and its corner."""
    r0, r1, c0, c1 = _box_bounds(views)
    return source.read(slice(r0, r1), slice(c0, c1)), (r0, c0)


def _take(indices: np.ndarray) -> slice | np.ndarray:
    """A slice when `indices` are consecutive (no copy), else the indices themselves."""
    if len(indices) > 1:
        step = int(indices[1] - indices[0])
        if step in (1, -1) and np.array_equal(np.diff(indices), np.full(len(indices) - 1, step)):
            stop = int(indices[-1]) + step
            return slice(int(indices[0]), None if stop < 0 else stop, step)
    return indices


def _pad_map(index: np.ndarray, widths: tuple[int, int], reflect: bool) -> np.ndarray:
    """Where np.pad puts each value: padding the index itself gives the exact mirror rule."""
    return np.pad(index, widths, mode="reflect" if reflect and len(index) > 1 else "edge")


def _tile_starts(geometry: Geometry, size: int, options: TileOptions) -> list[int]:
    """Tile corners along one axis of a slice of `size` pixels (padded-frame coordinates)."""
    tile = options.tile_size
    if geometry.padded:
        grown = max(size, tile)
        step = max(1, round(tile * (1.0 - options.overlap)))
        return _window_starts(grown, tile, step)
    return list(range(0, size, _stride(geometry, tile)))


def _reach(geometry: Geometry, tile: int) -> int:
    """How far past its corner a tile writes output: a stride (valid) or the whole tile."""
    return tile if geometry.padded else _stride(geometry, tile)


def _stride(geometry: Geometry, tile: int) -> int:
    """Output stride of a valid network's tiles: its output size, cut to the pooling grid."""
    out_tile = geometry.output_size(tile)
    stride = out_tile - out_tile % geometry.multiple
    if stride <= 0:
        raise ValueError(
            f"predict.tile_size {tile} gives an output of {out_tile} px; use a larger tile"
        )
    return stride


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
    offset: tuple[int, int],
    corners: list[tuple[int, int]],
    options: TileOptions,
    device: torch.device,
    limit: _BatchLimit,
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """Yield (corners, membrane probabilities on `device`) batch by batch; tiles are cut lazily.

    `image` holds the padded frame from `offset` on. Probabilities stay on the device and are
    stitched there, so a GPU is not stalled by a copy to the host after every batch.

    Out of memory, the same tiles are retried in batches half the size (down to one tile), so a
    batch size tuned on a larger GPU still finishes; `limit` remembers the size that fitted.
    """
    tile = options.tile_size
    start = 0
    while start < len(corners):
        batch = corners[start : start + limit.size]
        tiles = [
            image[y - offset[0] : y - offset[0] + tile, x - offset[1] : x - offset[1] + tile]
            for y, x in batch
        ]
        try:
            probs = _run_batch(model, tiles, options, device)
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
    model: torch.nn.Module, tiles: list[np.ndarray], options: TileOptions, device: torch.device
) -> torch.Tensor:
    """Membrane probabilities (N, tile', tile'), float32 on `device`, of a batch of tiles."""
    autocast = (
        torch.autocast(device_type=device.type, dtype=options.autocast)
        if options.autocast is not None
        else contextlib.nullcontext()
    )
    dtype = next(model.parameters()).dtype
    inputs = torch.from_numpy(np.stack(tiles)).to(device=device, dtype=dtype).unsqueeze(1)
    if options.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast:
        logits = model(inputs)
    return torch.softmax(logits.float(), dim=1)[:, 1]


def _release_memory(device: torch.device) -> None:
    """Hand the failed batch's cached blocks back so the smaller retry can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _view_axes(k: int) -> tuple[tuple[int, bool], tuple[int, bool]]:
    """For the k-th flip/rotation: (source axis, reversed) of each of its two axes."""
    probe = _dihedral(np.arange(6).reshape(2, 3), k)
    rows, cols = np.divmod(probe, 3)
    if probe.shape == (2, 3):
        return (0, bool(rows[0, 0] == 1)), (1, bool(cols[0, 0] == 2))
    return (1, bool(cols[0, 0] == 2)), (0, bool(rows[0, 0] == 1))


def _dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 flips/rotations (k = 0 is the identity)."""
    rotated = np.rot90(array, k % 4)
    return rotated[:, ::-1] if k >= 4 else rotated


def _dihedral_inverse(array: np.ndarray, k: int) -> np.ndarray:
    unflipped = array[:, ::-1] if k >= 4 else array
    return np.rot90(unflipped, -(k % 4))
