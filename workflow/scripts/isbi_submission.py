"""Rule isbi_submission: the challenge's format, cell-interior probability as 32-bit float."""

from typing import Any

import numpy as np

from emseg.io import read_stack, write_stack
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    membrane = read_stack(snakemake.input.prob).astype(np.float32)
    write_stack(snakemake.output.submission, (1.0 - membrane).astype(np.float32))


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
