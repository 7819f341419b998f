"""V_rand and V_info of one slice: emseg's core against scikit-image, values and time.

Ground truth: the cells of one label slice; proposal: the cells of the next slice (a realistic,
imperfect segmentation) with its membrane flooded by a line-free watershed, so the proposal has no
label 0 inside the ground-truth foreground. There emseg's definitions (gt label 0 not counted) and
skimage's (`ignore_labels=(0,)` on the true image) agree, and the values must match:
Rand split = sum p_ij^2 / sum t_i^2 = skimage's "precision", Rand merge = skimage's "recall",
V_rand = 1 - adapted Rand error; H(T|S) = H(T)(1 - info merge) and H(S|T) = H(S)(1 - info split)
in bits against skimage's `variation_of_information` pair (H(S|T), H(T|S)), which uses log2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from bench.harness import (
    NOT_INSTALLED,
    Settings,
    Table,
    em_slices,
    log,
    measure_many,
    package_version,
)
from emseg.metrics import SegmentationScores, ground_truth_cells, isbi_scores, rand_info_scores

TARGET_SPEEDUP = 2.0


def segmentations(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ground-truth cells of slice 0, line-free proposal from slice 1), both int32."""
    from skimage.segmentation import watershed

    gt = ground_truth_cells(labels[0]).astype(np.int32)
    seeds, _ = ndimage.label(labels[1] == 0)
    proposal = watershed(labels[1].astype(np.uint8), markers=seeds, connectivity=1)
    return gt, proposal.astype(np.int32)


def entropy_bits(segments: np.ndarray) -> float:
    """Entropy (bits) of the segment sizes of a label array."""
    sizes = np.unique(segments, return_counts=True)[1]
    q = sizes / sizes.sum()
    return float(-(q * np.log2(q)).sum())


def skimage_scores(gt: np.ndarray, proposal: np.ndarray) -> dict[str, float]:
    """skimage's numbers, in emseg's terms where the definitions agree."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    error, precision, recall = adapted_rand_error(gt, proposal, ignore_labels=(0,))
    h_pred_given_true, h_true_given_pred = variation_of_information(
        gt, proposal, ignore_labels=(0,)
    )
    return {
        "vrand": 1 - error,
        "vrand_split": precision,
        "vrand_merge": recall,
        "H(T|S) bits": h_true_given_pred,
        "H(S|T) bits": h_pred_given_true,
    }


def emseg_scores(gt: np.ndarray, proposal: np.ndarray, s: SegmentationScores) -> dict[str, float]:
    counted = gt != 0
    h_true, h_pred = entropy_bits(gt[counted]), entropy_bits(proposal[counted])
    return {
        "vrand": s.vrand,
        "vrand_split": s.vrand_split,
        "vrand_merge": s.vrand_merge,
        "H(T|S) bits": h_true * (1 - s.vinfo_merge),
        "H(S|T) bits": h_pred * (1 - s.vinfo_split),
    }


def skimage_table_rand(gt: np.ndarray, proposal: np.ndarray) -> dict[str, float]:
    """Rand split/merge from skimage's contingency table, counting self-pairs (sum n^2) as emseg.

    skimage's adapted_rand_error counts distinct pairs, sum n(n-1); this shows that is the only
    difference in the Rand scores.
    """
    from skimage.metrics import contingency_table

    table = contingency_table(gt, proposal, ignore_labels=[0])
    joint = float(table.data @ table.data)
    rows, cols = np.ravel(table.sum(axis=1)), np.ravel(table.sum(axis=0))
    split, merge = joint / float(rows @ rows), joint / float(cols @ cols)
    return {
        "vrand": 2 * split * merge / (split + merge),
        "vrand_split": split,
        "vrand_merge": merge,
    }


COMPUTES = {
    "emseg rand_info_scores": "V_rand + V_info",
    "emseg isbi_scores": "threshold + watershed thinning + V_rand + V_info",
    "skimage adapted_rand_error": "V_rand",
    "skimage variation_of_information": "V_info's conditional entropies",
    "skimage, both calls": "V_rand + V_info",
}


def _implementations(
    gt: np.ndarray, proposal: np.ndarray, prob: np.ndarray, label: np.ndarray
) -> dict[str, Callable[[], object]]:
    """emseg's scores of one slice and, where scikit-image is installed, its two calls."""
    fns: dict[str, Callable[[], object]] = {
        "emseg rand_info_scores": lambda: rand_info_scores(gt, proposal),
        "emseg isbi_scores": lambda: isbi_scores(prob, label, 0.5),
    }
    if package_version("skimage") is None:
        return fns
    from skimage.metrics import adapted_rand_error, variation_of_information

    return fns | {
        "skimage adapted_rand_error": lambda: adapted_rand_error(gt, proposal, ignore_labels=(0,)),
        "skimage variation_of_information": lambda: variation_of_information(
            gt, proposal, ignore_labels=(0,)
        ),
        "skimage, both calls": lambda: skimage_scores(gt, proposal),
    }


def _agreement(values: Table, gt: np.ndarray, proposal: np.ndarray) -> None:
    """Each score by emseg and by scikit-image, and from skimage's own table with sum n^2."""
    theirs = skimage_scores(gt, proposal)
    squared = skimage_table_rand(gt, proposal)
    for name, value in emseg_scores(gt, proposal, rand_info_scores(gt, proposal)).items():
        row = {"score": name, "emseg": value, "skimage": theirs[name]}
        row["abs diff"] = abs(value - theirs[name])
        if name in squared:
            row["skimage table, sum n^2"] = squared[name]
            row["abs diff, sum n^2"] = abs(value - squared[name])
        values.add_row(row)


def run(settings: Settings) -> list[Table]:
    size = 128 if settings.quick else 512
    _, labels, source = em_slices(2, size)
    gt, proposal = segmentations(labels)
    repeats, warmup = (1, 0) if settings.quick else (50, 5)
    prob = ndimage.gaussian_filter(labels[1].astype(np.float64), 1.0)
    timing = Table(
        f"V_rand and V_info of one {size} x {size} slice",
        [
            "implementation",
            "computes",
            "min ms",
            "median ms",
            "max ms",
            "skimage / emseg time",
            "note",
        ],
        notes=[
            f"Data: {source}; ground truth {int(gt.max())} cells, proposal"
            f" {int(proposal.max())} segments. Medians of {repeats} after {warmup} warm-up runs,"
            " the implementations taking turns.",
            f"Target: emseg's rand_info_scores at least {TARGET_SPEEDUP:.0f}x faster than"
            " skimage's two calls that give the same numbers.",
        ],
    )
    values = Table(
        "V_rand / V_info agreement with scikit-image (where the definitions agree)",
        ["score", "emseg", "skimage", "abs diff", "skimage table, sum n^2", "abs diff, sum n^2"],
        notes=[
            "skimage's adapted_rand_error counts distinct pixel pairs (sum n(n-1)), emseg and the"
            " challenge's Fiji code sum n^2; the last two columns recompute skimage's Rand scores"
            " from its own contingency table with sum n^2. Entropies in bits (skimage uses log2).",
        ],
    )
    fns = _implementations(gt, proposal, prob, labels[0])
    log(f"metrics: {len(fns)} implementations, {repeats} runs each, round-robin")
    timings = measure_many(fns, repeats, warmup)
    for name, timed in timings.items():
        timing.add(implementation=name, computes=COMPUTES[name], **timed.columns("ms", 1e3))
    timing.rows[1]["note"] = "the per-slice, per-threshold cost of scoring"
    if "skimage, both calls" not in timings:
        timing.add(implementation="skimage", note=NOT_INSTALLED)
        values.add(score="-", note=NOT_INSTALLED)
        return [timing, values]
    speedup = timings["skimage, both calls"].median / timings["emseg rand_info_scores"].median
    timing.rows[0]["skimage / emseg time"] = speedup
    timing.rows[0]["note"] = "target met" if speedup >= TARGET_SPEEDUP else "below the 2x target"
    _agreement(values, gt, proposal)
    return [timing, values]
