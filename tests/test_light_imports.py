"""What every job and every `snakemake` start imports stays light.

Each Snakemake job is a fresh Python process (a default run has about 40, 25 augmentation jobs
side by side), and every `snakemake` call, dry runs and each cluster job's own included, reads the
config through common.smk. `emseg.runner` once imported pandas, scipy, scikit-image and jsonschema
through emseg.settings for one exception class (0.6 s of every job, 10 s of the default run
before training), and emseg.settings imported them with the segmentation for its settings class
(0.7 s of every `snakemake` start).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.workflow_speed import COMMON_SMK_MODULES

HEAVY = {"pandas", "scipy", "skimage", "torch", "matplotlib"}
CONFIG_READER = f"import {', '.join(COMMON_SMK_MODULES)}"  # read from common.smk, as it changes


def modules_loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after `statement`."""
    probe = f"import sys; {statement}; print(' '.join(sys.modules))"
    return set(
        subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True
        ).stdout.split()
    )


@pytest.mark.parametrize(
    "statement, also_not",
    [
        ("import emseg.runner", {"jsonschema"}),  # what every rule script imports
        (CONFIG_READER, set()),  # what common.smk imports at every snakemake start
    ],
    ids=["rule job", "snakemake start"],
)
def test_the_shared_entry_points_pull_no_heavy_library(statement: str, also_not: set[str]) -> None:
    assert modules_loaded_by(statement) & (HEAVY | also_not) == set()


@pytest.mark.parametrize("module", ["emseg.stitching", "emseg.membrane_mask"])
def test_the_cell_and_mask_jobs_of_a_volume_do_without_pandas_and_torch(module: str) -> None:
    """apply_segment, apply_relabel and apply_mask run once per job of a volume: hundreds."""
    assert modules_loaded_by(f"import {module}") & {"pandas", "torch"} == set()


def test_config_errors_are_one_class_wherever_they_are_imported_from() -> None:
    """common.smk, the scripts and emseg.settings raise and catch the same ConfigError."""
    from emseg import errors, runner, settings

    assert settings.ConfigError is errors.ConfigError
    assert errors.ConfigError in runner.EXPECTED_ERRORS


def test_segment_settings_are_one_class_wherever_they_are_imported_from() -> None:
    from emseg import segment_settings, segmentation

    assert segmentation.SegmentSettings is segment_settings.SegmentSettings
