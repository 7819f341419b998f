"""Rule apply_mask: one job's blocks of the membrane mask, from the stored probability."""

from typing import Any

from emseg.io import read_json, write_json
from emseg.membrane_mask import mask_blocks
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    job = int(snakemake.wildcards.job)
    write_json(snakemake.output.done, mask_blocks(plan, job, float(snakemake.params.threshold)))


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
