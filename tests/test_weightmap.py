"""Weight map vs a brute-force evaluation of the U-Net formula over all pixel pairs."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label as connected_components

from emseg.weightmap import class_weight_map, two_nearest_cell_distances, unet_weight_map

ISBI_LABEL = Path("/work/shared/data/isbi2012/train/label/0.png")


def brute_force(label: np.ndarray, w0: float, sigma: float, class_balance: bool) -> np.ndarray:
    """Direct formula: all pixel-to-cell-pixel distances, min per cell, two smallest per pixel."""
    cells, n_cells = connected_components(label == 0, connectivity=1, return_num=True)
    pixels = np.argwhere(np.ones(label.shape, bool)).astype(float)
    per_cell = np.full((max(n_cells, 2), pixels.shape[0]), np.inf)
    for k in range(1, n_cells + 1):
        members = np.argwhere(cells == k).astype(float)
        diff = pixels[:, None, :] - members[None, :, :]
        per_cell[k - 1] = np.sqrt((diff**2).sum(-1)).min(axis=1)
    per_cell.sort(axis=0)
    d1, d2 = per_cell[0].reshape(label.shape), per_cell[1].reshape(label.shape)
    with np.errstate(invalid="ignore"):
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border = np.where((label == 1) & np.isfinite(d2), border, 0.0)
    if class_balance:
        freq = {c: np.mean(label == c) for c in (0, 1)}
        top = max(freq.values())
        wc = np.where(label == 1, top / freq[1] if freq[1] else 1, top / freq[0] if freq[0] else 1)
    else:
        wc = np.ones(label.shape)
    return wc + border


def random_label(seed: int, shape: tuple[int, int] = (24, 28)) -> np.ndarray:
    """Random membrane network: thresholded smooth noise gives many cells of varied shapes."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 1.5)
    return (np.abs(noise) < 0.08).astype(np.uint8)


def two_cells_with_line(shape: tuple[int, int] = (9, 11), col: int = 5) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[:, col] = 1
    return label


CASES = {
    "random0": random_label(0),
    "random1": random_label(1),
    "random2": random_label(2, (30, 20)),
    "no_cell": np.ones((7, 9), np.uint8),
    "one_cell": np.pad(np.zeros((4, 5), np.uint8), 2, constant_values=1),
    "no_membrane": np.zeros((6, 6), np.uint8),
    "border_cells": two_cells_with_line(),
    "diagonal_touch": np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], np.uint8),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("w0", "sigma", "balance"), [(10.0, 5.0, True), (3.0, 2.0, False)])
def test_matches_brute_force(name: str, w0: float, sigma: float, balance: bool) -> None:
    label = CASES[name]
    got = unet_weight_map(label, w0=w0, sigma=sigma, class_balance=balance)
    assert got.dtype == np.float32 and got.shape == label.shape
    np.testing.assert_allclose(got, brute_force(label, w0, sigma, balance), rtol=1e-6, atol=1e-6)


def test_cutoff_active_still_matches_within_tail() -> None:
    # sigma = 1 -> cutoff ~5.3 px, far smaller than this 40x40 image, so the bounding-box
    # restriction drops pairs of distant cells; the dropped terms must be below 1e-6 * w0.
    label = random_label(3, (40, 40))
    w0 = 10.0
    got = unet_weight_map(label, w0=w0, sigma=1.0)
    np.testing.assert_allclose(got, brute_force(label, w0, 1.0, True), rtol=1e-6, atol=1e-6 * w0)


def test_known_value_for_one_pixel_membrane_line() -> None:
    # Membrane column between two cells: d1 = d2 = 1 on the line.
    label = two_cells_with_line((8, 9), col=4)
    got = unet_weight_map(label, w0=10.0, sigma=5.0)
    membrane_weight = (8 * 8 / 72) / (8 / 72)  # cells (64 px) are the frequent class
    expected = membrane_weight + 10.0 * math.exp(-4 / 50)
    np.testing.assert_allclose(got[:, 4], expected, rtol=1e-6)
    np.testing.assert_allclose(np.delete(got, 4, axis=1), 1.0)


def test_diagonal_contact_makes_two_cells() -> None:
    label = np.array([[0, 1], [1, 0]], np.uint8)
    got = unet_weight_map(label, w0=1.0, sigma=1.0, class_balance=False)
    np.testing.assert_allclose(got[0, 1], 1.0 + math.exp(-2.0), rtol=1e-6)


def test_distances_exact_without_cutoff() -> None:
    label = CASES["random0"]
    d1, d2 = two_nearest_cell_distances(label == 0)
    cells = connected_components(label == 0, connectivity=1)
    y, x = np.indices(label.shape)
    per_cell = np.sort(
        [
            np.min(np.hypot(y[..., None] - yy, x[..., None] - xx), axis=-1)
            for yy, xx in (np.nonzero(cells == k) for k in range(1, cells.max() + 1))
        ],
        axis=0,
    )
    np.testing.assert_allclose(d1, per_cell[0])
    np.testing.assert_allclose(d2, per_cell[1])


def test_class_weights_inverse_frequency() -> None:
    label = np.zeros((4, 5), np.uint8)
    label[0, :] = 1  # 5 membrane, 15 cell
    w = class_weight_map(label)
    np.testing.assert_allclose(w[0], 3.0)
    np.testing.assert_allclose(w[1:], 1.0)


@pytest.mark.parametrize(
    ("label", "kwargs", "match"),
    [
        (np.full((3, 3), 255, np.uint8), {}, "label"),
        (np.zeros((2, 3, 3), np.uint8), {}, "label"),
        (np.zeros((3, 3), np.uint8), {"sigma": 0.0}, "sigma"),
        (np.zeros((3, 3), np.uint8), {"w0": -1.0}, "w0"),
    ],
)
def test_bad_input(label: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        unet_weight_map(label, **kwargs)


@pytest.mark.skipif(not ISBI_LABEL.exists(), reason="ISBI 2012 data not available")
def test_fast_on_real_isbi_slice() -> None:
    from PIL import Image

    label = (np.asarray(Image.open(ISBI_LABEL)) == 0).astype(np.uint8)
    start = time.perf_counter()
    weights = unet_weight_map(label)
    elapsed = time.perf_counter() - start
    print(f"unet_weight_map on {label.shape} ISBI slice: {elapsed * 1000:.1f} ms")
    assert elapsed < 2.0
    assert weights.min() >= 1.0 and weights.max() > 5.0  # border term present between cells
