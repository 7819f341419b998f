"""Rule ensemble: the mean test probability of a model's fold and seed runs."""

from typing import Any

import numpy as np

from emseg.io import read_stack, write_stack
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    total = None
    for path in snakemake.input.probs:
        prob = read_stack(path).astype(np.float64)
        total = prob if total is None else total + prob
    mean = (total / len(snakemake.input.probs)).astype(np.float32)
    LOG.info("averaged %d runs", len(snakemake.input.probs))
    write_stack(snakemake.output.prob, mean)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
