"""Rule score: the held-out slices' ISBI scores, of the probability map and of the label image.

The probability map is scored as the challenge does (V_rand and V_info each at its best
threshold of the sweep), the segmentation as it is (no threshold, no thinning).
"""

from typing import Any

import pandas as pd

from emseg.io import atomic_path, read_stack, write_json
from emseg.metrics import label_scores, score_stack
from emseg.runner import LOG, run_rule

_NOT_MEANS = ("slice", "threshold", "vinfo_threshold")


def main(snakemake: Any) -> None:
    probs = read_stack(snakemake.input.prob)
    slices = list(snakemake.params.slices)
    labels = read_stack(snakemake.input.labels)[slices]
    best, per_slice, per_threshold = score_stack(probs, labels)
    segmentation = label_scores(read_stack(snakemake.input.segmentation), labels)
    per_slice = pd.concat([per_slice, segmentation], axis=1)
    per_slice["slice"] = slices
    means = per_slice.drop(columns=list(_NOT_MEANS)).mean().to_dict()
    summary = {
        **means,
        "threshold": best,
        "vinfo_threshold": float(per_slice["vinfo_threshold"].iloc[0]),
        "segment_method": snakemake.params.segment_method,
        "n_slices": len(per_slice),
        **snakemake.params.run,
    }
    LOG.info(
        "held-out V_rand %.4f (threshold %.1f), V_info %.4f (threshold %.1f), pixel error %.4f,"
        " dice %.4f; segmentation (%s) V_rand %.4f, V_info %.4f (%d slices)",
        summary["vrand"],
        best,
        summary["vinfo"],
        summary["vinfo_threshold"],
        summary["pixel_error"],
        summary["dice"],
        summary["segment_method"],
        summary["seg_vrand"],
        summary["seg_vinfo"],
        len(per_slice),
    )
    with atomic_path(snakemake.output.per_slice) as tmp:
        per_slice.to_csv(tmp, index=False)
    with atomic_path(snakemake.output.thresholds) as tmp:
        per_threshold.to_csv(tmp, index=False)
    write_json(snakemake.output.summary, summary)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
