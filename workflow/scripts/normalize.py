"""Rule normalize: fit percentile scaling on the training slices and split the stacks."""

from typing import Any

import numpy as np

from emseg.io import read_json, read_stack, write_json, write_stack
from emseg.preprocess import fit_normalization
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    split = read_json(snakemake.input.split)
    images, labels = (
        read_stack(snakemake.input.train_images),
        read_stack(snakemake.input.train_labels),
    )
    training, validation = split["training"], split["validation"]
    spec = snakemake.params.preprocess
    norm = fit_normalization(
        images[training], float(spec["lower_percentile"]), float(spec["upper_percentile"])
    )
    LOG.info("gray values %.1f -> 0 and %.1f -> 1", norm.low, norm.high)
    out = snakemake.output
    write_stack(out.train_images, norm.apply(images[training]))
    write_stack(out.train_labels, labels[training].astype(np.uint8))
    write_stack(out.val_images, norm.apply(images[validation]))
    write_stack(out.val_labels, labels[validation].astype(np.uint8))
    if "test_images" in out.keys():  # noqa: SIM118 (Snakemake Namedlist)
        write_stack(out.test_images, norm.apply(read_stack(snakemake.input.test_images)))
    write_json(out.normalization, {**norm.to_dict(), **split})


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
