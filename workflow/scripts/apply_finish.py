"""Rule apply_finish: the pyramid levels above the jobs' own, then the volume's record."""

from typing import Any

from emseg.apply_finish import finish_volume
from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    jobs = [read_json(path) for path in snakemake.input.jobs]
    record = finish_volume(plan, jobs)
    LOG.info("%s: complete; open %s in napari", plan["name"], plan["store"])
    write_json(snakemake.output.record, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
