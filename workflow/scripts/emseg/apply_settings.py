"""The `apply:` config section: which volumes to segment with which models, checked before any job.

Each entry of `apply.volumes` names an input volume and inherits every other key from `apply:`
(model, normalisation, block and chunk sizes, outputs), which it may override. A model is a run of
this workflow's grid (`name/fold<k>/seed<s>`, trained first if needed) or a model file; a list
averages several (a fold ensemble). Planning reads the volume's header only, so the number of
jobs is known to Snakemake before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emseg.blocks import BlockGrid, check_block_shape, job_count, label_job_count
from emseg.dataset import MIN_SIDE
from emseg.errors import ConfigError
from emseg.io import InputError
from emseg.settings import refuse_braces
from emseg.volume import UNITS, open_volume, volume_file

RUN_REFERENCE = re.compile(r"^(?P<name>[^/\s]+)/fold(?P<fold>\d+)/seed(?P<seed>\d+)$")


def apply_volumes(
    config: Mapping[str, Any],
    run_settings: Mapping[str, Mapping[str, Any]],
    folds: int,
    seeds: Sequence[int],
    runs_dir: Path,
) -> dict[str, dict[str, Any]]:
    """Every configured volume's settings, with its model files and planned job count.

    `run_settings` is the grid's runs by name (emseg.settings.run_settings).
    """
    runs = list(run_settings)
    section = dict(config.get("apply") or {})
    volumes = section.pop("volumes", None) or {}
    planned = {}
    for name, entry in volumes.items():
        key = f"apply.volumes.{name}"
        settings = {**section, **(entry or {})}
        if not settings.get("input"):
            raise ConfigError(
                f"{key}.input: required (a TIFF, a folder of slices, a zarr or file.h5:/path)"
            )
        refuse_braces(f"{key}.input", str(settings["input"]))
        entries = _model_entries(settings.get("model"), runs, seeds)
        settings["models"] = _model_files(entries, key, runs, folds, seeds, runs_dir)
        settings["segment_settings"] = _segment_settings(entries, run_settings, config)
        unit_section = _section(key, entry, "unit")
        settings["unit"] = length_unit(settings.get("unit"), f"{unit_section}.unit")
        try:
            block, chunks = tuple(settings["block"]), tuple(settings["chunks"])
            check_block_shape(block, chunks, _section(key, entry, "block", "chunks"))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        settings |= _header(settings["input"], f"{key}.input")
        grid = BlockGrid(tuple(settings["shape"]), tuple(settings["block"]))
        settings["blocks"] = len(grid)
        settings["jobs"] = job_count(len(grid), int(settings["blocks_per_job"]))
        settings["label_jobs"] = label_job_count(settings["jobs"], int(settings["blocks_per_job"]))
        planned[name] = settings
    return planned


def _section(volume_key: str, entry: Mapping[str, Any] | None, *names: str) -> str:
    """Where a volume's settings `names` came from: its own entry, else the `apply:` section."""
    return volume_key if set(names) & set(entry or {}) else "apply"


def length_unit(given: Any, key: str) -> str:
    """The config's voxel unit as OME-Zarr names it (nm -> nanometer); empty: the file's."""
    text = str(given or "").strip()
    if not text:
        return ""
    if text.lower() not in UNITS:
        raise ConfigError(
            f"{key}: {text!r} is not a length unit; give nanometer, micrometer, millimeter or"
            " angstrom (or nm, um, mm)"
        )
    return UNITS[text.lower()]


def _header(spec: str, key: str) -> dict[str, Any]:
    """Shape and file of a volume, from its header; unreadable or too small names the key."""
    try:
        volume = open_volume(spec)
    except InputError as error:
        raise ConfigError(f"{key}: {error}") from None
    _, height, width = volume.shape
    if min(height, width) < MIN_SIDE:
        raise ConfigError(
            f"{key}: {volume.name}: slices of {height} x {width} px are too small; the networks"
            f" need at least {MIN_SIDE} x {MIN_SIDE} px"
        )
    return {"shape": list(volume.shape), "input_file": str(volume_file(spec))}


def _model_entries(value: Any, runs: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """A volume's `model`: run references or paths, one or a list; empty means the first run."""
    entries = value if isinstance(value, list) else [value]
    entries = [str(entry) for entry in entries if entry not in (None, "")]
    return entries or [f"{runs[0]}/fold0/seed{seeds[0]}"]


def _run_reference(entry: str) -> re.Match[str] | None:
    """The entry as name/fold<k>/seed<s>, unless a file of that name exists (then it is a path)."""
    run = RUN_REFERENCE.match(entry)
    return run if run and not Path(entry).expanduser().exists() else None


def _segment_settings(
    entries: Sequence[str], run_settings: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any]
) -> dict[str, Any]:
    """The `segment:` of the grid model whose runs the volume applies, else the config's own.

    A volume applied with `vnet/fold0/seed0` (or several runs of vnet) is cut into cells as vnet's
    own runs are; model files and mixed models have no such model and take `segment:`.
    """
    names = {run["name"] if run else None for run in map(_run_reference, entries)}
    if len(names) == 1 and None not in names:
        return dict(run_settings[names.pop()]["segment"])
    return dict(config["segment"])


def _model_files(
    entries: Sequence[str],
    key: str,
    runs: Sequence[str],
    folds: int,
    seeds: Sequence[int],
    runs_dir: Path,
) -> list[str]:
    """Model files for the volume's run references and paths."""
    files = []
    for entry in entries:
        run = _run_reference(entry)
        if run:
            name, fold, seed = run["name"], int(run["fold"]), int(run["seed"])
            if name not in runs or fold >= folds or seed not in seeds:
                known = f"{runs[0]}/fold0/seed{seeds[0]}"
                raise ConfigError(
                    f"{key}.model: run {entry!r} is not in this config's grid (e.g. {known});"
                    " give a run of models:/cv: or the path of a model.pt"
                )
            files.append(str(runs_dir / name / f"fold{fold}" / f"seed{seed}" / "model.pt"))
            continue
        path = Path(entry).expanduser()
        refuse_braces(f"{key}.model", entry)
        if not path.is_file():
            raise ConfigError(
                f"{key}.model: {entry} does not exist (a model.pt or name/fold0/seed0)"
            )
        files.append(str(path))
    return files


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU, seen without importing torch (1 s per snakemake)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))
