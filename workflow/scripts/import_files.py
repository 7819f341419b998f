"""Rule import_files: check the user's own stacks and convert them into canonical TIFFs."""

from typing import Any

from emseg.dataset import import_user_stacks
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    import_user_stacks(snakemake.output, snakemake.params.stacks, snakemake.params.membrane_value)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
