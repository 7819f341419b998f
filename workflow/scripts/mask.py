"""Rule mask: the binary membrane mask of a probability stack (255 where p >= predict.threshold)."""

from typing import Any

import numpy as np

from emseg.io import read_stack, write_stack
from emseg.membrane_mask import membrane_mask
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    prob = read_stack(snakemake.input.prob)
    threshold = float(snakemake.params.threshold)
    mask = membrane_mask(prob, threshold) * np.uint8(255)
    write_stack(snakemake.output.mask, mask)
    share = float((mask > 0).mean())
    LOG.info("wrote %s: %.1f %% membrane at p >= %g", snakemake.output.mask, 100 * share, threshold)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
