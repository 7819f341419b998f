"""emseg's thinning against a line-by-line port of Fiji's WatershedTransform2D (the challenge's).

`emseg.thinning.thinned_proposal` floods layer by layer with numpy; tests/fiji_watershed.py follows
the Java code pixel by pixel. They must give the same segments and the same line pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from emseg.metrics import ground_truth_cells, rand_info_scores
from emseg.thinning import thinned_proposal
from fiji_watershed import fiji_thinned_proposal

ISBI_LABEL = Path(__file__).resolve().parents[2] / "shared/data/isbi2012/train/label/0.png"


def assert_same_segments(ours: np.ndarray, fiji: np.ndarray) -> None:
    """Same line pixels (0) and the same partition of the rest (ids may differ)."""
    np.testing.assert_array_equal(ours == 0, fiji == 0)
    inside = ours != 0
    pairs = np.unique(np.stack([ours[inside], fiji[inside]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_fiji_port_on_a_hand_made_case() -> None:
    # Two cells and a membrane 4 px wide: the fronts meet in its middle, where the queue order
    # (cells found column by column, neighbours left, up, right, down) decides the line.
    cell = np.ones((3, 8), bool)
    cell[:, 2:6] = False
    expected = np.array([[1, 1, 1, 1, 0, 2, 2, 2]] * 3)
    np.testing.assert_array_equal(fiji_thinned_proposal(cell), expected)
    np.testing.assert_array_equal(thinned_proposal(cell), expected)


@pytest.mark.parametrize("seed", range(4))
def test_random_pixel_proposals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(150):
        shape = tuple(int(n) for n in rng.integers(1, 14, 2))
        cell = rng.random(shape) < rng.uniform(0.0, 1.0)
        assert_same_segments(thinned_proposal(cell), fiji_thinned_proposal(cell))


@pytest.mark.parametrize("seed", range(3))
def test_random_blob_proposals(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for _ in range(4):
        shape = tuple(int(n) for n in rng.integers(40, 120, 2))
        smooth = ndimage.gaussian_filter(rng.random(shape), rng.uniform(1.0, 4.0))
        cell = smooth > np.quantile(smooth, rng.uniform(0.3, 0.9))
        assert_same_segments(thinned_proposal(cell), fiji_thinned_proposal(cell))


def test_degenerate_proposals() -> None:
    for cell in (np.zeros((5, 7), bool), np.ones((5, 7), bool), np.eye(6, dtype=bool)):
        assert_same_segments(thinned_proposal(cell), fiji_thinned_proposal(cell))


@pytest.mark.skipif(not ISBI_LABEL.exists(), reason="ISBI 2012 data not available")
@pytest.mark.parametrize("threshold", [0.3, 0.8])
def test_real_isbi_slice_with_a_noisy_map(threshold: float) -> None:
    """A whole 512 x 512 ISBI slice, a map with blurred, broken and spurious membranes."""
    rng = np.random.default_rng(7)
    membrane = np.asarray(Image.open(ISBI_LABEL)) == 0
    prob = ndimage.gaussian_filter(membrane.astype(float), 1.5) * 1.5
    prob += ndimage.gaussian_filter(rng.normal(0.0, 0.3, membrane.shape), 1.0)
    cell = (1.0 - np.clip(prob, 0.0, 1.0)) > threshold
    ours, fiji = thinned_proposal(cell), fiji_thinned_proposal(cell)
    assert_same_segments(ours, fiji)
    truth = ground_truth_cells(membrane.astype(np.uint8))
    assert rand_info_scores(truth, ours) == rand_info_scores(truth, fiji)
