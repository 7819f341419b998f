"""Rule import_test_files: check the user's test stack and convert it into a canonical TIFF."""

from typing import Any

from emseg.dataset import import_user_test_stack, user_stack
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    import_user_test_stack(
        snakemake.output.test_images,
        user_stack(snakemake.config, "test_images"),
        snakemake.input.train_images,
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
