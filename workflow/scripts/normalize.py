"""Rule normalize: fit percentile scaling on the labelled slices and scale them with it."""

from typing import Any

import numpy as np

from emseg.io import read_stack, write_json, write_stack
from emseg.preprocess import fit_normalization
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    images = read_stack(snakemake.input.train_images)
    spec = snakemake.params.preprocess
    norm = fit_normalization(
        images, float(spec["lower_percentile"]), float(spec["upper_percentile"])
    )
    LOG.info("gray values %.1f -> 0 and %.1f -> 1", norm.low, norm.high)
    out = snakemake.output
    write_stack(out.labelled_images, norm.apply(images))
    write_stack(out.labels, read_stack(snakemake.input.train_labels).astype(np.uint8))
    write_json(out.normalization, norm.to_dict())


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
