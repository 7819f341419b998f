"""Rule compare: every run of the grid in one table and one comparison page."""

from pathlib import Path
from typing import Any

from emseg.compare import comparison_table, render_comparison
from emseg.io import atomic_path, read_json
from emseg.report import write_html
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    table = comparison_table(
        [read_json(path) for path in snakemake.input.summaries],
        [read_json(path) for path in snakemake.input.train_summaries],
        [read_json(path) for path in snakemake.input.ensembles],
    )
    LOG.info("%d runs and seed ensembles compared", len(table))
    with atomic_path(snakemake.output.table) as tmp:
        table.to_csv(tmp, index=False)
    write_html(Path(snakemake.output.page), render_comparison(table))


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
