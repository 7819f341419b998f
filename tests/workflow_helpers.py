"""Running the real workflow from tests: a tiny config, a subprocess, and what it printed."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from snakemake.utils import update_config

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO.parent / "shared" / "data" / "isbi2012"

# Small enough that the whole chain runs in well under a minute on 2 cores.
TINY: dict[str, Any] = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`, by Snakemake's own rule for config files."""
    merged = copy.deepcopy(dict(base))
    update_config(merged, copy.deepcopy(dict(override)))
    return merged


def write_config(folder: Path, override: Mapping[str, Any] | None = None) -> Path:
    path = folder / "test_config.yaml"
    path.write_text(yaml.safe_dump(merge(TINY, override or {})))
    return path


def snakemake(
    folder: Path,
    *args: str,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    cores: int | None = 2,
) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the repo's Snakefile with `folder` as working directory
    (cores None: without --cores, as commands that run no job are typed)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(folder),
        *(["--cores", str(cores)] if cores is not None else []),
        *args,  # targets and flags first: everything after --configfile is a config file
        "--configfile",
        str(REPO / "config.yaml"),
    ]
    if config is not None:
        command.append(str(config))
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def run_to_the_end(folder: Path, override: Mapping[str, Any]) -> Path:
    """The tiny config with `override`, run to the end in `folder` (the tests' shared fixture)."""
    result = snakemake(folder, config=write_config(folder, override))
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def start_snakemake(folder: Path, config: Path, *targets: str) -> subprocess.Popen[str]:
    """Snakemake in the background, in its own process group so that a kill reaches every job."""
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(folder),
        "--cores", "1", *targets, "--configfile", str(REPO / "config.yaml"), str(config),
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def jobs_planned(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule name -> job count."""
    counts: dict[str, int] = {}
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    inside = False
    for line in lines:
        if line.startswith("job ") and "count" in line:
            inside = True
            continue
        if inside:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
    return counts
