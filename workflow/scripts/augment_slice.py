"""Rule augment_slice: N augmented samples of one labelled slice, with weight maps, as one shard."""

from pathlib import Path
from typing import Any

import numpy as np

from emseg.augment import AugmentConfig, augment_pair
from emseg.io import read_stack
from emseg.progress import progress
from emseg.runner import LOG, run_rule
from emseg.shards import IMAGE, LABEL, WEIGHT, write_shard
from emseg.weightmap import unet_weight_map


def main(snakemake: Any) -> None:
    index = int(snakemake.wildcards.index)
    image = read_stack(snakemake.input.images)[index].astype(np.float32)
    label = read_stack(snakemake.input.labels)[index].astype(np.uint8)
    spec = dict(snakemake.params.augment)
    seed, count = int(spec.pop("seed")), int(spec.pop("samples_per_slice"))
    options = AugmentConfig.from_mapping(spec)
    weights = snakemake.params.weights
    rng = np.random.default_rng([seed, index])
    samples = np.empty((count, 3, *image.shape), dtype=np.float32)
    for k in progress(range(count), desc=f"augment slice {index}", leave=False):
        sample_image, sample_label = augment_pair(image, label, rng, options)
        samples[k, IMAGE] = sample_image
        samples[k, LABEL] = sample_label
        samples[k, WEIGHT] = unet_weight_map(
            sample_label,
            float(weights["w0"]),
            float(weights["sigma"]),
            bool(weights["class_balance"]),
        )
    LOG.info("slice %d: %d samples of %s", index, count, image.shape)
    record = {"slice": index, "seed": seed, "augment": snakemake.params.augment, "weights": weights}
    write_shard(Path(snakemake.output.shard), samples, record, Path(snakemake.output.record))


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
