"""Rule split_slices: record the training and held-out slice indices."""

from typing import Any

from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    count = read_json(snakemake.input.dataset)["stacks"]["train_labels"]["shape"][0]
    validation, training = list(snakemake.params.validation), list(snakemake.params.training)
    if sorted(validation + training) != list(range(count)):
        raise ValueError(
            f"split covers {sorted(validation + training)}; dataset has {count} slices"
        )
    LOG.info("training slices %s; held out %s", training, validation)
    write_json(snakemake.output.split, {"training": training, "validation": validation})


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
