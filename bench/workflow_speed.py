"""Snakemake's own overhead: a no-op run when everything is up to date, and a dry run.

A tiny synthetic config runs the whole workflow once in a temporary folder (untimed), then the
same command is timed again (nothing to do) and as a dry run. Both include starting Python and
Snakemake, which is what a user waits for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.harness import REPO, Settings, Table, log, measure, measure_many

TARGET_NOOP_S = 3.0
# The emseg modules every snakemake start imports, read from common.smk so the row follows it.
COMMON_SMK_MODULES = sorted(
    set(
        re.findall(
            r"^from (emseg[\w.]*) import", (REPO / "workflow/rules/common.smk").read_text(), re.M
        )
    )
)

# Small enough that the first, untimed run of the whole chain takes well under a minute.
TINY: dict[str, Any] = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def snakemake(
    folder: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`snakemake --cores all ARGS` on the repository's Snakefile in `folder`; raises on failure."""
    extra = folder / "bench_config.yaml"
    extra.write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(folder),
        "--cores",
        "all",
        *args,
        "--configfile",
        str(REPO / "config.yaml"),
        str(extra),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"snakemake {' '.join(args)} failed in {folder}:\n{result.stderr[-3000:]}"
        )
    return result


def python(code: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter running `code` with emseg importable, as the Snakefile has it."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow" / "scripts")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )


def run(settings: Settings) -> list[Table]:
    table = Table(
        "Workflow overhead (tiny synthetic config, snakemake --cores all)",
        ["case", "runs", "min s", "median s", "max s", "note"],
        notes=[
            f"Target: a run with everything up to date in < {TARGET_NOOP_S:.0f} s (judged on the"
            " median). Times include starting Python and Snakemake; the cases take turns, so"
            " load from other processes hits them alike.",
            "The last rows split the start-up: Snakemake's own, and what importing the emseg"
            f" modules that common.smk imports costs ({', '.join(COMMON_SMK_MODULES)}).",
        ],
    )
    repeats = 1 if settings.quick else max(settings.repeats, 5)
    with tempfile.TemporaryDirectory(prefix="emseg-bench-workflow-") as tmp:
        folder = Path(tmp)
        log("workflow: dry run of the whole chain")
        plan = measure(lambda: snakemake(folder, TINY, "-n"), repeats, 0)
        table.add(case="dry run (-n), nothing built yet", runs=repeats, **plan.columns(), note="")
        if settings.quick:
            table.add(
                case="up to date (no-op)",
                note="skipped with --quick: needs one full tiny run first (~1 min)",
            )
            return [table]
        log("workflow: one full tiny run (untimed)")
        started = time.perf_counter()
        snakemake(folder, TINY)
        first = time.perf_counter() - started
        log("workflow: timing no-op and dry runs")
        timings = measure_many(
            {
                "noop": lambda: snakemake(folder, TINY),
                "dry": lambda: snakemake(folder, TINY, "-n"),
                "version": lambda: subprocess.run(
                    [sys.executable, "-m", "snakemake", "--version"],
                    check=True,
                    capture_output=True,
                ),
                "python": lambda: python("pass"),
                "common": lambda: python(f"import {', '.join(COMMON_SMK_MODULES)}"),
            },
            repeats,
            1,
        )
    noop = timings["noop"]
    table.add(case="first full run (for scale)", runs=1, **{"median s": first}, note="")
    table.add(
        case="up to date (no-op)",
        runs=repeats,
        **noop.columns(),
        note="target met" if noop.median < TARGET_NOOP_S else "above the 3 s target",
    )
    rows = [
        ("dry", "dry run (-n), up to date"),
        ("version", "snakemake --version (start-up only)"),
        ("python", "python -c pass"),
        ("common", "python -c 'import <the emseg modules common.smk imports>'"),
    ]
    for key, case in rows:
        table.add(case=case, runs=repeats, **timings[key].columns(), note="")
    return [table]
