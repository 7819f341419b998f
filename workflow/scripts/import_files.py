"""Rule import_files: check the user's own stacks and convert them into canonical TIFFs."""

from typing import Any

from emseg.dataset import import_user_stacks, user_stack
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    # The stacks as the config names them (a folder's slices are the job's inputs one by one).
    stacks = {key: user_stack(snakemake.config, key) for key in ("train_images", "train_labels")}
    import_user_stacks(snakemake.output, stacks, snakemake.params.membrane_value)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
