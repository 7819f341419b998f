"""Test-only port of Fiji's `WatershedTransform2D` (fiji/Trainable_Segmentation, utils/).

The ISBI 2012 evaluation (`RandError.getForegroundRestrictedRandAfterThinningStatsN2` and the
information counterpart) binarises the proposal with cell -> 0 and boundary -> 255, then thins it
with `new WatershedTransform2D(binaryProposal, 4).apply()`: a Vincent-Soille flooding without
markers. This module follows that Java code step by step, in plain Python, so that the tests can
check emseg's own thinning (`emseg.thinning.thinned_proposal`, a layer-by-layer flood in numpy)
against it. It is slow (pure Python, about a second per 512 x 512 slice) and is not used by emseg.

Details kept from the Java code because they decide the output:
- pixels are visited in ascending grey value, ties in the order they were read: x (column) in the
  outer loop, y (row) in the inner loop;
- 4-neighbours are visited in the order (x-1, y), (x, y-1), (x+1, y), (x, y+1);
- the queue is a plain FIFO, and `flag` is one variable shared by every pixel of the flooding;
- pixels of a level that no basin reaches become new minima (new labels), at every level.
"""

from __future__ import annotations

from collections import deque

import numpy as np

MASK = -2
WSHED = 0
INIT = -1
INQUEUE = -3


def _neighbours(x: int, y: int, width: int, height: int) -> list[tuple[int, int]]:
    """The in-image 4-neighbours of (x, y), in Fiji's `Neighborhood2DC4` order."""
    candidates = ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1))
    return [(u, v) for u, v in candidates if 0 <= u < width and 0 <= v < height]


def watershed_transform_2d(image: np.ndarray) -> np.ndarray:
    """Fiji's flooding of a grey image (indexed [y, x]); basins labelled 1.., dams 0."""
    height, width = image.shape
    labels = np.full((width, height), INIT, dtype=np.int64)  # tabLabels[x][y] as in Java
    # Java: list of (x, y, value) read x-major, then a stable sort by value.
    order = [(x, y) for x in range(width) for y in range(height)]
    order.sort(key=lambda xy: float(image[xy[1], xy[0]]))
    values = [float(image[y, x]) for x, y in order]
    current_label = 0
    flag = False
    start = 0
    while start < len(order):
        h = values[start]
        stop = start
        while stop < len(order) and values[stop] == h:
            stop += 1
        level = order[start:stop]
        fifo: deque[tuple[int, int]] = deque()
        for x, y in level:
            labels[x, y] = MASK
            for u, v in _neighbours(x, y, width, height):
                if labels[u, v] >= WSHED:
                    fifo.append((x, y))
                    labels[x, y] = INQUEUE
                    break
        while fifo:
            i, j = fifo.popleft()
            for u, v in _neighbours(i, j, width, height):
                if labels[u, v] > 0:
                    if labels[i, j] == INQUEUE or (labels[i, j] == WSHED and flag):
                        labels[i, j] = labels[u, v]
                    elif labels[i, j] > 0 and labels[i, j] != labels[u, v]:
                        labels[i, j] = WSHED
                        flag = False
                elif labels[u, v] == WSHED:
                    if labels[i, j] == INQUEUE:
                        labels[i, j] = WSHED
                        flag = True
                elif labels[u, v] == MASK:
                    labels[u, v] = INQUEUE
                    fifo.append((u, v))
        for x, y in level:  # new minima at level h
            if labels[x, y] != MASK:
                continue
            current_label += 1
            labels[x, y] = current_label
            fifo.append((x, y))
            while fifo:
                i, j = fifo.popleft()
                for u, v in _neighbours(i, j, width, height):
                    if labels[u, v] == MASK:
                        labels[u, v] = current_label
                        fifo.append((u, v))
        start = stop
    labels[labels == INIT] = 0
    return labels.T.copy()


def fiji_thinned_proposal(cell: np.ndarray) -> np.ndarray:
    """The challenge's thinning of a binary cell mask: cell -> 0, boundary -> 255, then flood."""
    binary = np.where(np.asarray(cell, dtype=bool), 0, 255).astype(np.uint8)
    return watershed_transform_2d(binary)
