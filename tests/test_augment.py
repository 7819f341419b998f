"""Augmentation: determinism, identity, exact pixel moves, elastic displacement statistics."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from scipy import ndimage

from emseg.augment import (
    AugmentConfig,
    AugmentParams,
    apply_params,
    augment_pair,
    elastic_field,
    sample_params,
    sampling_coordinates,
)

ALL_OFF = AugmentConfig(
    elastic=False, rotate=False, shift=False, shear=False, zoom=False, flip=False, intensity=False
)
STRONG = AugmentConfig(shear=True, gamma=0.3, elastic_sigma=6.0)


def sample_pair(shape: tuple[int, int] = (48, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random image with a thresholded label, so structures are larger than a pixel."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.random(shape), 2.0).astype(np.float32)
    label = (image > np.median(image)).astype(np.uint8)
    return image, label


def only(**switches: bool | float) -> AugmentConfig:
    return dataclasses.replace(ALL_OFF, **switches)


def test_same_seed_bit_identical_different_seed_differs() -> None:
    image, label = sample_pair()
    a = augment_pair(image, label, np.random.default_rng(7), STRONG)
    b = augment_pair(image, label, np.random.default_rng(7), STRONG)
    c = augment_pair(image, label, np.random.default_rng(8), STRONG)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_output_shapes_dtypes_and_binary_label() -> None:
    image, label = sample_pair()
    rng = np.random.default_rng(1)
    for _ in range(5):
        out_image, out_label = augment_pair(image, label, rng, STRONG)
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert out_label.shape == label.shape and out_label.dtype == np.uint8
        assert set(np.unique(out_label)) <= {0, 1}
        assert np.isfinite(out_image).all()


@pytest.mark.parametrize(
    "cfg",
    [
        ALL_OFF,
        AugmentConfig(
            elastic_sigma=0.0,
            rotate_degrees=0.0,
            shift_fraction=0.0,
            shear=True,
            shear_degrees=0.0,
            zoom_range=0.0,
            flip=False,
            brightness=0.0,
            contrast=0.0,
            gamma=0.0,
        ),
    ],
    ids=["switches_off", "magnitudes_zero"],
)
def test_identity(cfg: AugmentConfig) -> None:
    image, label = sample_pair()
    out_image, out_label = augment_pair(image, label, np.random.default_rng(3), cfg)
    assert np.array_equal(out_image, image) and np.array_equal(out_label, label)
    assert out_image is not image and out_label is not label


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (AugmentParams(angle_deg=90.0), lambda a: np.rot90(a, 1)),
        (AugmentParams(angle_deg=-90.0), lambda a: np.rot90(a, -1)),
        (AugmentParams(angle_deg=180.0), lambda a: np.rot90(a, 2)),
        (AugmentParams(flip_rows=True), lambda a: a[::-1, :]),
        (AugmentParams(flip_cols=True), lambda a: a[:, ::-1]),
        (AugmentParams(flip_rows=True, flip_cols=True), lambda a: a[::-1, ::-1]),
    ],
)
def test_exact_pixel_moves(params: AugmentParams, expected) -> None:
    image, label = sample_pair((32, 32))
    out_image, out_label = apply_params(image, label, params)
    assert np.array_equal(out_label, expected(label))
    np.testing.assert_allclose(out_image, expected(image), atol=1e-5)


def test_integer_shift_moves_content() -> None:
    image, label = sample_pair((40, 36))
    out_image, out_label = apply_params(image, label, AugmentParams(shift=(3.0, -2.0)))
    assert np.array_equal(out_label[3:, :-2], label[:-3, 2:])
    np.testing.assert_allclose(out_image[3:, :-2], image[:-3, 2:], atol=1e-5)


def test_random_shift_matches_scipy_shift() -> None:
    image, label = sample_pair((40, 36))
    cfg = only(shift=True, shift_fraction=0.1)
    params = sample_params(image.shape, np.random.default_rng(5), cfg)
    dr, dc = params.shift
    assert abs(dr) <= 4.0 and abs(dc) <= 3.6 and (dr, dc) != (0.0, 0.0)
    out_image, _ = augment_pair(image, label, np.random.default_rng(5), cfg)
    reference = ndimage.shift(image, (dr, dc), order=3, mode="reflect")
    np.testing.assert_allclose(out_image, reference, atol=1e-5)


def test_zoom_scales_about_centre() -> None:
    # Sampling coordinates of a 2x zoom-in are half-way between the centre and the pixel.
    coords = sampling_coordinates((9, 9), AugmentParams(scale=2.0))
    rows, cols = np.indices((9, 9))
    np.testing.assert_allclose(coords[0], 4 + (rows - 4) / 2)
    np.testing.assert_allclose(coords[1], 4 + (cols - 4) / 2)


def test_elastic_field_is_bicubic_zoom_through_grid_nodes() -> None:
    grid = np.random.default_rng(0).standard_normal((2, 3, 3))
    field = elastic_field(grid, 65, 41)
    reference = np.stack(
        [ndimage.zoom(g, (65 / 3, 41 / 3), order=3, mode="mirror", grid_mode=False) for g in grid]
    )
    np.testing.assert_allclose(field, reference, atol=1e-12)
    np.testing.assert_allclose(field[:, ::32, ::20], grid, atol=1e-12)  # interpolating spline


def test_elastic_displacement_std_about_sigma() -> None:
    sigma, size = 10.0, 65
    cfg = only(elastic=True, elastic_sigma=sigma)
    rng = np.random.default_rng(11)
    identity = np.indices((size, size)).astype(float)
    disp = np.stack(
        [
            sampling_coordinates((size, size), sample_params((size, size), rng, cfg)) - identity
            for _ in range(300)
        ]
    )
    at_nodes = disp[:, :, ::32, ::32]
    assert abs(at_nodes.std() / sigma - 1) < 0.1
    assert 0.6 * sigma < disp.std() <= sigma  # spline smoothing lowers the variance between nodes
    assert abs(disp.mean()) < 0.1 * sigma


def test_draws_do_not_depend_on_switches() -> None:
    a = sample_params((32, 32), np.random.default_rng(4), STRONG)
    b = sample_params(
        (32, 32), np.random.default_rng(4), dataclasses.replace(STRONG, elastic=False)
    )
    assert a.angle_deg == b.angle_deg and a.shift == b.shift and a.contrast == b.contrast
    assert a.elastic is not None and b.elastic is None


def test_intensity_changes_image_only() -> None:
    image, label = sample_pair()
    cfg = only(intensity=True, brightness=0.2, contrast=0.0)
    out_image, out_label = augment_pair(image, label, np.random.default_rng(2), cfg)
    assert np.array_equal(out_label, label)
    offset = out_image - image
    assert 0 < abs(offset[0, 0]) <= 0.2
    np.testing.assert_allclose(offset, offset[0, 0], atol=1e-6)


def test_gamma_keeps_range_and_order() -> None:
    image, label = sample_pair()
    params = AugmentParams(gamma=0.7)
    out_image, _ = apply_params(image, label, params)
    assert out_image.min() == pytest.approx(image.min()) and out_image.max() == pytest.approx(
        image.max()
    )
    order = np.argsort(image, axis=None)
    assert np.all(np.diff(out_image.ravel()[order]) >= 0)
    assert not np.allclose(out_image, image)


def test_from_mapping_accepts_ints_for_floats() -> None:
    cfg = AugmentConfig.from_mapping({"elastic_sigma": 4, "rotate": False, "elastic_grid": 5})
    assert cfg.elastic_sigma == 4.0 and isinstance(cfg.elastic_sigma, float)
    assert cfg.rotate is False and cfg.elastic_grid == 5
    assert AugmentConfig.from_mapping({}) == AugmentConfig()


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ({"elastc": True}, "elastc"),
        ({"rotate": "yes"}, "rotate"),
        ({"elastic_grid": 2.5}, "elastic_grid"),
        ({"elastic_grid": True}, "elastic_grid"),
        ({"elastic_grid": 1}, "elastic_grid"),
        ({"brightness": True}, "brightness"),
        ({"zoom_range": "0.1"}, "zoom_range"),
        ({"zoom_range": 1.0}, "zoom_range"),
        ({"rotate_degrees": -5}, "rotate_degrees"),
        ({"elastic_sigma": float("nan")}, "elastic_sigma"),
        ({"shear_degrees": 90}, "shear_degrees"),
    ],
)
def test_from_mapping_rejects(mapping: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AugmentConfig.from_mapping(mapping)


def test_from_mapping_rejects_non_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        AugmentConfig.from_mapping([("flip", True)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "label", "match"),
    [
        (np.zeros((4, 4, 1), np.float32), np.zeros((4, 4), np.uint8), "image"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), "floating"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 5), np.uint8), "label shape"),
        (np.zeros((4, 4), np.float32), np.full((4, 4), 255, np.uint8), "0 and 1"),
    ],
)
def test_bad_input(image: np.ndarray, label: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        augment_pair(image, label, np.random.default_rng(0), AugmentConfig())


def test_time_per_512_sample() -> None:
    image, label = sample_pair((512, 512))
    rng = np.random.default_rng(0)
    augment_pair(image, label, rng, STRONG)  # warm the coordinate caches
    start = time.perf_counter()
    for _ in range(5):
        augment_pair(image, label, rng, STRONG)
    per_sample = (time.perf_counter() - start) / 5
    print(f"augment_pair 512x512, all transforms on: {per_sample * 1000:.1f} ms/sample")
    assert per_sample < 1.0
