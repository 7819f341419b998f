"""U-Net loss weight maps (Ronneberger et al. 2015, eq. 2).

w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

Choices made here (the paper leaves them open):

* ``w_c`` is inverse class frequency normalised so that the more frequent class gets weight 1
  (on ISBI 2012 cells get 1 and membrane about 3.5). A class absent from the slice gets no pixels,
  so its weight does not matter; with ``class_balance=False`` ``w_c`` is 1 everywhere.
* A cell is a 4-connected component of cell pixels (label 0); diagonal contact does not join cells.
* The border term is evaluated on membrane pixels only (common practice): inside a cell the
  paper's formula has d1 = 0, which would put a large weight on cell pixels next to thin
  membranes instead of on the separating membrane itself.
* Pixels with fewer than two cells (no cell, one cell) get no border term (d2 = inf).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# Border-term values below _TAIL * w0 are dropped; this bounds how far from a cell we must look.
_TAIL = 1e-6


def unet_weight_map(
    label: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = True
) -> np.ndarray:
    """Per-pixel loss weights for a binary membrane label (1 = membrane, 0 = cell), float32.

    Exact up to dropping border-term values below 1e-6 * w0 (pixels whose two nearest cells are
    farther than the distance where the Gaussian has decayed that far).
    """
    label = _check_label(label)
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be a finite number >= 0, got {w0!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")

    weights = class_weight_map(label) if class_balance else np.ones(label.shape, np.float64)
    if w0 > 0:
        cutoff = sigma * math.sqrt(2.0 * math.log(1.0 / _TAIL))
        d1, d2 = two_nearest_cell_distances(label == 0, cutoff)
        near = (label == 1) & np.isfinite(d2)
        s = d1[near] + d2[near]
        weights[near] += w0 * np.exp(-(s * s) / (2.0 * sigma * sigma))
    return weights.astype(np.float32)


def class_weight_map(label: np.ndarray) -> np.ndarray:
    """Inverse class frequency per pixel, scaled so the more frequent class gets 1 (float64)."""
    label = _check_label(label)
    n_membrane = int(np.count_nonzero(label))
    n_cell = label.size - n_membrane
    n_max = max(n_membrane, n_cell)
    w_membrane = n_max / n_membrane if n_membrane else 1.0
    w_cell = n_max / n_cell if n_cell else 1.0
    return np.where(label == 1, w_membrane, w_cell)


def two_nearest_cell_distances(
    cells: np.ndarray, cutoff: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest 4-connected cell for every pixel.

    ``cells`` is a boolean (H, W) mask of cell pixels. Distances are exact Euclidean wherever they
    are <= ``cutoff`` and ``inf`` otherwise (also when fewer than one/two cells exist). Each cell's
    distance transform is computed only in its bounding box grown by ``cutoff``, which keeps the
    cost proportional to the cells' neighbourhoods instead of cells x image size.
    """
    cells = np.asarray(cells, dtype=bool)
    if cells.ndim != 2:
        raise ValueError(f"cells must be a 2-D mask, got shape {cells.shape}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be > 0, got {cutoff!r}")
    components, _ = ndimage.label(cells)  # default structure = 4-connectivity in 2-D
    d1 = np.full(cells.shape, np.inf)
    d2 = np.full(cells.shape, np.inf)
    grow = cells.shape[0] + cells.shape[1] if math.isinf(cutoff) else math.ceil(cutoff)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        window = tuple(
            slice(max(0, s.start - grow), min(n, s.stop + grow))
            for s, n in zip(box, cells.shape, strict=True)
        )
        dist = ndimage.distance_transform_edt(components[window] != index)
        dist[dist > cutoff] = np.inf
        near1, near2 = d1[window], d2[window]  # views: updated in place
        np.minimum(near2, np.maximum(near1, dist), out=near2)
        np.minimum(near1, dist, out=near1)
    return d1, d2


def _check_label(label: np.ndarray) -> np.ndarray:
    """Reject anything but a 2-D binary label so a 0/255 PNG is not silently misread."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D array, got shape {label.shape}")
    if label.size and not np.isin(label, (0, 1)).all():
        raise ValueError("label must contain only 0 (cell) and 1 (membrane)")
    return label
