"""Rule apply_tiff: an applied volume's membrane probability as a multi-page TIFF for Fiji."""

from pathlib import Path
from typing import Any

from emseg.apply_finish import write_tiff
from emseg.io import read_json
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    write_tiff(Path(plan["store"]), Path(snakemake.output.tiff), plan)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
