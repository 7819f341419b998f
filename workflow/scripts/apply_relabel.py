"""Rule apply_relabel: write one job's blocks of cells with the volume's ids."""

from pathlib import Path
from typing import Any

from emseg.io import read_json, write_json
from emseg.runner import run_rule
from emseg.stitching import relabel_blocks


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    job = int(snakemake.wildcards.job)
    record = relabel_blocks(plan, Path(snakemake.input.lut), Path(snakemake.input.record), job)
    write_json(snakemake.output.done, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
