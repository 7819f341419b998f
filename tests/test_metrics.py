"""Tests of the ISBI 2012 metrics against skimage, pair counting and hand-computed cases."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

from emseg.metrics import (
    DEFAULT_THRESHOLDS,
    SCORE_NAMES,
    SegmentationScores,
    isbi_scores,
    pixel_scores,
    rand_info_scores,
    score_stack,
)
from emseg.thinning import thinned_proposal

FOUR = ndimage.generate_binary_structure(2, 1)
ISBI_LABEL = Path("/work/shared/data/isbi2012/train/label/0.png")


def grid_membrane(size: int = 31, lines: tuple[int, ...] = (10, 20)) -> np.ndarray:
    """Membrane (1) on the given rows and columns: a 3x3 grid of cells."""
    m = np.zeros((size, size), np.uint8)
    m[list(lines), :] = 1
    m[:, list(lines)] = 1
    return m


def cell_sizes(membrane: np.ndarray) -> np.ndarray:
    """Sizes of the 4-connected cells of a membrane image (independent of emseg)."""
    cells, count = ndimage.label(membrane == 0, FOUR)
    return np.bincount(cells.ravel(), minlength=count + 1)[1:].astype(np.float64)


def entropy(sizes: np.ndarray) -> float:
    q = np.asarray(sizes, np.float64) / np.sum(sizes)
    return float(-(q * np.log(q)).sum())


def all_scores(scores: SegmentationScores) -> np.ndarray:
    return np.array([getattr(scores, name) for name in SCORE_NAMES])


def random_pair(rng: np.random.Generator, shape=(40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Blocky random label images with background (gt 0) and unassigned (proposal 0) pixels."""
    gt = np.kron(rng.integers(0, 6, (shape[0] // 4, shape[1] // 4)), np.ones((4, 4), int))
    proposal = np.kron(rng.integers(0, 9, (shape[0] // 5, shape[1] // 5)), np.ones((5, 5), int))
    proposal[rng.random(shape) < 0.05] = 0
    return gt, proposal


def singletons_unique(gt: np.ndarray, proposal: np.ndarray) -> np.ndarray:
    """Proposal with each unassigned pixel given its own fresh label (the singleton rule)."""
    out = proposal.copy()
    zero = out == 0
    out[zero] = out.max() + 1 + np.arange(np.count_nonzero(zero))
    return out


# --- core against references -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rand_core_matches_skimage_adapted_rand(seed: int) -> None:
    gt, proposal = random_pair(np.random.default_rng(seed))
    unique = singletons_unique(gt, proposal)
    counted = gt != 0
    n = np.count_nonzero(counted)
    sum_t2 = float((np.bincount(gt[counted]).astype(float) ** 2).sum())
    sum_s2 = float((np.bincount(unique[counted]).astype(float) ** 2).sum())
    # skimage counts unordered pairs without self-pairs: prec = (A - n) / (sum_t2 - n) with
    # A = sum p_ij^2 in pixel units, so A follows exactly; our N^2 version keeps self-pairs.
    _, prec, rec = adapted_rand_error(gt, unique, ignore_labels=(0,))
    sum_p2 = prec * (sum_t2 - n) + n
    assert rec == pytest.approx((sum_p2 - n) / (sum_s2 - n), rel=1e-12)
    scores = rand_info_scores(gt, proposal)
    assert scores.vrand_split == pytest.approx(sum_p2 / sum_t2, rel=1e-12)
    assert scores.vrand_merge == pytest.approx(sum_p2 / sum_s2, rel=1e-12)
    split, merge = sum_p2 / sum_t2, sum_p2 / sum_s2
    assert scores.vrand == pytest.approx(2 * split * merge / (split + merge), rel=1e-12)


def test_rand_core_matches_ordered_pair_counting() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, (9, 9))
    proposal = rng.integers(0, 5, (9, 9))
    counted = np.flatnonzero(gt != 0)
    g = gt.ravel()
    s = singletons_unique(gt, proposal).ravel()
    same_t = same_s = same_both = 0
    for a, b in itertools.product(counted, counted):  # ordered pairs, self-pairs included
        same_t += g[a] == g[b]
        same_s += s[a] == s[b]
        same_both += (g[a] == g[b]) and (s[a] == s[b])
    scores = rand_info_scores(gt, proposal)
    assert scores.vrand_split == pytest.approx(same_both / same_t, rel=1e-12)
    assert scores.vrand_merge == pytest.approx(same_both / same_s, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_info_core_matches_skimage_variation_of_information(seed: int) -> None:
    gt, proposal = random_pair(np.random.default_rng(seed))
    unique = singletons_unique(gt, proposal)
    h_s_given_t, h_t_given_s = variation_of_information(gt, unique, ignore_labels=(0,))
    h_t = variation_of_information(gt, np.ones_like(gt), ignore_labels=(0,))[1]
    h_s = variation_of_information((gt != 0).astype(int), unique, ignore_labels=(0,))[0]
    scores = rand_info_scores(gt, proposal)
    assert scores.vinfo_split == pytest.approx(1 - h_s_given_t / h_s, rel=1e-9)
    assert scores.vinfo_merge == pytest.approx(1 - h_t_given_s / h_t, rel=1e-9)


def test_core_ignores_label_values_and_gt_background() -> None:
    gt, proposal = random_pair(np.random.default_rng(4))
    relabelled = rand_info_scores(gt * 1000 + 7 * (gt != 0), np.where(proposal, proposal + 50, 0))
    np.testing.assert_allclose(all_scores(relabelled), all_scores(rand_info_scores(gt, proposal)))
    scrambled = proposal.copy()
    scrambled[gt == 0] = np.random.default_rng(5).integers(0, 99, np.count_nonzero(gt == 0))
    np.testing.assert_allclose(
        all_scores(rand_info_scores(gt, scrambled)), all_scores(rand_info_scores(gt, proposal))
    )


# --- hand-made ISBI cases ----------------------------------------------------------------------


@pytest.mark.parametrize("threshold", DEFAULT_THRESHOLDS)
def test_perfect_proposal_scores_one(threshold: float) -> None:
    label = grid_membrane()
    np.testing.assert_allclose(all_scores(isbi_scores(label.astype(float), label, threshold)), 1.0)


def test_thick_proposal_boundary_is_thinned_to_a_perfect_score() -> None:
    label = grid_membrane()
    thick = ndimage.binary_dilation(label, FOUR).astype(float)
    thick_scores = isbi_scores(thick, label, 0.5)
    np.testing.assert_allclose(all_scores(thick_scores), 1.0)


def test_one_merge_lowers_only_the_merge_scores() -> None:
    label = grid_membrane()
    prob = label.astype(float)
    prob[0:10, 10] = 0.0  # open the wall between the two top-left cells
    t = cell_sizes(label)
    a, b = t[0], t[1]  # ndimage numbers the top-left cell 1 and its right neighbour 2
    merged = np.concatenate([[a + b], t[2:]])
    scores = isbi_scores(prob, label, 0.5)
    assert scores.vrand_split == 1.0 and scores.vinfo_split == 1.0
    assert scores.vrand_merge == pytest.approx((t**2).sum() / ((t**2).sum() + 2 * a * b))
    assert scores.vinfo_merge == pytest.approx(entropy(merged) / entropy(t))
    assert scores.vrand < 1.0 and scores.vinfo < 1.0


def test_one_split_lowers_only_the_split_scores() -> None:
    label = grid_membrane()
    prob = label.astype(float)
    prob[5, 0:10] = 1.0  # a one-pixel wall across the top-left cell: stays a line, 10 singletons
    t = cell_sizes(label)
    halves, line = [50.0, 40.0], 10
    split_sizes = np.concatenate([halves, np.ones(line), t[1:]])
    scores = isbi_scores(prob, label, 0.5)
    assert scores.vrand_merge == 1.0 and scores.vinfo_merge == 1.0
    sum_t2 = (t**2).sum()
    assert scores.vrand_split == pytest.approx((sum_t2 - t[0] ** 2 + 50**2 + 40**2 + line) / sum_t2)
    assert scores.vinfo_split == pytest.approx(entropy(t) / entropy(split_sizes))


def test_threshold_compares_cell_probability_strictly() -> None:
    label = grid_membrane()
    prob = label * 0.95
    prob[0:10, 10] = 0.4  # weak wall: cell probability 0.6 is cell iff 0.6 > t
    assert isbi_scores(prob, label, 0.5).vrand_merge < 1.0
    assert isbi_scores(prob, label, 0.6).vrand_merge == 1.0  # 0.6 > 0.6 is false: membrane
    assert isbi_scores(prob, label, 0.0).vrand_merge < 1.0


def test_thinning_keeps_one_pixel_walls_as_lines() -> None:
    cell = np.ones((5, 9), bool)
    cell[:, 4] = False
    np.testing.assert_array_equal(thinned_proposal(cell)[:, 4], 0)
    cell[:, 3:6] = False
    segments = thinned_proposal(cell)
    np.testing.assert_array_equal(segments[:, 4], 0)
    assert len(np.unique(segments[:, :4])) == 1 and len(np.unique(segments[:, 5:])) == 1


# --- edge cases --------------------------------------------------------------------------------


def test_no_ground_truth_cells_scores_one() -> None:
    label = np.ones((8, 8), np.uint8)
    np.testing.assert_allclose(all_scores(isbi_scores(np.full((8, 8), 0.3), label, 0.5)), 1.0)
    np.testing.assert_allclose(
        all_scores(rand_info_scores(np.zeros((4, 4), int), np.ones((4, 4), int))), 1.0
    )


def test_all_cell_ground_truth() -> None:
    label = np.zeros((10, 10), np.uint8)
    np.testing.assert_allclose(all_scores(isbi_scores(np.zeros((10, 10)), label, 0.5)), 1.0)
    prob = np.zeros((10, 10))
    prob[:, 4] = 1.0  # split the only cell: 10 singletons, halves of 40 and 50
    scores = isbi_scores(prob, label, 0.5)
    assert scores.vrand_split == pytest.approx((40**2 + 50**2 + 10) / 100**2)
    assert scores.vrand_merge == 1.0
    assert scores.vinfo_merge == 1.0  # H(T) = 0: nothing can be merged
    assert scores.vinfo_split == 0.0 and scores.vinfo == 0.0  # I = 0 < H(S)


def test_single_proposal_segment() -> None:
    label = grid_membrane()
    t = cell_sizes(label)
    scores = isbi_scores(np.zeros(label.shape), label, 0.5)
    assert scores.vrand_split == 1.0
    assert scores.vrand_merge == pytest.approx((t**2).sum() / t.sum() ** 2)
    assert scores.vinfo_split == 1.0  # H(S) = 0: nothing can be split
    assert scores.vinfo_merge == 0.0 and scores.vinfo == 0.0


def test_all_membrane_proposal_is_one_segment_as_in_fiji() -> None:
    # Fiji's flooding finds no basin, so the whole boundary level becomes one new minimum.
    label = grid_membrane()
    np.testing.assert_array_equal(thinned_proposal(np.zeros(label.shape, bool)), 1)
    everything = isbi_scores(np.ones(label.shape), label, 0.5)
    assert everything == isbi_scores(np.zeros(label.shape), label, 0.5)


def test_pixel_scores_by_hand() -> None:
    label = np.array([[1, 0], [0, 0]])
    prob = np.array([[0.9, 0.6], [0.2, 0.5]])  # 0.5 counts as membrane
    scores = pixel_scores(prob, label)
    assert scores == pytest.approx({"pixel_error": 0.5, "dice": 0.5, "iou": 1 / 3})
    assert pixel_scores(np.zeros((3, 3)), np.zeros((3, 3))) == {
        "pixel_error": 0.0,
        "dice": 1.0,
        "iou": 1.0,
    }


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: isbi_scores(np.zeros((4, 4)), np.zeros((4, 5)), 0.5), "shape"),
        (lambda: isbi_scores(np.full((4, 4), 1.5), np.zeros((4, 4)), 0.5), "prob_membrane"),
        (lambda: isbi_scores(np.full((4, 4), np.nan), np.zeros((4, 4)), 0.5), "prob_membrane"),
        (lambda: isbi_scores(np.zeros((4, 4)), np.full((4, 4), 255), 0.5), "label_membrane"),
        (lambda: isbi_scores(np.zeros((4, 4)), np.zeros((4, 4)), 1.2), "threshold"),
        (lambda: rand_info_scores(np.zeros((3, 3)), np.zeros((3, 3), int)), "integer"),
        (lambda: score_stack(np.zeros((4, 4)), np.zeros((4, 4))), "3-D"),
        (lambda: score_stack(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), ()), "thresholds"),
    ],
)
def test_bad_input_raises_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- stacks ------------------------------------------------------------------------------------


def graded_slice(weak_wall: float, spurious_wall: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Grid slice whose wall between two cells has membrane probability `weak_wall`, optionally
    with a false wall of probability `spurious_wall` across the top-left cell."""
    label = grid_membrane()
    prob = np.where(label == 1, 0.95, 0.05)
    prob[0:10, 10] = weak_wall
    if spurious_wall is not None:
        prob[5, 0:10] = spurious_wall
    return prob, label


def test_score_stack_finds_the_designed_threshold() -> None:
    # weak wall (cell prob 0.65) closes from t = 0.7; false wall (cell prob 0.85) opens at 0.9
    prob, label = graded_slice(0.35, 0.15)
    best, per_slice, summary = score_stack(np.stack([prob] * 2), np.stack([label] * 2))
    assert best == 0.7
    assert list(summary["threshold"]) == list(DEFAULT_THRESHOLDS)
    np.testing.assert_allclose(summary.loc[summary["threshold"].isin([0.7, 0.8]), "vrand"], 1.0)
    assert (summary.loc[~summary["threshold"].isin([0.7, 0.8]), "vrand"] < 1.0).all()
    np.testing.assert_allclose(per_slice[list(SCORE_NAMES)], 1.0)
    assert list(per_slice.columns) == [
        "slice",
        "pixel_error",
        "dice",
        "iou",
        *SCORE_NAMES,
        "threshold",
        "vinfo_threshold",
        "vinfo_at_vrand_threshold",
    ]


def test_score_stack_uses_one_threshold_for_the_whole_stack() -> None:
    slices = [graded_slice(0.35, 0.15), graded_slice(0.15, None), graded_slice(0.35, None)]
    prob = np.stack([p for p, _ in slices])
    label = np.stack([m for _, m in slices])
    thresholds = (0.5, 0.7, 0.9)
    best, per_slice, summary = score_stack(prob, label, thresholds)
    per_threshold = {t: [isbi_scores(prob[z], label[z], t) for z in range(3)] for t in thresholds}
    means = {t: np.mean([s.vrand for s in per_threshold[t]]) for t in thresholds}
    assert best == max(thresholds, key=lambda t: means[t])
    assert best == 0.9  # slice 0 prefers 0.7, slice 1 needs 0.9, and 0.9 wins on the mean
    assert (per_slice["threshold"] == best).all()
    np.testing.assert_allclose(per_slice["vrand"], [s.vrand for s in per_threshold[best]])
    np.testing.assert_allclose(summary["vrand"], [means[t] for t in thresholds])
    for z in range(3):
        assert per_slice.loc[z, "pixel_error"] == pixel_scores(prob[z], label[z])["pixel_error"]


# --- speed and real data -----------------------------------------------------------------------


def voronoi_membrane(rng: np.random.Generator, size: int = 512, cells: int = 400) -> np.ndarray:
    """Membrane between the Voronoi cells of random points: hundreds of segments."""
    seeds = np.zeros((size, size), bool)
    seeds[rng.integers(0, size, cells), rng.integers(0, size, cells)] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    owner = iy * size + ix
    membrane = np.zeros((size, size), np.uint8)
    membrane[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    membrane[1:, :] |= owner[1:, :] != owner[:-1, :]
    return membrane


def test_speed_on_a_512_slice_with_hundreds_of_segments() -> None:
    rng = np.random.default_rng(6)
    label = voronoi_membrane(rng)
    prob = np.clip(label * 0.8 + rng.normal(0.1, 0.15, label.shape), 0.0, 1.0)
    gt_cells = ndimage.label(label == 0, FOUR)[0]
    assert gt_cells.max() > 200
    start = time.perf_counter()
    scores = isbi_scores(prob, label, 0.5)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"isbi_scores took {elapsed:.3f} s"
    assert 0.0 < scores.vrand < 1.0
    start = time.perf_counter()
    rand_info_scores(gt_cells, thinned_proposal(prob < 0.5))
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(not ISBI_LABEL.exists(), reason="ISBI 2012 data not available")
def test_real_isbi_label_slice() -> None:
    from PIL import Image

    label = (np.asarray(Image.open(ISBI_LABEL)) == 0).astype(np.uint8)  # 255 = cell there
    np.testing.assert_allclose(all_scores(isbi_scores(label.astype(float), label, 0.5)), 1.0)

    thinner = ndimage.binary_erosion(label, FOUR).astype(float)  # gaps open: merges only
    scores = isbi_scores(thinner, label, 0.5)
    assert scores.vrand_split == 1.0 and scores.vinfo_split == 1.0
    assert scores.vrand_merge < 1.0 and scores.vinfo_merge < 1.0

    thicker = ndimage.binary_dilation(label, FOUR, iterations=2).astype(float)  # necks cut
    scores = isbi_scores(thicker, label, 0.5)
    assert scores.vrand_split < scores.vrand_merge <= 1.0
    assert scores.vrand < 1.0
