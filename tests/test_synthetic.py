"""Tests of emseg.synthetic.synthetic_stack."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from emseg.synthetic import synthetic_stack


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_stack(6, 160, 176, seed=7)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def cell_count(label_slice: np.ndarray) -> int:
    """4-connected components of cell interior (ndimage.label's default 2D structure)."""
    return ndimage.label(label_slice == 0)[1]


def test_same_seed_is_identical_and_other_seeds_differ() -> None:
    first = synthetic_stack(2, 48, 64, seed=11)
    again = synthetic_stack(2, 48, 64, seed=11)
    other = synthetic_stack(2, 48, 64, seed=12)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 37), (3, 37, 53), (1, 65, 1), (2, 33, 31)])
def test_shapes_dtypes_and_binary_labels_for_any_size(shape: tuple[int, int, int]) -> None:
    images, labels = synthetic_stack(*shape, seed=0)
    assert images.shape == labels.shape == shape
    assert images.dtype == labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1}


def test_membrane_fraction_is_isbi_like() -> None:
    fractions = [synthetic_stack(1, 192, 192, seed=s)[1].mean() for s in range(4)]
    assert all(0.15 <= f <= 0.30 for f in fractions), fractions


def test_membranes_are_darker_than_cells(stack: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = stack
    membrane = images[labels == 1].astype(float).mean()
    cell = images[labels == 0].astype(float).mean()
    assert cell - membrane > 40.0, (membrane, cell)


def test_cells_are_many_closed_components() -> None:
    _, small = synthetic_stack(1, 128, 128, seed=2, cell_size=20.0)
    assert cell_count(small[0]) > 10
    # Halving the cell size should roughly quadruple the number of cells in the same area.
    _, large = synthetic_stack(1, 192, 192, seed=2, cell_size=40.0)
    _, finer = synthetic_stack(1, 192, 192, seed=2, cell_size=20.0)
    assert cell_count(finer[0]) > 2.5 * cell_count(large[0])


def test_dark_organelles_lie_inside_cells_and_are_not_membrane() -> None:
    images, labels = synthetic_stack(3, 256, 256, seed=5, noise=0.0, blur=0.0)
    found = 0
    for image, label in zip(images, labels, strict=True):
        far_inside = ndimage.distance_transform_edt(label == 0) >= 3.0
        # Cytoplasm is never this dark without an organelle (it stays above ~0.4 * 255).
        dark = far_inside & (image < 0.3 * 255)
        parts, _ = ndimage.label(dark)
        sizes = np.bincount(parts.ravel())[1:]
        found += int((sizes >= 6).sum())
        # Membrane is one wall network reaching the image border; a membrane component that
        # does not reach it would be an organelle wrongly labelled membrane.
        walls, _ = ndimage.label(label == 1, structure=np.ones((3, 3)))
        border = np.unique(np.concatenate([walls[0], walls[-1], walls[:, 0], walls[:, -1]]))
        assert set(np.unique(walls)) - {0} <= set(border)
    assert found >= 5


def test_neighbouring_slices_are_correlated(stack: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = stack
    _, unrelated = synthetic_stack(1, 160, 176, seed=8)
    adjacent = [dice(labels[z], labels[z + 1]) for z in range(len(labels) - 1)]
    assert min(adjacent) > 0.5
    assert dice(labels[0], labels[5]) < min(adjacent)
    assert dice(labels[0], unrelated[0]) < 0.35


def test_labels_do_not_depend_on_noise_or_blur_and_noise_has_its_std() -> None:
    clean_images, clean_labels = synthetic_stack(2, 64, 80, seed=4, noise=0.0, blur=0.0)
    noisy_images, noisy_labels = synthetic_stack(2, 64, 80, seed=4, noise=0.05, blur=0.0)
    _, blurred_labels = synthetic_stack(2, 64, 80, seed=4, blur=2.0)
    np.testing.assert_array_equal(clean_labels, noisy_labels)
    np.testing.assert_array_equal(clean_labels, blurred_labels)
    # Same geometry and texture, so the difference is the added noise, rounded to 8 bits.
    unclipped = (noisy_images > 0) & (noisy_images < 255)
    difference = noisy_images.astype(float) - clean_images.astype(float)
    expected = np.sqrt((0.05 * 255) ** 2 + 2 / 12)  # noise std plus two roundings
    assert difference[unclipped].std() == pytest.approx(expected, rel=0.1)
    assert abs(difference[unclipped].mean()) < 1.0


def test_blur_smooths_the_image() -> None:
    sharp, _ = synthetic_stack(1, 96, 96, seed=6, noise=0.0, blur=0.0)
    soft, _ = synthetic_stack(1, 96, 96, seed=6, noise=0.0, blur=2.0)
    roughness = [np.abs(np.diff(a[0].astype(float), axis=1)).mean() for a in (sharp, soft)]
    assert roughness[1] < 0.6 * roughness[0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_slices": 0}, "n_slices"),
        ({"height": -3}, "height"),
        ({"width": 0}, "width"),
        ({"height": 4.5}, "height"),
        ({"cell_size": 0.0}, "cell_size"),
        ({"membrane_width": (3.0, 2.0)}, "membrane_width"),
        ({"membrane_width": (0.0, 2.0)}, "membrane_width"),
        ({"noise": -0.1}, "noise"),
        ({"blur": -1.0}, "blur"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    arguments = {"n_slices": 1, "height": 8, "width": 8, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        synthetic_stack(**arguments)
