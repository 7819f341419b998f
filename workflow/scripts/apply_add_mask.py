"""Rule apply_add_mask: the empty membrane mask in an applied volume's store, for its mask jobs."""

from typing import Any

from emseg.io import read_json, write_json
from emseg.membrane_mask import open_mask
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    open_mask(plan)
    write_json(snakemake.output.added, {"threshold": float(snakemake.params.threshold)})


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
