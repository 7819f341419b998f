"""Rule apply_mask: one mask job's blocks of the membrane mask, from the stored probability."""

from typing import Any

from emseg.io import read_json, write_json
from emseg.membrane_mask import mask_blocks
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    label_job = int(snakemake.wildcards.part)
    threshold = float(snakemake.params.threshold)
    write_json(snakemake.output.done, mask_blocks(plan, label_job, threshold))


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
