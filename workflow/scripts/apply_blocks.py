"""Rule apply_blocks: predict one job's blocks of a volume and write their chunks."""

from typing import Any

import torch

from emseg.blockwise import run_job
from emseg.io import read_json, write_json
from emseg.runner import LOG, run_rule
from emseg.training import select_device


def main(snakemake: Any) -> None:
    plan = read_json(snakemake.input.plan)
    device = select_device(snakemake.params.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, snakemake.threads))
    job = int(snakemake.wildcards.job)
    record = run_job(plan, job, device)
    LOG.info(
        "job %d of %s: blocks %d-%d, %.1f Mvoxel/s on %s (waited %.1f s for reads, %.1f s for"
        " writes, of %.1f s)",
        job,
        plan["name"],
        record["blocks"][0],
        record["blocks"][1] - 1,
        record["voxels_per_s"] / 1e6,
        record["device"],
        record["read_wait_s"],
        record["write_wait_s"],
        record["seconds"],
    )
    write_json(snakemake.output.done, record)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
