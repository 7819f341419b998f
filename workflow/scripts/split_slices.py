"""Rule split_slices: record which labelled slices each fold trains on and holds out."""

from typing import Any

from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    count = read_json(snakemake.input.dataset)["stacks"]["train_labels"]["shape"][0]
    folds = [dict(fold) for fold in snakemake.params.folds]
    for number, fold in enumerate(folds):
        if sorted(fold["training"] + fold["validation"]) != list(range(count)):
            raise ValueError(f"fold {number} does not cover the dataset's {count} slices")
        LOG.info("fold %d: held out %s", number, fold["validation"])
    write_json(snakemake.output.split, {"folds": folds})


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
