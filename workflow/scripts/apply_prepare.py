"""Rule apply_prepare: check a volume and its models, plan its blocks and create the OME-Zarr."""

from pathlib import Path
from typing import Any

from emseg.apply_plan import make_plan
from emseg.io import write_json
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    plan = make_plan(
        snakemake.wildcards.volume,
        snakemake.params.settings,
        snakemake.params.predict,
        Path(snakemake.params.store),
    )
    LOG.info(
        "%s: %s %s in %d blocks of %s, %d jobs, %d pyramid levels; store %s",
        plan["name"],
        tuple(plan["shape"]),
        plan["dtype"],
        plan["blocks"],
        tuple(plan["block"]),
        plan["jobs"],
        len(plan["levels"]),
        plan["store"],
    )
    write_json(snakemake.output.plan, plan)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
