"""The segmentation stage: hand-made cells, scores of label images, ids, the TIFF, settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import yaml
from scipy import ndimage
from skimage.segmentation import watershed

from emseg.io import read_stack
from emseg.metrics import label_scores, score_stack
from emseg.plots import split_merge_masks
from emseg.segment_settings import METHODS, SegmentSettings
from emseg.segmentation import (
    _flood_unlabelled,
    _interior_seeds,
    segment_slice,
    segment_stack,
    write_segmentation,
)
from emseg.settings import describe_schema_error
from emseg.synthetic import synthetic_stack

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())


def cells_membrane(size: int = 60, lines: tuple[int, ...] = (20, 40), width: int = 3) -> np.ndarray:
    """Membrane (1) bands `width` px wide on the given rows and columns: a 3x3 grid of cells."""
    membrane = np.zeros((size, size), np.uint8)
    for line in lines:
        membrane[line : line + width, :] = 1
        membrane[:, line : line + width] = 1
    return membrane


def seg_scores(labels: np.ndarray, membrane: np.ndarray) -> dict[str, float]:
    return label_scores(labels[None], membrane[None]).iloc[0].to_dict()


@pytest.mark.parametrize("method", METHODS)
def test_a_perfect_map_gives_the_true_cells(method: str) -> None:
    membrane = cells_membrane()
    labels = segment_slice(membrane.astype(np.float32), SegmentSettings(method=method))
    assert labels.dtype == np.uint32 and labels.max() == 9
    assert set(np.unique(labels)) == set(range(10))
    scores = seg_scores(labels, membrane)
    assert scores["seg_vrand"] == 1.0 and scores["seg_vinfo"] == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_false_membrane_through_one_cell_is_one_split(method: str) -> None:
    membrane = cells_membrane()
    prob = membrane.astype(np.float32)
    prob[:20, 8:11] = 1.0  # a strong wall across the top-left cell only
    labels = segment_slice(prob, SegmentSettings(method=method))
    assert labels.max() == 10
    scores = seg_scores(labels, membrane)
    assert scores["seg_vrand_split"] < 1.0 and scores["seg_vrand_merge"] == 1.0
    assert scores["seg_vinfo_split"] < 1.0 and scores["seg_vinfo_merge"] == 1.0


def gap_map(gap: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid with a weak stretch (probability `gap`) in the wall between two cells."""
    membrane = cells_membrane()
    prob = membrane.astype(np.float32)
    prob[8:12, 20:23] = gap
    return prob, membrane


def test_a_gap_in_a_membrane_is_one_merge_for_the_threshold_cut() -> None:
    prob, membrane = gap_map(0.4)
    labels = segment_slice(prob, SegmentSettings(method="threshold", threshold=0.5))
    assert labels.max() == 8
    scores = seg_scores(labels, membrane)
    assert scores["seg_vrand_merge"] < 1.0 and scores["seg_vrand_split"] == 1.0


@pytest.mark.parametrize("method", ["watershed", "multicut"])
def test_seeded_methods_close_the_gap(method: str) -> None:
    prob, membrane = gap_map(0.4)
    labels = segment_slice(prob, SegmentSettings(method=method, sigma=0.0))
    assert labels.max() == 9
    assert seg_scores(labels, membrane)["seg_vrand"] > 0.99


def test_boundaries_are_one_pixel_lines_between_cells() -> None:
    membrane = cells_membrane()
    for method in ("watershed", "multicut"):
        labels = segment_slice(membrane.astype(np.float32), SegmentSettings(method=method))
        # every pair of 4-neighbours in different cells has a 0 between: none touch directly
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            assert not np.any((a != b) & (a > 0) & (b > 0))
        assert np.count_nonzero(labels == 0) < np.count_nonzero(membrane)  # thinner than walls


def test_min_size_floods_small_segments_away() -> None:
    membrane = cells_membrane()
    prob = membrane.astype(np.float32)
    prob[4:9, 4:9] = 1.0
    prob[5:8, 5:8] = 0.0  # a 3 x 3 hole inside a ring: its own cell unless it is too small
    kept = segment_slice(prob, SegmentSettings(method="watershed", sigma=0.0, min_size=5))
    assert kept.max() == 10
    flooded = segment_slice(prob, SegmentSettings(method="watershed", sigma=0.0, min_size=40))
    assert flooded.max() == 9


def network_like_map(seed: int, quantize: bool) -> np.ndarray:
    """A smooth, noisy membrane probability of synthetic EM cells (uint8 steps as apply stores)."""
    _, labels = synthetic_stack(1, 160, 200, seed, cell_size=24.0)
    prob = ndimage.gaussian_filter(labels[0].astype(np.float64), 1.2) * 1.6
    prob = np.clip(prob + np.random.default_rng(seed).normal(0, 0.05, prob.shape), 0, 1)
    return np.rint(prob * 255) / 255 if quantize else prob


@pytest.mark.parametrize("quantize", [False, True])
def test_the_flood_of_unlabelled_pixels_equals_skimages_whole_watershed(quantize: bool) -> None:
    """Both floods of the watershed (from the seeds, then over small segments) give skimage's
    labels, although only the unlabelled pixels and their frontier enter the queue."""
    for seed in range(4):
        height = ndimage.gaussian_filter(network_like_map(seed, quantize), 2.0)
        seeds = _interior_seeds(height, 0.4)
        whole = watershed(height, seeds, connectivity=1)
        np.testing.assert_array_equal(_flood_unlabelled(height, seeds), whole)
        small = np.bincount(whole.ravel())[whole] < 100
        assert small.any() and not small.all()
        markers = np.where(small, 0, whole)
        np.testing.assert_array_equal(
            _flood_unlabelled(height, markers), watershed(height, markers, connectivity=1)
        )


def test_stack_ids_are_unique_across_slices_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    stack = np.stack([cells_membrane(), cells_membrane(lines=(15, 35))]).astype(np.float32)
    stack = np.clip(stack + rng.normal(0, 0.05, stack.shape), 0, 1).astype(np.float32)
    for method in METHODS:
        settings = SegmentSettings(method=method)
        seen: list[int] = []
        labels = segment_stack(stack, settings, on_slice=seen.append)
        assert seen == [0, 1] and labels.dtype == np.uint32
        ids = [set(np.unique(labels[z])) - {0} for z in range(2)]
        assert ids[0].isdisjoint(ids[1])
        assert set().union(*ids) == set(range(1, labels.max() + 1))
        np.testing.assert_array_equal(labels, segment_stack(stack, settings))


def test_threshold_method_is_what_the_challenge_scores_at_that_threshold() -> None:
    rng = np.random.default_rng(0)
    membrane = cells_membrane()
    prob = np.clip(membrane + rng.normal(0, 0.3, membrane.shape), 0, 1).astype(np.float32)
    _, _, per_threshold = score_stack(prob[None], membrane[None], (0.3, 0.6))
    for t, row in zip((0.3, 0.6), per_threshold.itertuples(), strict=True):
        labels = segment_slice(prob, SegmentSettings(method="threshold", threshold=t))
        assert seg_scores(labels, membrane)["seg_vrand"] == pytest.approx(row.vrand)


def test_written_labels_read_back_as_uint32(tmp_path: Path) -> None:
    labels = np.arange(3 * 8 * 9, dtype=np.uint32).reshape(3, 8, 9) * 70_001
    path = tmp_path / "val_segmentation.tif"
    write_segmentation(path, labels)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    back = read_stack(path)
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, labels)
    with tifffile.TiffFile(path) as tif:  # a plain TIFF stack, one page per slice
        assert len(tif.pages) == 3 and not tif.is_imagej
        assert tif.pages[0].dtype == np.uint32


def test_writer_refuses_other_types(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint32"):
        write_segmentation(tmp_path / "s.tif", np.zeros((1, 4, 4), np.int64))
    assert list(tmp_path.iterdir()) == []


def test_default_settings_are_the_config_defaults() -> None:
    assert SegmentSettings() == SegmentSettings.from_config(DEFAULT["segment"])


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"method": "magic"}, "segment.method"),
        ({"threshold": 1.0}, "segment.threshold"),
        ({"beta": 0.0}, "segment.beta"),
        ({"sigma": -1.0}, "segment.sigma"),
        ({"min_size": -2}, "segment.min_size"),
    ],
)
def test_bad_settings_name_their_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        SegmentSettings(**change)
    config = copy.deepcopy(DEFAULT)
    config["segment"].update(change)
    assert describe_schema_error(config, SCHEMA).startswith(f"config key {key}:")


def test_unknown_segment_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^segment: unknown key 'seeds'"):
        SegmentSettings.from_config({"method": "watershed", "seeds": 3})
    config = copy.deepcopy(DEFAULT)
    config["segment"]["seeds"] = 3
    message = describe_schema_error(config, SCHEMA)
    assert message.startswith("config key segment:") and "seeds" in message


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4)), np.full((4, 4), 1.5), np.zeros((0, 4))])
def test_bad_probability_maps_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="prob"):
        segment_slice(bad, SegmentSettings())


def test_split_and_merge_masks_on_a_hand_made_case() -> None:
    truth = np.zeros((10, 20), int)
    truth[:, :10], truth[:, 10:] = 1, 2
    labels = np.zeros((10, 20), np.uint32)
    labels[:4, :10], labels[4:, :10] = 1, 2  # true cell 1 split 40 / 60 px
    labels[:, 10:], labels[:4, 8:10] = 3, 3  # cell 3: true cell 2 and 8 px of true cell 1
    stray = (labels == 3) & (truth == 1)
    split, merge = split_merge_masks(truth, labels, min_piece=8)
    np.testing.assert_array_equal(split, (labels == 1) | stray)  # cell 1's largest part is 2
    np.testing.assert_array_equal(merge, stray)
    split, merge = split_merge_masks(truth, labels, min_piece=9)  # the 8 px piece is a sliver
    np.testing.assert_array_equal(split, labels == 1)
    assert not merge.any()
