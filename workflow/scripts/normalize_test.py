"""Rule normalize_test: scale the test slices with the labelled slices' percentile scaling."""

from typing import Any

from emseg.io import read_json, read_stack, write_stack
from emseg.preprocess import Normalization
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    norm = Normalization.from_dict(read_json(snakemake.input.normalization))
    write_stack(snakemake.output.test_images, norm.apply(read_stack(snakemake.input.test_images)))


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
