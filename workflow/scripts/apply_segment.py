"""Rule apply_segment: segment one job's blocks of an applied volume into cells, with a halo."""

from pathlib import Path
from typing import Any

from emseg.io import read_json
from emseg.runner import LOG, run_rule
from emseg.segment_settings import SegmentSettings
from emseg.stitching import segment_blocks


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    settings = SegmentSettings.from_config(snakemake.params.segment)
    job = int(snakemake.wildcards.job)
    record = segment_blocks(
        plan, settings, int(snakemake.params.halo), job, Path(snakemake.output.record)
    )
    LOG.info(
        "job %d of %s: %d cells before stitching (%s)",
        job,
        plan["name"],
        record["cells_before_stitching"],
        settings.method,
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
