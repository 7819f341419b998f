"""Rule apply_blocks: predict one job's blocks of a volume and write their chunks."""

from typing import Any

import torch

from emseg.blockwise import run_job
from emseg.io import read_json, write_json
from emseg.precision import choose_precision
from emseg.runner import LOG, run_rule
from emseg.training import select_device


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    device = select_device(snakemake.params.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, snakemake.threads))
    precision = choose_precision(snakemake.params.precision, device, "predict.precision")
    LOG.info("predicting on %s in %s", device, precision.describe())
    job = int(snakemake.wildcards.job)
    record = run_job(plan, job, device, precision)
    LOG.info(
        "job %d of %s: blocks %d-%d, %s voxels/s on %s (waited %.1f s for reads, %.1f s for"
        " writes, of %.1f s)",
        job,
        plan["name"],
        record["blocks"][0],
        record["blocks"][1] - 1,
        f"{record['voxels_per_s']:,.0f}",
        record["device"],
        record["read_wait_s"],
        record["write_wait_s"],
        record["seconds"],
    )
    write_json(snakemake.output.done, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
