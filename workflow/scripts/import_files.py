"""Rule import_files: check the user's own stacks and convert them into canonical TIFFs."""

from typing import Any

from emseg.dataset import binarize_labels, check_raw, write_canonical
from emseg.io import read_stack
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    names = {key: str(path) for key, path in snakemake.input.items()}
    images = check_raw(read_stack(names["train_images"]), names["train_images"])
    labels = binarize_labels(
        read_stack(names["train_labels"]), snakemake.params.membrane_value, names["train_labels"]
    )
    test = None
    if "test_images" in names:
        test = check_raw(read_stack(names["test_images"]), names["test_images"])
        if test.shape[1:] != images.shape[1:] and min(test.shape[1:]) < 1:
            raise ValueError(f"{names['test_images']}: empty test slices")
    write_canonical(
        snakemake.output,
        train_images=images,
        train_labels=labels,
        test_images=test,
        source={"name": "files", "membrane_value": snakemake.params.membrane_value},
        names=names,
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
