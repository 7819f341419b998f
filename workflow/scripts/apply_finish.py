"""Rule apply_finish: the pyramid levels above the jobs' own, then the volume's record."""

from pathlib import Path
from typing import Any

from emseg.apply_finish import finish_volume, forget_label_image
from emseg.apply_preview import write_preview
from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    jobs = [read_json(path) for path in snakemake.input.jobs]
    asked = {"mask": bool(snakemake.params.mask), "cells": bool(snakemake.params.cells)}
    folder = Path(snakemake.params.folder)
    # Label images of an earlier run that the config no longer asks for would not match it. The
    # cells' segmentation records stay: asking for the same cells again does not segment again.
    if not asked["mask"]:
        forget_label_image(plan, "mask", (folder / "mask").glob("*.json"))
    if not asked["cells"]:
        records = [folder / "cells" / "ids.npz", *(folder / "cells").glob("*.json")]
        forget_label_image(plan, "cells", records)
    labels = [name for name, wanted in asked.items() if wanted]
    record = finish_volume(plan, jobs, labels)
    write_preview(plan, Path(snakemake.output.preview), labels)
    LOG.info(
        "%s: complete; open %s in napari, or look at %s",
        plan["name"],
        plan["store"],
        snakemake.output.preview,
    )
    write_json(snakemake.output.record, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
