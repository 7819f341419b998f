"""Rule apply_finish: the pyramid levels above the jobs' own, then the volume's record."""

from pathlib import Path
from typing import Any

from emseg.apply_finish import finish_volume
from emseg.apply_preview import write_preview
from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    jobs = [read_json(path) for path in snakemake.input.jobs]
    record = finish_volume(plan, jobs)
    write_preview(plan, Path(snakemake.output.preview))
    LOG.info(
        "%s: complete; open %s in napari, or look at %s",
        plan["name"],
        plan["store"],
        snakemake.output.preview,
    )
    write_json(snakemake.output.record, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
