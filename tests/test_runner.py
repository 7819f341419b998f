"""The entry point every rule script imports stays light.

Each Snakemake job is a fresh Python process, and a default run has about 40 of them (25
augmentation jobs side by side); `emseg.runner` once imported pandas, scipy, scikit-image and
jsonschema through emseg.settings for one exception class, 0.6 s of every job and 10 s of the
default run's wall time before training.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pandas", "scipy", "skimage", "torch", "jsonschema", "matplotlib")


def test_importing_the_rule_entry_point_pulls_no_heavy_library() -> None:
    probe = (
        "import sys, emseg.runner;"
        f"print(','.join(name for name in {HEAVY!r} if name in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"emseg.runner imports {loaded}"


def test_config_errors_are_one_class_wherever_they_are_imported_from() -> None:
    """common.smk, the scripts and emseg.settings raise and catch the same ConfigError."""
    from emseg import errors, runner, settings

    assert settings.ConfigError is errors.ConfigError
    assert errors.ConfigError in runner.EXPECTED_ERRORS
