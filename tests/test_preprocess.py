"""Tests of emseg.preprocess: percentile normalisation and overlap-tile mirror padding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emseg.models.geometry import geometry_for
from emseg.preprocess import Normalization, fit_normalization, mirror_pad


def raw_stack(rng: np.random.Generator) -> np.ndarray:
    """A uint8 stack with a few saturated and dead pixels that min-max scaling would follow."""
    stack = rng.normal(120, 25, (3, 20, 24)).clip(0, 255).astype(np.uint8)
    stack[0, 0, :3] = 255
    stack[2, 5, :3] = 0
    return stack


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Source index of a mirror without border repeat: period 2 * (size - 1), folded back."""
    period = 2 * (size - 1)
    folded = np.mod(index, period)
    return np.where(folded < size, folded, period - folded)


def reference_pad(array: np.ndarray, margin: int) -> np.ndarray:
    """Mirror padding of the last two axes written from the index formula, not from np.pad."""
    height, width = array.shape[-2:]
    rows = reflect_index(np.arange(-margin, height + margin), height)
    cols = reflect_index(np.arange(-margin, width + margin), width)
    return array[..., rows[:, None], cols[None, :]]


# --- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(("lower", "upper"), [(1.0, 99.0), (0.0, 100.0), (5.0, 60.0)])
def test_fit_maps_percentiles_to_zero_and_one(lower: float, upper: float) -> None:
    stack = raw_stack(np.random.default_rng(0))
    norm = fit_normalization(stack, lower, upper)
    expected_low, expected_high = np.percentile(stack, [lower, upper])
    assert norm.low == pytest.approx(expected_low)
    assert norm.high == pytest.approx(expected_high)
    assert (norm.lower_percentile, norm.upper_percentile) == (lower, upper)
    scaled = norm.apply(stack)
    assert scaled.dtype == np.float32
    assert scaled.shape == stack.shape
    np.testing.assert_allclose(np.percentile(scaled, [lower, upper]), [0.0, 1.0], atol=1e-5)
    direct = (stack.astype(np.float64) - expected_low) / (expected_high - expected_low)
    np.testing.assert_allclose(scaled, direct, rtol=1e-5, atol=1e-6)


def test_apply_does_not_clip() -> None:
    norm = Normalization(low=10.0, high=20.0, lower_percentile=1.0, upper_percentile=99.0)
    np.testing.assert_allclose(norm.apply(np.array([0, 10, 15, 20, 40])), [-1, 0, 0.5, 1, 3])


def test_fit_on_uint16_stack() -> None:
    stack = np.random.default_rng(1).integers(0, 65535, (2, 16, 16), dtype=np.uint16)
    norm = fit_normalization(stack)
    np.testing.assert_allclose(np.percentile(norm.apply(stack), [1, 99]), [0, 1], atol=1e-5)


def test_constant_stack_does_not_divide_by_zero() -> None:
    stack = np.full((2, 5, 5), 77, np.uint8)
    norm = fit_normalization(stack)
    assert norm.high > norm.low
    scaled = norm.apply(stack)
    assert np.isfinite(scaled).all()
    np.testing.assert_array_equal(scaled, 0.0)


@pytest.mark.parametrize(
    ("lower", "upper"), [(50.0, 50.0), (99.0, 1.0), (-1.0, 99.0), (1.0, 100.5)]
)
def test_bad_percentiles_raise(lower: float, upper: float) -> None:
    with pytest.raises(ValueError, match="percentiles"):
        fit_normalization(np.zeros((1, 4, 4)), lower, upper)


def test_empty_stack_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit_normalization(np.zeros((0, 4, 4), np.uint8))


def test_normalization_dict_round_trip() -> None:
    norm = fit_normalization(raw_stack(np.random.default_rng(2)), 2.0, 98.0)
    record = json.loads(json.dumps(norm.to_dict()))  # as stored in the run's JSON record
    assert set(record) == {"low", "high", "lower_percentile", "upper_percentile"}
    assert Normalization.from_dict(record) == norm


def test_from_dict_accepts_strings_and_ignores_extra_keys() -> None:
    record = {"low": "1", "high": 3, "lower_percentile": 1, "upper_percentile": 99, "note": "x"}
    norm = Normalization.from_dict(record)
    assert norm == Normalization(low=1.0, high=3.0, lower_percentile=1.0, upper_percentile=99.0)
    assert isinstance(norm.high, float)


def test_from_dict_missing_key_raises() -> None:
    with pytest.raises(ValueError, match="high"):
        Normalization.from_dict({"low": 0.0, "lower_percentile": 1.0, "upper_percentile": 99.0})


# --- mirror padding ------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [1, 3, 6])
@pytest.mark.parametrize("shape", [(7, 9), (2, 7, 9), (2, 3, 5, 4)])
def test_mirror_pad_equals_numpy_reflect(shape: tuple[int, ...], margin: int) -> None:
    array = np.random.default_rng(margin).random(shape).astype(np.float32)
    padded = mirror_pad(array, margin)
    widths = [(0, 0)] * (len(shape) - 2) + [(margin, margin)] * 2
    np.testing.assert_array_equal(padded, np.pad(array, widths, mode="reflect"))
    np.testing.assert_array_equal(padded, reference_pad(array, margin))
    assert padded.shape[:-2] == shape[:-2]  # leading axes untouched
    assert padded.dtype == array.dtype


def test_mirror_pad_does_not_repeat_the_border_pixel() -> None:
    row = np.array([[1, 2, 3, 4]])
    padded = mirror_pad(np.repeat(row, 3, axis=0), 2)
    np.testing.assert_array_equal(padded[0], [3, 2, 1, 2, 3, 4, 3, 2])


def test_mirror_pad_margin_zero_returns_input() -> None:
    array = np.arange(12).reshape(3, 4)
    assert mirror_pad(array, 0) is array


@pytest.mark.parametrize(("shape", "margin"), [((4, 5), 9), ((3, 2), 7), ((2, 6, 5), 13)])
def test_mirror_pad_larger_than_slice_reflects_repeatedly(
    shape: tuple[int, ...], margin: int
) -> None:
    array = np.random.default_rng(0).integers(0, 100, shape)
    padded = mirror_pad(array, margin)
    assert padded.shape[-2:] == (shape[-2] + 2 * margin, shape[-1] + 2 * margin)
    np.testing.assert_array_equal(padded, reference_pad(array, margin))


def test_mirror_pad_one_pixel_axis_repeats_it() -> None:
    row = np.array([[4, 5, 6]])
    padded = mirror_pad(row, 2)
    assert padded.shape == (5, 7)
    np.testing.assert_array_equal(padded, np.tile([6, 5, 4, 5, 6, 5, 4], (5, 1)))
    np.testing.assert_array_equal(mirror_pad(np.array([[9]]), 3), np.full((7, 7), 9))


def test_mirror_pad_negative_margin_raises() -> None:
    with pytest.raises(ValueError, match="margin"):
        mirror_pad(np.zeros((3, 3)), -1)


def test_mirror_pad_needs_two_axes() -> None:
    with pytest.raises(ValueError, match="2 dimensions"):
        mirror_pad(np.zeros(5), 2)


def test_paper_unet_margin_pads_512_to_696() -> None:
    geometry = geometry_for({"arch": "unet", "padding": "valid", "depth": 4})
    assert geometry.margin == 92  # 572 input -> 388 output in Ronneberger et al. 2015
    assert geometry.output_size(572) == 388
    slice_ = np.random.default_rng(3).integers(0, 256, (1, 512, 512), dtype=np.uint8)
    padded = mirror_pad(slice_, geometry.margin)
    assert padded.shape == (1, 696, 696)
    np.testing.assert_array_equal(padded[:, 92:-92, 92:-92], slice_)
    np.testing.assert_array_equal(padded[0, 92 - 1, 92:-92], slice_[0, 1])  # mirrored, no repeat
