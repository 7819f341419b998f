"""Rule apply_relabel: write one relabel job's blocks of cells with the volume's ids."""

from pathlib import Path
from typing import Any

from emseg.io import read_json, write_json
from emseg.runner import run_rule
from emseg.stitching import relabel_blocks


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    label_job = int(snakemake.wildcards.part)
    records = [Path(record) for record in snakemake.input.records]
    write_json(
        snakemake.output.done,
        relabel_blocks(plan, Path(snakemake.input.lut), records, label_job),
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
