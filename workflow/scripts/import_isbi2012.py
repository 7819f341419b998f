"""Rule import_isbi2012: stack the verified ISBI 2012 PNG slices into canonical TIFFs."""

from pathlib import Path
from typing import Any

from emseg.dataset import binarize_labels, write_canonical
from emseg.io import InputError, read_json, read_stack, sha256_file
from emseg.runner import run_rule

ISBI_MEMBRANE_VALUE = 0


def main(snakemake: Any) -> None:
    folder = Path(snakemake.params.folder)
    for relative, expected in read_json(snakemake.input.record)["files"].items():
        if sha256_file(folder / relative) != expected:
            raise InputError(f"{folder / relative}: checksum changed since download; delete it")
    labels = folder / "train" / "label"
    write_canonical(
        snakemake.output,
        train_images=read_stack(folder / "train" / "image"),
        train_labels=binarize_labels(read_stack(labels), ISBI_MEMBRANE_VALUE, labels),
        test_images=read_stack(folder / "test"),
        source={"name": "isbi2012", "folder": str(folder)},
        names={
            "train_images": str(folder / "train" / "image"),
            "train_labels": str(labels),
            "test_images": str(folder / "test"),
        },
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
