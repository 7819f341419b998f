"""What must not grow with the volume: a block job's peak memory, and planning time.

Peak memory: one `apply_blocks` job (`emseg.blockwise.run_job`, job 0, as the rule runs it) in a
fresh interpreter, which reports the kernel's high-water mark of its resident memory (`VmHWM`):
exact, where Snakemake's `benchmark:` samples every 30 s after the first 15 s. Not `ru_maxrss`:
Linux carries it over from the parent through fork and exec, so a child of a big benchmark
process reports the parent's peak.
Planning: `snakemake -n apply` on a zarr volume created empty (a header and no chunks), which is
all that planning reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import zarr

from bench.harness import REPO, Settings, Table, log, measure
from bench.workflow_speed import snakemake

TARGET_MEMORY = 0.10  # peak RSS of a job may differ by at most 10 % between volume sizes
TARGET_PLAN_S = 20.0

JOB = """
import json, sys, time
import torch
from emseg.blockwise import run_job
from emseg.precision import choose_precision

def high_water_kib():  # this process's own peak RSS (VmHWM is reset by exec, ru_maxrss is not)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

torch.set_num_threads({threads})
plan = json.loads(open({plan!r}).read())
start = high_water_kib()
cpu = torch.device("cpu")
record = run_job(plan, 0, cpu, choose_precision("auto", cpu, "predict.precision"))
record["startup_kib"] = start
record["max_rss_kib"] = high_water_kib()
print(json.dumps(record))
"""


def job_memory(plan_path: Path, threads: int) -> dict[str, Any]:
    """Run job 0 of a planned volume in a fresh interpreter; its record with the peak RSS."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "workflow" / "scripts"),
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": str(threads),
    }
    result = subprocess.run(
        [sys.executable, "-c", JOB.format(threads=threads, plan=str(plan_path))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"apply job of {plan_path} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_table(cases: list[tuple[str, tuple[int, int, int], Path]], threads: int) -> Table:
    """Peak RSS of job 0 for each (name, shape, plan file); the last is compared with the first."""
    table = Table(
        "Peak memory of one apply_blocks job (emseg.blockwise.run_job, job 0)",
        [
            "volume",
            "block",
            "blocks in the job",
            "job s",
            "start-up MiB",
            "peak RSS MiB",
            "vs first row %",
            "note",
        ],
        notes=[
            f"Target: a job's peak memory depends on the block, not the volume: within"
            f" {100 * TARGET_MEMORY:.0f} % between the volumes. Peak RSS = VmHWM of a fresh"
            " interpreter that runs the job (kernel high-water mark, exact); start-up = the same"
            " after importing torch and emseg and reading the plan.",
            f"torch threads: {threads}; the plan (blocks, chunks, levels) from config.yaml's"
            " apply section, as `snakemake apply` makes it.",
        ],
    )
    first = None
    for name, shape, plan_path in cases:
        log(f"apply: memory of job 0 of {name} {shape}")
        record = job_memory(plan_path, threads)
        plan = json.loads(plan_path.read_text())
        peak = record["max_rss_kib"] / 1024
        first = peak if first is None else first
        change = 100 * (peak / first - 1)
        note = ""
        if len(table.rows):
            note = "target met" if abs(change) <= 100 * TARGET_MEMORY else "above the 10 % target"
        table.add(
            volume=f"{name}: {' x '.join(map(str, shape))}",
            block=" x ".join(map(str, plan["block"])),
            **{
                "blocks in the job": record["blocks"][1] - record["blocks"][0],
                "job s": record["seconds"],
                "start-up MiB": record["startup_kib"] / 1024,
                "peak RSS MiB": peak,
                "vs first row %": change,
            },
            note=note,
        )
    return table


def plan_table(
    cases: list[tuple[str, Path]],
    model: Path,
    apply: Mapping[str, Any],
    settings: Settings,
    folder: Path,
) -> Table:
    """`snakemake -n apply` timed for each (name, zarr volume), with the default block and jobs."""
    table = Table(
        "Planning (snakemake -n apply, default block and job sizes)",
        ["volume", "blocks", "jobs", "runs", "min s", "median s", "max s", "note"],
        notes=[
            f"Target: a 64 x 16384 x 16384 volume plans in < {TARGET_PLAN_S:.0f} s (median)."
            " The volume is a zarr array created empty: planning reads its header only. Times"
            " include starting Python and Snakemake and building the DAG of every block job.",
        ],
    )
    repeats = 1 if settings.quick else settings.repeats
    for name, volume in cases:
        shape = tuple(zarr.open_array(str(volume), mode="r").shape)
        entry = {"input": str(volume), "model": str(model)}
        config = {"apply": {**apply, "volumes": {name: entry}}}
        work = folder / f"plan-{name}"
        work.mkdir(exist_ok=True)
        log(f"apply: snakemake -n apply on {shape}")
        jobs: dict[str, int] = {}

        def dry(work: Path = work, config: dict[str, Any] = config, jobs: dict = jobs) -> None:
            jobs["n"] = _dry_run_jobs(work, config)

        timing = measure(dry, repeats, 0)
        target = timing.median < TARGET_PLAN_S
        table.add(
            volume=" x ".join(map(str, shape)),
            blocks=_blocks(shape, apply["block"]),
            jobs=jobs["n"],
            runs=len(timing.runs),
            **timing.columns(),
            note="target met" if target else f"above the {TARGET_PLAN_S:.0f} s target",
        )
    return table


def _dry_run_jobs(folder: Path, config: dict[str, Any]) -> int:
    """Run `snakemake -n apply` in `folder`; the number of apply_blocks jobs it planned."""
    result = snakemake(folder, config, "-n", "apply")
    found = re.search(r"^apply_blocks\s+(\d+)\s*$", result.stdout, re.M)
    if not found:
        raise RuntimeError(f"snakemake -n apply in {folder} planned no apply_blocks jobs")
    return int(found.group(1))


def _blocks(shape: tuple[int, ...], block: list[int]) -> int:
    count = 1
    for size, side in zip(shape, block, strict=True):
        count *= -(-size // side)
    return count
