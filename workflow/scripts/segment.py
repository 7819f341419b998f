"""Rule segment: cells from a membrane probability stack, one uint32 label image."""

from typing import Any

import numpy as np

from emseg.io import read_stack
from emseg.progress import progress
from emseg.runner import LOG, run_rule
from emseg.segment_settings import SegmentSettings
from emseg.segmentation import segment_stack, write_segmentation


def main(snakemake: Any) -> None:
    settings = SegmentSettings.from_config(snakemake.params.segment)
    probs = read_stack(snakemake.input.prob)
    with progress(total=len(probs), desc="segment", unit="slice") as bar:
        labels = segment_stack(probs, settings, on_slice=lambda _: bar.update())
    cells = [len(np.unique(labels[z])) - 1 for z in range(len(labels))]
    LOG.info(
        "%s: %d cells in %d slices (%.0f per slice)",
        settings.method,
        sum(cells),
        len(cells),
        float(np.mean(cells)),
    )
    write_segmentation(snakemake.output.labels, labels)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
