"""The conda environments of `snakemake --use-conda` carry what the package itself needs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Run by Snakemake itself, outside the jobs' environments.
NOT_IN_JOBS = {"snakemake"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def _env_packages(path: Path) -> dict[str, str]:
    packages = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for requirement in entry["pip"] if isinstance(entry, dict) else [entry]:
            packages[_name(requirement)] = requirement.replace(" ", "")
    return packages


@pytest.mark.parametrize("env", ["emseg.yaml", "export.yaml"])
def test_every_dependency_is_in_the_jobs_environment_with_its_pins(env: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = _env_packages(ROOT / "envs" / env)
    for requirement in project["dependencies"]:
        name = _name(requirement)
        if name in NOT_IN_JOBS:
            continue
        assert name in packages, f"envs/{env} lacks {requirement}"
        assert packages[name] == requirement.replace(" ", ""), f"envs/{env}: {packages[name]}"


def test_the_export_environment_carries_the_export_extra() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = _env_packages(ROOT / "envs" / "export.yaml")
    for requirement in extra["optional-dependencies"]["export"]:
        assert packages.get(_name(requirement)) == requirement.replace(" ", ""), requirement
