"""Rule apply_finish: the pyramid levels above the jobs' own, then the volume's record."""

from pathlib import Path
from typing import Any

from emseg.apply_finish import finish_volume
from emseg.apply_preview import write_preview
from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule
from emseg.stitching import forget_cells


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    jobs = [read_json(path) for path in snakemake.input.jobs]
    cells = bool(snakemake.params.cells)
    if not cells:  # apply.segment: false; cells of an earlier run would not match the config
        forget_cells(plan, Path(snakemake.params.cells_folder))
    record = finish_volume(plan, jobs, cells)
    write_preview(plan, Path(snakemake.output.preview), cells)
    LOG.info(
        "%s: complete; open %s in napari, or look at %s",
        plan["name"],
        plan["store"],
        snakemake.output.preview,
    )
    write_json(snakemake.output.record, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
