"""Rule report: the run's self-contained HTML page."""

from pathlib import Path
from typing import Any

import pandas as pd

from emseg.io import read_json, read_stack
from emseg.report import write_report
from emseg.runner import run_rule


def main(snakemake: Any) -> None:
    summary = read_json(snakemake.input.summary)
    slices = list(snakemake.params.slices)
    write_report(
        Path(snakemake.output.html),
        title=f"emseg run {summary['name']} (fold {summary['fold']}, seed {summary['seed']})",
        config=snakemake.params.config,
        train_log=pd.read_csv(snakemake.input.train_log),
        per_slice=pd.read_csv(snakemake.input.per_slice),
        summary=summary,
        images=read_stack(snakemake.input.images)[slices],
        labels=read_stack(snakemake.input.labels)[slices],
        probs=read_stack(snakemake.input.prob),
        threshold=0.5,
        slice_ids=slices,
        curve_png=Path(snakemake.input.curve),
        segmentation=read_stack(snakemake.input.segmentation),
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
