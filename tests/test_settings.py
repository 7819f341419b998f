"""Tests of emseg.settings: config checks, slice counts, schema coercion and error messages."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image
from snakemake.utils import update_config

from emseg.apply_settings import apply_volumes
from emseg.io import write_stack
from emseg.settings import (
    ISBI_SLICES,
    MIRROR_ENV,
    ConfigError,
    check_config,
    coerce_to_schema,
    config_hash,
    describe_schema_error,
    isbi_mirror,
    labelled_slice_count,
    run_settings,
    training_data,
    validation_slices,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh copy of the repository's default config, with no mirror from the environment."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return copy.deepcopy(DEFAULT)


def files_config(
    config: dict[str, Any], folder: Path, slices: int = 6, side: int = 256
) -> dict[str, Any]:
    """Point `config` at a stack of user files in `folder`, as large as the default tile."""
    stack = np.zeros((slices, side, side), np.uint8)
    for name in ("images", "labels"):
        write_stack(folder / f"{name}.tif", stack)
    config["data"].update(
        source="files",
        train_images=str(folder / "images.tif"),
        train_labels=str(folder / "labels.tif"),
        test_images="",
    )
    config["split"]["val_count"] = 2
    return config


def raises_for(config: dict[str, Any], key: str) -> str:
    """check_config raises a one-line ConfigError that starts with `key`; return the message."""
    with pytest.raises(ConfigError) as caught:
        check_config(config)
    message = str(caught.value)
    assert message.startswith(key), message
    assert "\n" not in message
    return message


def valid_unet_sizes(depth: int, upto: int) -> list[int]:
    """Unpadded U-Net inputs from the paper's arithmetic: 2**depth * (b + 8) - 4 with b > 4."""
    return [2**depth * (b + 8) - 4 for b in range(5, upto)]


# --- check_config --------------------------------------------------------------------------------


def test_default_config_matches_schema_and_passes(config: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text())).validate(config)
    check_config(config)
    assert validation_slices(config) == list(range(ISBI_SLICES - 5, ISBI_SLICES))


def test_files_source_passes_with_existing_files(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path)
    check_config(config)
    assert validation_slices(config) == [4, 5]


def test_slices_smaller_than_the_training_tile_are_refused_before_any_job(
    config: dict[str, Any], tmp_path: Path
) -> None:
    files_config(config, tmp_path, side=200)
    raises_for(config, "train.tile_size: tiles of 256 px predict 256 px, more than the 200 x 200")
    config["train"]["tile_size"] = 192
    check_config(config)


@pytest.mark.parametrize("key", ["train_images", "train_labels"])
def test_files_source_needs_train_paths(config: dict[str, Any], tmp_path: Path, key: str) -> None:
    files_config(config, tmp_path)
    config["data"][key] = ""
    raises_for(config, f"data.{key}")
    del config["data"][key]
    raises_for(config, f"data.{key}")


@pytest.mark.parametrize("key", ["train_images", "train_labels", "test_images"])
def test_files_source_names_missing_path(config: dict[str, Any], tmp_path: Path, key: str) -> None:
    files_config(config, tmp_path)
    absent = tmp_path / "nowhere" / "stack.tif"
    config["data"][key] = str(absent)
    assert str(absent) in raises_for(config, f"data.{key}")


def test_files_source_with_unreadable_labels(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path)
    labels = Path(config["data"]["train_labels"])
    labels.write_bytes(labels.read_bytes()[:100])
    assert labels.name in raises_for(config, "data.train_labels")


@pytest.mark.parametrize("count", [ISBI_SLICES, ISBI_SLICES + 3])
def test_val_count_must_leave_training_slices(config: dict[str, Any], count: int) -> None:
    config["split"]["val_count"] = count
    raises_for(config, "split.val_count")


def test_val_count_against_files_slice_count(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path, slices=4)
    config["split"]["val_count"] = 4
    assert "4 slices" in raises_for(config, "split.val_count")
    config["split"]["val_count"] = 3
    check_config(config)
    assert validation_slices(config) == [1, 2, 3]


def test_val_slices_out_of_range(config: dict[str, Any]) -> None:
    config["split"]["val_slices"] = [3, ISBI_SLICES]
    assert str(ISBI_SLICES) in raises_for(config, "split.val_slices")


def test_val_slices_cannot_hold_out_everything(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path, slices=3)
    config["split"]["val_slices"] = [0, 1, 2]
    raises_for(config, "split.val_slices")


def test_val_slices_take_precedence_and_are_sorted(config: dict[str, Any]) -> None:
    config["split"]["val_slices"] = [7, 2, 11]
    check_config(config)
    assert validation_slices(config) == [2, 7, 11]


def test_percentiles_must_be_ordered(config: dict[str, Any]) -> None:
    config["preprocess"].update(lower_percentile=60.0, upper_percentile=40.0)
    raises_for(config, "preprocess.lower_percentile")


def test_invalid_tile_size_for_unpadded_unet(config: dict[str, Any]) -> None:
    config["model"].update(padding="valid", depth=4)
    config["predict"]["tile_size"] = 572
    config["train"]["tile_size"] = 256
    sizes = valid_unet_sizes(4, 40)
    assert 572 in sizes  # the paper's tile
    below = max(s for s in sizes if s < 256)
    above = min(s for s in sizes if s > 256)
    message = raises_for(config, "train.tile_size")
    assert re.search(rf"\b{below}\b", message)
    assert re.search(rf"\b{above}\b", message)
    assert "padding valid" in message
    config["train"]["tile_size"] = above
    check_config(config)


def test_tile_size_message_reports_default_padding(config: dict[str, Any]) -> None:
    del config["model"]["padding"]  # an unet is unpadded unless told otherwise
    config["train"]["tile_size"] = 256
    config["predict"]["tile_size"] = 572
    assert "padding valid" in raises_for(config, "train.tile_size")


def test_invalid_predict_tile_size_for_padded_net(config: dict[str, Any]) -> None:
    config["model"].update(arch="fcn", padding="same", depth=4)
    config["predict"]["tile_size"] = 500
    message = raises_for(config, "predict.tile_size")
    assert "496" in message
    assert "512" in message


def test_compare_config_gives_each_network_its_own_predict_tile(config: dict[str, Any]) -> None:
    """config/compare.yaml mixes the unpadded U-Net (572 px tiles) with padded networks (512)."""
    compare = copy.deepcopy(config)
    update_config(compare, yaml.safe_load((ROOT / "config" / "compare.yaml").read_text()))
    jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text())).validate(compare)
    check_config(compare)
    tiles = {name: run["predict"]["tile_size"] for name, run in run_settings(compare).items()}
    assert tiles == {"unet16": 512, "unet-paper16": 572, "fcn16": 512, "vnet16": 512}
    assert validation_slices(compare) == [25, 26, 27, 28, 29]
    del compare["models"]["unet-paper16"]["predict"]
    assert "508 or 524" in raises_for(compare, "models.unet-paper16.predict.tile_size")


def test_a_run_segments_with_its_own_settings_over_the_base(config: dict[str, Any]) -> None:
    grid = copy.deepcopy(config)
    grid["models"] = {"unet": {}, "vnet": {"segment": {"seed_threshold": 0.3}}}
    jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text())).validate(grid)
    segment = {name: run["segment"] for name, run in run_settings(grid).items()}
    assert segment["unet"] == config["segment"]
    assert segment["vnet"] == {**config["segment"], "seed_threshold": 0.3}
    grid["models"]["vnet"]["segment"]["method"] = "cut"
    assert "models.vnet.segment.method: 'cut'" in raises_for(grid, "models.vnet.segment.method")


def test_a_volume_applied_with_one_models_runs_is_cut_as_that_model_cuts(
    config: dict[str, Any], tmp_path: Path
) -> None:
    volume, model = str(tmp_path / "volume.tif"), tmp_path / "model.pt"
    tifffile.imwrite(volume, np.zeros((2, 32, 32), np.uint8))
    model.write_bytes(b"")  # planning checks that the file exists, not what it holds
    grid = copy.deepcopy(config)
    grid["models"] = {
        "unet": {"segment": {"seed_threshold": 0.35}},
        "vnet": {"segment": {"sigma": 1.0}},
    }
    grid["apply"]["volumes"] = {
        "by_vnet": {"input": volume, "model": ["vnet/fold0/seed0", "vnet/fold1/seed0"]},
        "by_first_run": {"input": volume},
        "by_file": {"input": volume, "model": str(model)},
        "by_two_models": {"input": volume, "model": ["vnet/fold0/seed0", "unet/fold0/seed0"]},
    }
    planned = apply_volumes(grid, run_settings(grid), 2, [0], tmp_path / "runs")
    cut = {name: settings["segment_settings"] for name, settings in planned.items()}
    assert cut["by_vnet"] == {**config["segment"], "sigma": 1.0}
    assert cut["by_first_run"] == {**config["segment"], "seed_threshold": 0.35}
    assert cut["by_file"] == cut["by_two_models"] == config["segment"]


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"block": [1, 500, 512]}, "apply.volumes.big.block"),
        ({"chunks": [1, 300, 512]}, "apply.volumes.big.block"),
        ({}, "apply.block"),
    ],
)
def test_a_volumes_own_block_is_named_under_its_entry(
    config: dict[str, Any], tmp_path: Path, entry: dict[str, Any], key: str
) -> None:
    volume = str(tmp_path / "volume.tif")
    tifffile.imwrite(volume, np.zeros((2, 32, 32), np.uint8))
    if not entry:
        config["apply"]["block"] = [1, 500, 512]
    config["apply"]["volumes"] = {"big": {"input": volume, **entry}}
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: \[1, \d+, \d+\] is not a multiple"):
        apply_volumes(config, run_settings(config), 1, [0], tmp_path / "runs")


@pytest.mark.parametrize(
    ("entry", "unit"),
    [
        ({"unit": "nm"}, "nanometer"),
        ({"unit": "µm"}, "micrometer"),
        ({}, ""),
        ({"unit": "px"}, None),
    ],
)
def test_a_volumes_unit_is_named_as_ome_zarr_names_it(
    config: dict[str, Any], tmp_path: Path, entry: dict[str, Any], unit: str | None
) -> None:
    volume = str(tmp_path / "volume.tif")
    tifffile.imwrite(volume, np.zeros((2, 32, 32), np.uint8))
    config["apply"]["volumes"] = {"big": {"input": volume, **entry}}
    if unit is None:
        with pytest.raises(ConfigError, match=r"^apply\.volumes\.big\.unit: 'px' is not a length"):
            apply_volumes(config, run_settings(config), 1, [0], tmp_path / "runs")
        return
    assert (
        apply_volumes(config, run_settings(config), 1, [0], tmp_path / "runs")["big"]["unit"]
        == unit
    )


def test_unusable_model_spec_names_model(config: dict[str, Any]) -> None:
    config["model"].update(arch="vnet", padding="valid")
    raises_for(config, "model")


# --- slice counts --------------------------------------------------------------------------------


def test_slice_count_from_multipage_tiff_header(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path, slices=7)
    assert labelled_slice_count(config) == 7


def test_slice_count_from_plain_tiff(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path)
    labels = tmp_path / "plain.tif"
    tifffile.imwrite(labels, np.zeros((9, 8, 8), np.uint8), photometric="minisblack")
    config["data"]["train_labels"] = str(labels)
    assert labelled_slice_count(config) == 9


def test_slice_count_from_folder(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path)
    folder = tmp_path / "labels"
    folder.mkdir()
    for index in range(5):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / f"{index}.png")
    (folder / "README.txt").write_text("not a slice")
    config["data"]["train_labels"] = str(folder)
    assert labelled_slice_count(config) == 5


def test_slice_count_of_single_image(config: dict[str, Any], tmp_path: Path) -> None:
    files_config(config, tmp_path)
    single = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(single)
    config["data"]["train_labels"] = str(single)
    assert labelled_slice_count(config) == 1


def test_slice_count_of_other_sources(config: dict[str, Any]) -> None:
    assert labelled_slice_count(config) == ISBI_SLICES
    config["data"]["source"] = "synthetic"
    assert labelled_slice_count(config) == DEFAULT["data"]["synthetic"]["slices"]


# --- ISBI mirror ---------------------------------------------------------------------------------


def test_isbi_mirror_prefers_config_over_environment(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isbi_mirror(config) is None
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "from_env"))
    assert isbi_mirror(config) == tmp_path / "from_env"
    config["data"]["mirror"] = str(tmp_path / "from_config")
    assert isbi_mirror(config) == tmp_path / "from_config"


def test_isbi_mirror_expands_home(config: dict[str, Any]) -> None:
    config["data"]["mirror"] = "~/isbi"
    assert isbi_mirror(config) == Path.home() / "isbi"


def test_missing_mirror_folder_is_refused(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "absent_env"))
    assert MIRROR_ENV in raises_for(config, "data.mirror")
    config["data"]["mirror"] = str(tmp_path / "absent_config")
    assert "absent_config" in raises_for(config, "data.mirror")
    config["data"]["mirror"] = str(tmp_path)
    check_config(config)


# --- schema coercion and messages ----------------------------------------------------------------


def test_coerce_to_schema_converts_typed_strings(config: dict[str, Any]) -> None:
    config["train"].update(lr="1e-3", iterations="5", tile_size=" 256 ")
    config["predict"].update(tta="true", threshold="0.4")
    config["weights"]["class_balance"] = "False"
    config["augment"]["elastic_sigma"] = "12"  # through the schema's $ref
    config["data"]["synthetic"]["slices"] = "7"  # nested object
    coerce_to_schema(config, SCHEMA)
    assert config["train"]["lr"] == 0.001 and isinstance(config["train"]["lr"], float)
    assert config["train"]["iterations"] == 5 and isinstance(config["train"]["iterations"], int)
    assert config["train"]["tile_size"] == 256
    assert config["predict"]["tta"] is True
    assert config["predict"]["threshold"] == 0.4
    assert config["weights"]["class_balance"] is False
    assert config["augment"]["elastic_sigma"] == 12.0
    assert config["data"]["synthetic"]["slices"] == 7
    jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA.read_text())).validate(config)


def test_coerce_to_schema_converts_list_items(config: dict[str, Any]) -> None:
    """snakemake --config cv='{seeds: [0, 1, 2]}' hands over the items as strings."""
    config["cv"]["seeds"] = ["0", "1", "2"]
    config["split"]["val_slices"] = ["3", " 4"]
    config["apply"]["block"] = ["1", "512", "512"]  # items through the schema's $ref
    config["augment"]["rotate"] = ["true"]  # a list where the schema wants a boolean: left alone
    coerce_to_schema(config, SCHEMA)
    assert config["cv"]["seeds"] == [0, 1, 2]
    assert all(isinstance(seed, int) for seed in config["cv"]["seeds"])
    assert config["split"]["val_slices"] == [3, 4]
    assert config["apply"]["block"] == [1, 512, 512]
    assert config["augment"]["rotate"] == ["true"]


def test_coerce_to_schema_leaves_strings_alone(config: dict[str, Any]) -> None:
    config["model"]["name"] = "5"
    config["results"] = "1e-3"
    config["train"].update(optimizer="sgd", iterations="5.5", lr="fast", seed="-")
    config["predict"]["tta"] = "yes"
    coerce_to_schema(config, SCHEMA)
    assert config["model"]["name"] == "5"
    assert config["results"] == "1e-3"
    assert config["train"]["optimizer"] == "sgd"
    assert config["train"]["iterations"] == "5.5"  # not an integer: left for the schema to refuse
    assert config["train"]["lr"] == "fast"
    assert config["train"]["seed"] == "-"
    assert config["predict"]["tta"] == "yes"


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity"])
def test_coerce_to_schema_keeps_non_finite_numbers_as_strings(
    config: dict[str, Any], text: str
) -> None:
    config["train"]["lr"] = text
    coerce_to_schema(config, SCHEMA)
    assert config["train"]["lr"] == text
    assert "train.lr" in describe_schema_error(config, SCHEMA)


def test_coerce_to_schema_ignores_unknown_keys(config: dict[str, Any]) -> None:
    config["extra"] = {"lr": "1e-3"}
    coerce_to_schema(config, SCHEMA)
    assert config["extra"] == {"lr": "1e-3"}


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        (lambda c: c["data"].update(source="dropbox"), "data.source", "dropbox"),
        (lambda c: c.update(bogus_section=1), "(top level)", "bogus_section"),
        (lambda c: c["train"].update(lr=-1.0), "train.lr", "-1.0"),
        (lambda c: c["model"].update(colour="red"), "model", "colour"),
        (lambda c: c["split"].update(val_slices=[1, 1]), "split.val_slices", "unique"),
    ],
)
def test_describe_schema_error_names_the_key(
    config: dict[str, Any], change: Any, key: str, fragment: str
) -> None:
    change(config)
    message = describe_schema_error(config, SCHEMA)
    assert "\n" not in message
    assert message.startswith(f"config key {key}:"), message
    assert fragment in message


# --- config_hash ---------------------------------------------------------------------------------


def test_config_hash_is_stable_and_sensitive(config: dict[str, Any]) -> None:
    first = config_hash(config["model"], config["train"])
    assert re.fullmatch(r"[0-9a-f]{12}", first)
    assert config_hash(copy.deepcopy(config["model"]), copy.deepcopy(config["train"])) == first
    reordered = dict(reversed(list(config["model"].items())))
    assert config_hash(reordered, config["train"]) == first
    config["train"]["lr"] = 0.0021
    assert config_hash(config["model"], config["train"]) != first
    assert config_hash(config["train"], config["model"]) != config_hash(
        config["model"], config["train"]
    )


@pytest.mark.parametrize(
    ("source", "key", "value", "retrains"),
    [
        ("isbi2012", "mirror", "/data/isbi2012", False),
        ("isbi2012", "test_images", "other.tif", False),
        ("files", "test_images", "other test.tif", False),
        ("files", "mirror", "/data/isbi2012", False),
        ("files", "train_images", "other images.tif", True),
        ("files", "train_labels", "other labels.tif", True),
        ("files", "membrane_value", 255, True),
        ("synthetic", "mirror", "/data/isbi2012", False),
        ("synthetic", "synthetic", {**DEFAULT["data"]["synthetic"], "test_slices": 2}, True),
        ("synthetic", "synthetic", {**DEFAULT["data"]["synthetic"], "seed": 1}, True),
    ],
)
def test_only_the_training_stacks_identity_retrains(
    source: str, key: str, value: object, retrains: bool
) -> None:
    """A run's hash holds the data keys that shape its training stacks, not where the ISBI copy
    came from or the test stack; the synthetic test slices share the training slices' tissue."""
    data = copy.deepcopy(DEFAULT["data"]) | {"source": source}
    data |= {"train_images": "images.tif", "train_labels": "labels.tif"}
    changed = data | {key: value}
    assert (config_hash(training_data(changed)) != config_hash(training_data(data))) is retrains


def test_the_default_configs_run_hash_is_what_it_was() -> None:
    """Upgrading emseg must not retrain a default run: its data section hashes as it always did."""
    assert config_hash(training_data(DEFAULT["data"])) == config_hash(DEFAULT["data"])
