"""Checks of the workflow configuration that a JSON schema cannot express, and derived settings.

The schema (workflow/schemas/config.schema.yaml) rejects unknown keys and wrong types; the checks
here look at values together (a tile size the network cannot use, more held-out slices than exist,
a missing input path) so that a bad config stops the run before any job, naming the key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from emseg.errors import ConfigError
from emseg.io import InputError, count_slices, slice_size
from emseg.models.geometry import geometry_for, parse_spec
from emseg.segment_settings import SegmentSettings

ISBI_SLICES = 30
MIRROR_ENV = "EMSEG_ISBI_MIRROR"


def check_config(config: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first key whose value cannot work."""
    for key in ("results", "data.train_images", "data.train_labels", "data.test_images"):
        _refuse_braces(key, config)
    data = config["data"]
    if data["source"] == "files":
        for key in ("train_images", "train_labels"):
            _require_path(f"data.{key}", data.get(key, ""))
        if data.get("test_images"):
            _require_path("data.test_images", data["test_images"])
    if data["source"] == "isbi2012":
        mirror = isbi_mirror(config)
        if mirror is not None and not mirror.is_dir():
            origin = "" if data.get("mirror") else f" (from ${MIRROR_ENV})"
            raise ConfigError(f"data.mirror: folder {mirror}{origin} does not exist")
    pre = config["preprocess"]
    if pre["lower_percentile"] >= pre["upper_percentile"]:
        raise ConfigError("preprocess.lower_percentile must be below preprocess.upper_percentile")
    folds(config)
    for name, settings in run_settings(config).items():
        where = f"models.{name}." if config.get("models") else ""
        try:
            SegmentSettings.from_config(settings["segment"])
        except ValueError as error:
            raise ConfigError(f"{where}{error}") from None
        _check_tile(f"{where}train.tile_size", settings["train"]["tile_size"], settings["model"])
        if data["source"] == "files":
            _check_tile_fits(f"{where}train.tile_size", settings, Path(data["train_labels"]))
        _check_tile(
            f"{where}predict.tile_size", settings["predict"]["tile_size"], settings["model"]
        )


def run_settings(config: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each named run's model, train, predict and segment settings: `models:` entries over them.

    With no `models:` entry the grid is the one model of `model:`, named by `model.name`. A run's
    own `predict:` lets networks whose valid tile sizes differ (unpadded and padded) share a grid;
    its own `segment:` suits the cell segmentation to how its network draws membranes.
    """
    sections = ("model", "train", "predict", "segment")
    base = {section: dict(config[section]) for section in sections}
    entries = config.get("models") or {config["model"]["name"]: {}}
    runs = {}
    for name, override in entries.items():
        runs[name] = {
            section: {**base[section], **(override or {}).get(section, {})} for section in sections
        }
        runs[name]["model"]["name"] = name
    return runs


def folds(config: Mapping[str, Any]) -> list[dict[str, list[int]]]:
    """Cross-validation folds: `cv.folds` contiguous blocks, or the one split of `split:`.

    Contiguous blocks, not shuffled slices: neighbouring serial sections look alike, so a slice's
    neighbour in the training set would flatter the held-out score.
    """
    total = labelled_slice_count(config)
    count = int(config["cv"]["folds"])
    if count == 1:
        held_out = validation_slices(config)
        training = [i for i in range(total) if i not in held_out]
        return [{"training": training, "validation": held_out}]
    if count > total:
        raise ConfigError(f"cv.folds: {count} folds need {count} labelled slices, not {total}")
    bounds = [round(k * total / count) for k in range(count + 1)]
    blocks = [list(range(bounds[k], bounds[k + 1])) for k in range(count)]
    return [
        {"training": [i for i in range(total) if i not in block], "validation": block}
        for block in blocks
    ]


def coerce_to_schema(config: dict[str, Any], schema_path: Path) -> None:
    """Turn numeric and boolean strings into numbers and booleans where the schema expects them.

    `snakemake --config train='{lr: 1e-3}'` and YAML's own rules (1e-3 without a dot is a string)
    hand over strings; converting them where the schema is sure of the type saves users a puzzle.
    """
    schema = yaml.safe_load(schema_path.read_text())
    _coerce(config, schema, schema.get("definitions", {}))


def _coerce(
    node: dict[str, Any], schema: Mapping[str, Any], definitions: Mapping[str, Any]
) -> None:
    schema = _resolve(schema, definitions)
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, value in node.items():
        sub = properties.get(key, extra if isinstance(extra, dict) else None)
        if sub is None:
            continue
        node[key] = _coerced(value, _resolve(sub, definitions), definitions)


def _coerced(value: Any, schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> Any:
    """`value` with its strings converted where `schema` (and, in lists, `items`) is sure."""
    if isinstance(value, dict):
        _coerce(value, schema, definitions)
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = _resolve(schema["items"], definitions)
        return [_coerced(item, items, definitions) for item in value]
    if isinstance(value, str):
        return _convert(value, schema.get("type"))
    return value


def _resolve(schema: Mapping[str, Any], definitions: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local `$ref` ("#/definitions/name") to the schema it names."""
    if "$ref" in schema:
        return {**definitions.get(schema["$ref"].rsplit("/", 1)[-1], {}), **schema}
    return schema


def _convert(value: str, kind: Any) -> Any:
    text = value.strip()
    if kind == "integer" and text.lstrip("+-").isdigit():
        return int(text)
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            return value
        return number if math.isfinite(number) else value  # "nan" would pass every bound check
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def describe_schema_error(config: Mapping[str, Any], schema_path: Path) -> str:
    """One line naming the config key that breaks the schema, not a dump of the whole config."""
    schema = yaml.safe_load(schema_path.read_text())
    errors = jsonschema.Draft202012Validator(schema).iter_errors(config)
    error = jsonschema.exceptions.best_match(errors)
    if error is None:
        return "config does not match workflow/schemas/config.schema.yaml"
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"config key {key}: {error.message}"


def isbi_mirror(config: Mapping[str, Any]) -> Path | None:
    """The local ISBI mirror folder: config `data.mirror`, else $EMSEG_ISBI_MIRROR, else None."""
    mirror = config["data"].get("mirror") or os.environ.get(MIRROR_ENV, "")
    return Path(mirror).expanduser() if mirror else None


def labelled_slice_count(config: Mapping[str, Any]) -> int:
    """How many labelled slices the source brings (read from the file header for `files`)."""
    data = config["data"]
    if data["source"] == "isbi2012":
        return ISBI_SLICES
    if data["source"] == "synthetic":
        return int(data["synthetic"]["slices"])
    return _count_slices(Path(data["train_labels"]))


def validation_slices(config: Mapping[str, Any]) -> list[int]:
    """The held-out slice indices: `split.val_slices` if given, else the last `split.val_count`."""
    total = labelled_slice_count(config)
    split = config["split"]
    chosen = sorted(split.get("val_slices") or [])
    if chosen:
        if chosen[-1] >= total:
            raise ConfigError(
                f"split.val_slices: slice {chosen[-1]} does not exist ({total} slices)"
            )
    else:
        count = int(split.get("val_count", 1))
        if count >= total:
            raise ConfigError(f"split.val_count: {count} leaves no training slice ({total} slices)")
        chosen = list(range(total - count, total))
    if len(chosen) >= total:
        raise ConfigError(
            f"split.val_slices: holding out all {total} slices leaves none to train on"
        )
    return chosen


def export_run(config: Mapping[str, Any]) -> tuple[str, int, int]:
    """The run the `export` target packages: `export.name` (default: the first run), fold, seed."""
    section = config.get("export") or {}
    name = section.get("name") or next(iter(run_settings(config)))
    fold, seed = int(section.get("fold", 0)), int(section.get("seed", 0))
    check_export(config, name, fold, seed)
    return name, fold, seed


def check_export(config: Mapping[str, Any], name: str, fold: int, seed: int) -> None:
    """Refuse, before any job, to package a run outside the grid or without authors or license.

    A run outside the grid has no rule that would train it, so its model can never exist.
    """
    runs, count, seeds = list(run_settings(config)), len(folds(config)), list(config["cv"]["seeds"])
    if name not in runs or not 0 <= fold < count or seed not in seeds:
        model = Path(config["results"]) / "runs" / name / f"fold{fold}" / f"seed{seed}" / "model.pt"
        raise ConfigError(
            f"export: {model} does not exist and cannot be trained: run {name} fold {fold} seed "
            f"{seed} is not in this config's grid (runs {', '.join(runs)}; folds 0 to "
            f"{count - 1}; seeds {seeds}); set export.name, export.fold and export.seed"
        )
    section = config.get("export") or {}
    if not section.get("authors"):
        raise ConfigError(
            "export.authors: a model package names its authors; add at least one, e.g. "
            "export: {authors: [{name: Ada Lovelace, affiliation: Your Lab}], license: CC-BY-4.0}"
        )
    if not section.get("license"):
        raise ConfigError(
            "export.license: a model package states its license; give an SPDX identifier such "
            "as CC-BY-4.0, MIT or BSD-3-Clause"
        )
    check_license(str(section["license"]))
    documentation = section.get("documentation") or ""
    if documentation and not Path(documentation).expanduser().is_file():
        raise ConfigError(f"export.documentation: {documentation} does not exist")


def check_license(license_id: str) -> None:
    """Refuse a non-SPDX license before training, not in the export job after it.

    The SPDX list ships with bioimageio.spec, which only the `export` extra installs; without it
    the export job itself says which extra is missing.
    """
    try:
        from bioimageio.spec.model.v0_5 import LicenseId
        from pydantic import ValidationError
    except ImportError:
        return
    try:
        LicenseId(license_id)
    except ValidationError:
        raise ConfigError(
            f"export.license: {license_id!r} is not an SPDX license identifier "
            "(e.g. CC-BY-4.0, MIT, BSD-3-Clause; see https://spdx.org/licenses)"
        ) from None


def training_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """The `data` section as a run's hash holds it: what a trained run depends on.

    Left out: where the ISBI copy came from (`mirror`; every file is checked against the
    manifest) and the test stack (`test_images`), which no training reads, so that changing them
    retrains nothing. Every other key stays, so that a run made before this distinction keeps its
    hash and is not retrained by an upgrade.
    """
    return {**data, "mirror": "", "test_images": ""}


def config_hash(*sections: Any) -> str:
    """A short stable hash of config sections, recorded with results to say what produced them."""
    blob = json.dumps(sections, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _refuse_braces(key: str, config: Mapping[str, Any]) -> None:
    section, _, name = key.rpartition(".")
    refuse_braces(key, str((config[section] if section else config).get(name) or ""))


def refuse_braces(key: str, value: str) -> None:
    """Snakemake reads `{name}` in any file path as a wildcard, with no way to escape it."""
    if "{" in value or "}" in value:
        raise ConfigError(
            f"{key}: {value!r} holds braces, which Snakemake reads as wildcards;"
            " rename the folder or file"
        )


def _require_path(key: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{key}: required when data.source is 'files'")
    if not Path(value).expanduser().exists():
        raise ConfigError(f"{key}: {value} does not exist")


def _count_slices(path: Path) -> int:
    try:
        return count_slices(path.expanduser())
    except InputError as error:
        raise ConfigError(f"data.train_labels: {error}") from error


def _check_tile_fits(key: str, settings: Mapping[str, Any], labels: Path) -> None:
    """Refuse before any job a training tile whose output is larger than the user's slices."""
    try:
        height, width = slice_size(labels.expanduser())
    except InputError as error:
        raise ConfigError(f"data.train_labels: {error}") from error
    tile = int(settings["train"]["tile_size"])
    out = geometry_for(settings["model"]).output_size(tile)
    if out > min(height, width):
        raise ConfigError(
            f"{key}: tiles of {tile} px predict {out} px, more than the {height} x {width} px"
            f" slices of data.train_labels ({labels}); use a smaller tile"
        )


def _check_tile(key: str, size: int, model: Mapping[str, Any]) -> None:
    try:
        spec = parse_spec(model)
        geometry = geometry_for(model)
    except ValueError as error:
        raise ConfigError(f"model: {error}") from error
    try:
        geometry.require_valid(size, key)
    except ValueError as error:
        network = f"{spec.arch}, padding {spec.padding}, depth {spec.depth}"
        raise ConfigError(str(error).replace("this network", network)) from None
