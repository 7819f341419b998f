"""ISBI 2012 evaluation: pixel scores and the thinned, foreground-restricted V_rand and V_info.

Canonical input: membrane probability p (1 = membrane) and labels with 1 = membrane, 0 = cell.

Procedure for one 2-D slice at one threshold t (`isbi_scores`), after the challenge's Fiji
evaluation (Trainable_Segmentation `RandError` / `VariationOfInformation`, the
"Segmentation evaluation after border thinning" script) and Arganda-Carreras et al. 2015,
Front. Neuroanat. 9:142:

1. Ground truth: the cells are the 4-connected components of label-0 pixels. Only pixels that are
   cell in the ground truth are counted (n of them); ground-truth membrane is ignored.
2. Proposal: the challenge thresholds the *cell* probability 1 - p. Fiji binarizes with a strict
   `value > t`, so a pixel is cell iff `1 - p > t` (computed in float64), i.e. membrane iff
   `p >= 1 - t`. Thresholds are t = 0.0, 0.1, ..., 0.9; a larger t gives more membrane.
3. Thinning: Fiji's `WatershedTransform2D(binaryProposal, 4)`, a Vincent-Soille flooding of
   the binary image (cell 0, membrane 255) without markers. Its basins are the proposal's cells
   (4-connected components of cell pixels); the membrane is flooded breadth-first from all of
   them at once, and a membrane pixel takes the one cell label among its already labelled
   4-neighbours when it leaves the queue, or becomes a line pixel (label 0) when there are two,
   so a line about one pixel wide remains where fronts meet, in the middle of the membrane.
   `emseg.thinning.thinned_proposal` gives the same labels as a line-by-line port of the Java code
   (tests/fiji_watershed.py) on every proposal tested, queue order included. No cell at all
   makes the whole slice one segment, as in Fiji.
4. Line pixels left inside the ground-truth foreground count as singletons (each its own segment),
   exactly the `sum(p_i0) / n` and `sum(p_i0) * log(n)` terms of the Fiji code.
5. With p_ij the fraction of the n counted pixels in ground-truth cell i and proposal segment j,
   t_i = sum_j p_ij and s_j = sum_i p_ij:
   Rand split = sum p_ij^2 / sum t_i^2  (Fiji's "recall"; < 1 only if a true cell is split),
   Rand merge = sum p_ij^2 / sum s_j^2  (Fiji's "precision"; < 1 only if true cells are merged),
   Info split = I(S;T) / H(S),  Info merge = I(S;T) / H(T)  (S proposal, T ground truth),
   V_rand and V_info are the harmonic means (F-scores) of their split and merge scores.

`score_stack` scores every slice at every threshold and, as the challenge's script does
(`getMaximalVRandAfterThinning`, `getMaximalVInfoAfterThinning`), keeps the threshold with the
best stack-mean V_rand for the Rand scores and, separately, the one with the best stack-mean
V_info for the information scores; V_info at V_rand's threshold is kept as a second column.
`label_scores` scores a finished label image (0 = boundary) with the same V_rand and V_info, no
threshold and no thinning. Pixel error, Dice and IoU always use p >= 0.5 as membrane, which is
the same binarization as t = 0.5 above.

Where this departs from the Fiji script:
- The stack score is the mean of per-slice scores. Fiji pools the Rand pair counts of all slices
  (within-slice pairs) before taking the F-score, so large-foreground slices weigh more there.
- Fiji loops `th += 0.1` in floating point up to 1.0 (11 values, 0.30000000000000004 and so on);
  we use exactly rounded 0.0, ..., 0.9. At t = 1.0 almost nothing is cell, so it never wins.
- Degenerate cases get defined values instead of 0/0: no ground-truth cell pixels (n = 0) gives
  1.0 for every score (no pair can disagree); H(S) = 0 (one proposal segment) gives Info split 1.0
  and H(T) = 0 (one true cell) gives Info merge 1.0, since nothing can be split or merged. Fiji's
  port instead sets the merge/split pair to (1, 0) or (0, 1), scoring a perfect single-cell
  proposal 0. An F-score of two zeros is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from emseg.thinning import thinned_proposal

_FOUR = ndimage.generate_binary_structure(2, 1)
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(
    float(t) for t in np.round(np.arange(0.0, 1.0, 0.1), 1)
)
SCORE_NAMES = ("vrand", "vrand_split", "vrand_merge", "vinfo", "vinfo_split", "vinfo_merge")
PIXEL_NAMES = ("pixel_error", "dice", "iou")
_ZERO_ENTROPY = 1e-12


@dataclass(frozen=True)
class SegmentationScores:
    """Foreground-restricted Rand and information-theoretic scores, all in [0, 1], 1 = perfect."""

    vrand: float
    vrand_split: float
    vrand_merge: float
    vinfo: float
    vinfo_split: float
    vinfo_merge: float


def _check_probability(prob: np.ndarray, name: str) -> np.ndarray:
    """Float64 copy of a probability map; rejects NaN and values outside [0, 1]."""
    arr = np.asarray(prob, dtype=np.float64)
    if not np.all((arr >= 0.0) & (arr <= 1.0)):
        raise ValueError(f"{name} must hold probabilities in [0, 1] (found NaN or out-of-range)")
    return arr


def _check_membrane_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Boolean membrane mask from a 0/1 (or bool) label image."""
    arr = np.asarray(labels)
    if arr.dtype != bool and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must be binary with 1 = membrane and 0 = cell")
    return arr.astype(bool)


def _check_pair(prob: np.ndarray, labels: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (probability, membrane mask) of equal shape and the given dimensionality."""
    p = _check_probability(prob, "prob_membrane")
    m = _check_membrane_labels(labels, "label_membrane")
    if p.ndim != ndim or p.shape != m.shape:
        raise ValueError(
            f"prob_membrane {p.shape} and label_membrane {m.shape} must be equal {ndim}-D shapes"
        )
    return p, m


def _check_threshold(threshold: float) -> float:
    """A finite threshold in [0, 1]."""
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return t


def pixel_scores(
    prob_membrane: np.ndarray, label_membrane: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """Pixel error (1 - accuracy), Dice and IoU of the membrane class, membrane iff p >= threshold.

    Dice and IoU are 1.0 when neither prediction nor label has any membrane (nothing to miss).
    """
    p = _check_probability(prob_membrane, "prob_membrane")
    truth = _check_membrane_labels(label_membrane, "label_membrane")
    if p.shape != truth.shape:
        raise ValueError(f"prob_membrane {p.shape} and label_membrane {truth.shape} differ")
    if p.size == 0:
        raise ValueError("prob_membrane is empty")
    pred = p >= _check_threshold(threshold)
    tp = int(np.count_nonzero(pred & truth))
    wrong = int(np.count_nonzero(pred ^ truth))
    union = tp + wrong
    return {
        "pixel_error": wrong / p.size,
        "dice": 2 * tp / (2 * tp + wrong) if union else 1.0,
        "iou": tp / union if union else 1.0,
    }


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel a 1-D integer array to 0..k-1; bincount when labels are small, else a sort."""
    if labels.size and labels.min() >= 0 and labels.max() < 4 * labels.size + 1024:
        present = np.bincount(labels) > 0
        lut = np.cumsum(present) - 1
        return lut[labels], int(present.sum())
    uniq, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(-1), int(uniq.size)


def _entropy(counts: np.ndarray, n: int) -> float:
    """-sum q log q (nats) of the fractions counts / n, skipping empty entries."""
    q = counts[counts > 0] / n
    return float(-(q * np.log(q)).sum())


def _fscore(a: float, b: float) -> float:
    """Harmonic mean, 0 when both are 0."""
    return 2.0 * a * b / (a + b) if a + b > 0 else 0.0


def rand_info_scores(gt: np.ndarray, proposal: np.ndarray) -> SegmentationScores:
    """Foreground-restricted Rand and information scores of two integer label images.

    gt label 0 pixels are not counted; proposal label 0 pixels inside the gt foreground are
    singletons. Contingency counts come from one bincount, so the cost is O(pixels).
    """
    gt = np.asarray(gt)
    proposal = np.asarray(proposal)
    if gt.shape != proposal.shape:
        raise ValueError(f"gt {gt.shape} and proposal {proposal.shape} differ in shape")
    for name, arr in (("gt", gt), ("proposal", proposal)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    counted = gt != 0
    n = int(np.count_nonzero(counted))
    if n == 0:
        return SegmentationScores(1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

    g, n_true = _compact(gt[counted].astype(np.int64))
    s = proposal[counted].astype(np.int64)
    assigned = s != 0
    singletons = n - int(np.count_nonzero(assigned))
    s_ids, n_pred = _compact(s[assigned])
    true_sizes = np.bincount(g, minlength=n_true)
    pred_sizes = np.bincount(s_ids, minlength=n_pred)
    pair_keys = g[assigned] * n_pred + s_ids
    if n_true * n_pred <= 4 * n + 1024:
        joint = np.bincount(pair_keys, minlength=n_true * n_pred)
    else:  # a dense table would be mostly empty: count the occupied cells by sorting
        joint = np.unique(pair_keys, return_counts=True)[1]

    # Squared sizes in pixel units (exact in float64); singletons add 1 each.
    sum_p2 = float(np.sum(joint.astype(np.float64) ** 2)) + singletons
    sum_t2 = float(np.sum(true_sizes.astype(np.float64) ** 2))
    sum_s2 = float(np.sum(pred_sizes.astype(np.float64) ** 2)) + singletons
    rand_split = sum_p2 / sum_t2
    rand_merge = sum_p2 / sum_s2

    singleton_entropy = singletons / n * float(np.log(n))
    h_true = _entropy(true_sizes, n)
    h_pred = _entropy(pred_sizes, n) + singleton_entropy
    h_joint = _entropy(joint, n) + singleton_entropy
    mutual = min(max(h_true + h_pred - h_joint, 0.0), h_true, h_pred)
    info_split = mutual / h_pred if h_pred > _ZERO_ENTROPY else 1.0
    info_merge = mutual / h_true if h_true > _ZERO_ENTROPY else 1.0

    return SegmentationScores(
        vrand=_fscore(rand_split, rand_merge),
        vrand_split=rand_split,
        vrand_merge=rand_merge,
        vinfo=_fscore(info_split, info_merge),
        vinfo_split=info_split,
        vinfo_merge=info_merge,
    )


def ground_truth_cells(label_membrane: np.ndarray) -> np.ndarray:
    """Label image of the ground-truth cells: 4-connected components of label-0 pixels."""
    cells, _ = ndimage.label(~_check_membrane_labels(label_membrane, "label_membrane"), _FOUR)
    return cells


def isbi_scores(
    prob_membrane: np.ndarray, label_membrane: np.ndarray, threshold: float
) -> SegmentationScores:
    """V_rand / V_info of one 2-D slice with the proposal cell iff 1 - p > threshold."""
    p, truth = _check_pair(prob_membrane, label_membrane, ndim=2)
    t = _check_threshold(threshold)
    return rand_info_scores(ground_truth_cells(truth), thinned_proposal((1.0 - p) > t))


def score_stack(
    prob_membrane: np.ndarray,
    label_membrane: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> tuple[float, pd.DataFrame, pd.DataFrame]:
    """Score a (Z, H, W) stack at every threshold; V_rand and V_info each at their best one.

    Returns (V_rand's best threshold, per-slice scores, per-threshold stack means). The per-slice
    table has the pixel scores at 0.5, the Rand scores at `threshold` (best stack-mean V_rand),
    the information scores at `vinfo_threshold` (best stack-mean V_info) and V_info at V_rand's
    threshold as `vinfo_at_vrand_threshold`. Ties go to the first threshold in `thresholds`.
    """
    p, truth = _check_pair(prob_membrane, label_membrane, ndim=3)
    if p.shape[0] == 0:
        raise ValueError("prob_membrane has no slices")
    ts = [_check_threshold(t) for t in thresholds]
    if not ts:
        raise ValueError("thresholds must not be empty")

    gt_cells = [ground_truth_cells(truth[z]) for z in range(p.shape[0])]
    per_threshold: list[pd.DataFrame] = []
    for t in ts:
        rows = [
            asdict(rand_info_scores(gt_cells[z], thinned_proposal((1.0 - p[z]) > t)))
            for z in range(p.shape[0])
        ]
        per_threshold.append(pd.DataFrame(rows, columns=list(SCORE_NAMES)))

    summary = pd.DataFrame([frame.mean() for frame in per_threshold], columns=list(SCORE_NAMES))
    summary.insert(0, "threshold", ts)
    best = int(np.argmax(summary["vrand"].to_numpy()))
    best_info = int(np.argmax(summary["vinfo"].to_numpy()))

    pixel = pd.DataFrame(
        [pixel_scores(p[z], truth[z], 0.5) for z in range(p.shape[0])], columns=list(PIXEL_NAMES)
    )
    rand = per_threshold[best][["vrand", "vrand_split", "vrand_merge"]]
    info = per_threshold[best_info][["vinfo", "vinfo_split", "vinfo_merge"]]
    per_slice = pd.concat([pixel, rand, info], axis=1)
    per_slice.insert(0, "slice", np.arange(p.shape[0]))
    per_slice["threshold"] = ts[best]
    per_slice["vinfo_threshold"] = ts[best_info]
    per_slice["vinfo_at_vrand_threshold"] = per_threshold[best]["vinfo"]
    return ts[best], per_slice, summary


def label_scores(segmentation: np.ndarray, label_membrane: np.ndarray) -> pd.DataFrame:
    """V_rand and V_info of a (Z, H, W) label image per slice, columns prefixed `seg_`.

    Segmentation label 0 (boundary) inside a ground-truth cell counts as singletons, as the
    thinned lines do in `isbi_scores`.
    """
    seg = np.asarray(segmentation)
    truth = _check_membrane_labels(label_membrane, "label_membrane")
    if seg.ndim != 3 or seg.shape != truth.shape:
        raise ValueError(
            f"segmentation {seg.shape} and label_membrane {truth.shape} must be equal 3-D shapes"
        )
    rows = [asdict(rand_info_scores(ground_truth_cells(truth[z]), seg[z])) for z in range(len(seg))]
    return pd.DataFrame(rows, columns=list(SCORE_NAMES)).add_prefix("seg_")
