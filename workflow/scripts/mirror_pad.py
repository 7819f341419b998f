"""Rule mirror_pad: reflect every slice about its border by the network's margin."""

from typing import Any

from emseg.io import read_stack, write_stack
from emseg.preprocess import mirror_pad
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    margin = int(snakemake.wildcards.margin)
    stack = read_stack(snakemake.input.stack)
    padded = mirror_pad(stack, margin)
    LOG.info("%s -> %s (margin %d)", stack.shape, padded.shape, margin)
    write_stack(snakemake.output.padded, padded)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
