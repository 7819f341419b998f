"""Rule apply_stitch: one id per cell over an applied volume, joining cells across block borders."""

from pathlib import Path
from typing import Any

from emseg.io import read_json
from emseg.runner import LOG, run_rule
from emseg.stitching import stitch


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    records = [Path(path) for path in snakemake.input.records]
    counts = stitch(plan, records, Path(snakemake.output.lut))
    LOG.info(
        "%s: %d cells (%d pieces before joining them across block borders)",
        plan["name"],
        counts["cells"],
        counts["cells_before_stitching"],
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
