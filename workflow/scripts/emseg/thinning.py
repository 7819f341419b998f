"""The ISBI 2012 challenge's thinning of a binary proposal: Fiji's WatershedTransform2D(cell, 4).

A module of its own, without the scoring's pandas, because segmentation uses it too (the
`threshold` method is the challenge's cut and this thinning) and every segmentation job imports it.
Procedure and departures: emseg.metrics.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_FOUR = ndimage.generate_binary_structure(2, 1)


def thinned_proposal(cell: np.ndarray) -> np.ndarray:
    """Segments of a binary cell mask after the challenge's thinning; 0 = boundary line.

    The result equals Fiji's `WatershedTransform2D(binaryProposal, 4)` (checked pixel for pixel
    against a line-by-line port in tests/fiji_watershed.py). That flooding is a breadth-first
    search from the cells over the membrane, layer by layer; a membrane pixel takes the one cell
    label among its 4-neighbours already labelled when it leaves the queue, and becomes line
    (0) when there are two or none. The queue order decides only between pixels of one layer
    that touch each other (where two fronts meet), so those few are resolved one by one.
    """
    cell = np.asarray(cell, dtype=bool)
    seeds, count = ndimage.label(cell, _FOUR)
    if count == 0:  # Fiji: with no basin the whole boundary is one new minimum, one segment
        return np.ones(cell.shape, np.int32)
    if bool(cell.all()):
        return seeds.astype(np.int32)
    height, width = cell.shape
    stride = width + 2
    labels = np.full((height + 2) * stride, -1, np.int64)  # padded, row-major; -1 = unlabelled
    labels.reshape(height + 2, stride)[1:-1, 1:-1][cell] = seeds[cell]
    unvisited = np.zeros_like(labels, dtype=bool)
    unvisited.reshape(height + 2, stride)[1:-1, 1:-1] = ~cell
    offsets = np.array([-1, -stride, 1, stride])  # Fiji's neighbour order: left, up, right, down
    rank = np.full_like(labels, -1)  # a pixel's place in the queue of its layer, -1 elsewhere
    layer = _first_layer(cell, stride)
    while layer.size:
        unvisited[layer] = False
        neighbours = layer[:, None] + offsets
        rank[layer] = np.arange(layer.size)
        _label_layer(labels, layer, neighbours, rank[neighbours])
        rank[layer] = -1
        following = neighbours.ravel()
        following = following[unvisited[following]]
        found, first = np.unique(following, return_index=True)
        layer = found[np.argsort(first)]  # discovery order = the FIFO order of the next layer
    out = labels.reshape(height + 2, stride)[1:-1, 1:-1]
    return np.maximum(out, 0).astype(np.int32)


def _first_layer(cell: np.ndarray, stride: int) -> np.ndarray:
    """Padded flat indices of membrane pixels touching a cell, in Fiji's column-major order."""
    touching = ~cell & ndimage.binary_dilation(cell, _FOUR)
    xs, ys = np.nonzero(touching.T)
    return (ys + 1) * stride + xs + 1


def _label_layer(
    labels: np.ndarray, layer: np.ndarray, neighbours: np.ndarray, peer_rank: np.ndarray
) -> None:
    """Label one breadth-first layer as Fiji's queue does: the single neighbouring label, else 0.

    `labels` holds the earlier layers; `peer_rank` is the queue rank of each neighbour in this
    layer (-1 if it is not in it). A pixel whose earlier neighbours in the layer cannot bring a
    second label is decided at once; the rest (where fronts meet) one by one, in queue order.
    """
    seen = labels[neighbours]
    low = np.where(seen > 0, seen, np.iinfo(np.int64).max).min(axis=1)
    high = np.maximum(seen.max(axis=1), 0)
    single = low == high  # exactly one label among the earlier layers' neighbours
    several = (high > 0) & ~single
    earlier = (peer_rank >= 0) & (peer_rank < np.arange(layer.size)[:, None])
    peer = np.where(earlier, peer_rank, 0)
    harmless = ~earlier | several[peer] | (single[peer] & (high[peer] == high[:, None]))
    settled = several | (single & harmless.all(axis=1)) | ~earlier.any(axis=1)
    labels[layer[settled]] = np.where(single, high, 0)[settled]
    for index in np.flatnonzero(~settled).tolist():  # fronts meet: the queue order decides
        found = {int(labels[q]) for q in neighbours[index].tolist()} - {-1, 0}
        labels[layer[index]] = found.pop() if len(found) == 1 else 0
