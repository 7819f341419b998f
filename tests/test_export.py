"""BioImage Model Zoo export: a real package of the tiny run, validated and run by bioimageio.

The module's fixture runs the real workflow (`snakemake export`) on the tiny config; the tests
then read the zip back with bioimageio.spec, run bioimageio.core's model test on it and compare
bioimageio.core's prediction of a held-out slice with emseg's own `predict_slice`, all with the
network switched off in this process. An unpadded U-Net (which mirrors its input by its margin)
is exported from a fresh network through the same code. Both packages are tiled by
bioimageio.core into many blocks, which must give the map of one pass over the whole image, and
bad requests stop before any job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bioimageio.core import create_prediction_pipeline, predict
from bioimageio.core import settings as core_settings
from bioimageio.core import test_model as run_model_test
from bioimageio.core.digest_spec import create_sample_for_model
from bioimageio.spec import load_description
from bioimageio.spec import settings as spec_settings
from bioimageio.spec.model import v0_5 as bio

from emseg.errors import ConfigError
from emseg.export.halo import output_halo
from emseg.export.network import MembraneProbability
from emseg.export.package import checked_metadata, export_package
from emseg.export.record import Metadata, RunRecord
from emseg.export.standalone import CALLABLE, standalone_source
from emseg.export.tensors import SizeRule, example, size_rule
from emseg.export.weights import save_torchscript
from emseg.io import InputError, read_json, read_stack
from emseg.model_file import load_model_file
from emseg.models import build_model, geometry_for
from emseg.preprocess import Normalization, fit_normalization, mirror_pad
from emseg.settings import export_run
from emseg.synthetic import synthetic_stack
from emseg.tiling import TileOptions, predict_slice
from workflow_helpers import REPO, TINY, jobs_planned, merge, snakemake, write_config

CPU = torch.device("cpu")
RUN = Path("results/runs/tiny/fold0/seed0")
PACKAGE = RUN / "bioimageio" / "tiny_fold0_seed0.zip"
DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())
METADATA = {"authors": [{"name": "Ada Lovelace", "affiliation": "emseg tests"}], "license": "MIT"}
# tiled vs one pass: the halo is the network's reach, so blocks are exact up to float rounding
# (measured 8e-7 on the tiny run's package, 0 to 1.2e-6 on trained and fresh U-Nets, padded and
# unpadded); without a halo the tiny run's blocks differed by 0.44, those of a padded U-Net of
# depth 4 trained for 300 steps by 0.97, and an unpadded U-Net's package did not tile at all
TILED_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the tiny networks gain nothing from threads on a shared machine


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where `snakemake export` packaged the tiny run."""
    folder = tmp_path_factory.mktemp("export")
    notes = folder / "notes.md"
    notes.write_text("## Notes from the lab\n\nImaged at 4 nm per pixel.\n")
    config = write_config(folder, {"export": {**METADATA, "documentation": str(notes)}})
    result = snakemake(folder, "export", config=config)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return folder


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """No network in this process (every connection attempt is refused and recorded), and
    bioimageio's cache in a temporary folder; the test fails if anything tried to connect."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args[1:] or args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for settings in (spec_settings, core_settings):
        monkeypatch.setattr(settings, "cache_path", tmp_path / "bioimageio-cache")
    yield attempts
    assert not attempts, f"tried to reach the network: {attempts}"


def _description(path: Path) -> bio.ModelDescr:
    description = load_description(path, perform_io_checks=True)
    assert isinstance(description, bio.ModelDescr), description.validation_summary.format()
    return description


# --- the tiny run's package -----------------------------------------------------------------------


def test_package_passes_spec_validation(exported: Path, offline: list[object]) -> None:
    package = exported / PACKAGE
    description = _description(package)
    summary = description.validation_summary
    assert summary.status == "valid-format", summary.format()
    assert not summary.errors
    # sizes from the network's geometry; scaling from the normalisation in the model file
    model_file = load_model_file(exported / RUN / "model.pt")
    geometry = geometry_for(model_file.spec)
    halo = output_halo(model_file.spec)
    assert halo == 6 * geometry.multiple  # a padded U-Net of depth 2 reaches 22 px
    inputs, outputs = description.inputs[0], description.outputs[0]
    assert inputs.pad is not None and inputs.pad.mode == "reflect"
    for axis in inputs.axes[2:]:
        assert (axis.size.min, axis.size.step) == (2 * halo + geometry.multiple, geometry.multiple)
    for axis in outputs.axes[2:]:
        assert (axis.size.offset, axis.halo) == (0, halo)
    norm = model_file.normalization
    scale = inputs.preprocessing[1].kwargs
    assert scale.gain * (norm.high - norm.low) == pytest.approx(1.0)
    assert scale.offset == pytest.approx(-norm.low / (norm.high - norm.low))
    with zipfile.ZipFile(package) as archive:  # the recorded SHA-256 of every weight file
        for entry in (description.weights.pytorch_state_dict, description.weights.torchscript):
            name = str(entry.source).rsplit("/", 1)[-1]
            assert entry.sha256 == hashlib.sha256(archive.read(name)).hexdigest()


def test_package_passes_the_model_test(exported: Path, offline: list[object]) -> None:
    summary = run_model_test(exported / PACKAGE, devices=["cpu"])
    assert summary.status == "passed", summary.format()
    names = [detail.name for detail in summary.details if detail.status == "passed"]
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in names
        assert sum(f"Run {weights} inference" in name for name in names) == 6  # 3 sizes x 2 batches


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_bioimageio_prediction_equals_emseg(
    exported: Path, offline: list[object], weights: str
) -> None:
    """A held-out slice that is not the test tensor, from raw gray values, through the package:
    bioimageio.core mirrors it by the halo, runs one pass and cuts the halo, which is emseg's
    one-tile prediction of the slice mirrored by the halo."""
    held_out = read_json(exported / "results" / "data" / "split.json")["folds"][0]["validation"]
    raw = read_stack(exported / "results" / "data" / "train_images.tif")[held_out[-1]]
    model_file = load_model_file(exported / RUN / "model.pt")
    model = model_file.build(CPU)
    halo = output_halo(model_file.spec)
    mirrored = mirror_pad(model_file.normalization.apply(raw), halo)
    options = TileOptions(tile_size=mirrored.shape[0], tta=False)  # one pass, as the package runs
    expected = predict_slice(model, mirrored, options, CPU)[halo:-halo, halo:-halo]
    description = _description(exported / PACKAGE)
    pipeline = create_prediction_pipeline(description, devices=["cpu"], weight_format=weights)
    sample = predict(model=pipeline, inputs=raw[np.newaxis, np.newaxis].astype(np.float32))
    got = sample.members["membrane"].data.values[0, 0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.ptp(expected) > 0.01  # a real map, not a constant


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_tiled_prediction_equals_one_pass(
    exported: Path, offline: list[object], weights: str
) -> None:
    """bioimageio.core's blocked prediction of an image of many blocks has no seams (the tiny
    run's padded U-Net; the unpadded one's package is tested below)."""
    images, _ = synthetic_stack(1, 144, 144, seed=5, cell_size=16.0)  # the tiny run's generator
    whole, tiled, blocks = _one_pass_and_tiled(_description(exported / PACKAGE), images[0], weights)
    assert blocks >= 4
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=TILED_TOLERANCE)
    assert np.ptp(whole) > 0.01


def _one_pass_and_tiled(
    description: bio.ModelDescr, image: np.ndarray, weights: str, n: int = 5
) -> tuple[np.ndarray, np.ndarray, int]:
    """bioimageio.core's prediction of `image` in one pass, and in blocks of min + n * step px
    (the blocksize parameter `n`); and how many blocks that was."""
    inputs = image[np.newaxis, np.newaxis].astype(np.float32)
    pipeline = create_prediction_pipeline(description, devices=["cpu"], weight_format=weights)
    whole = predict(model=pipeline, inputs=inputs.copy()).members["membrane"]
    with create_prediction_pipeline(
        description, devices=["cpu"], weight_format=weights
    ) as pipeline:
        sample = create_sample_for_model(description, inputs=inputs.copy(), sample_id="tiled")
        blocks, steps = pipeline.predict_sample_with_blocking_yield_intermediates(sample, ns=n)
        *_, last = steps
    tiled = last.sample.members["membrane"]
    return whole.data.values[0, 0], tiled.data.values[0, 0], blocks


def test_a_mask_threshold_exports_nothing_again(exported: Path) -> None:
    """predict.threshold draws the workflow's binary masks; no package holds it."""
    config = exported / "test_config.yaml"
    original = config.read_text()
    override = {"export": {**METADATA, "documentation": str(exported / "notes.md")}}
    write_config(exported, override | {"predict": {"threshold": 0.7}})
    try:
        result = snakemake(exported, "export", "-n", config=config)
    finally:
        config.write_text(original)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "export_bioimageio" not in jobs_planned(result)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_exporting_again_gives_the_same_bytes(exported: Path) -> None:
    first = (exported / PACKAGE).read_bytes()
    config = exported / "test_config.yaml"
    result = snakemake(exported, "export", "--forcerun", "export_bioimageio", config=config)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert (exported / PACKAGE).read_bytes() == first  # no clock, no random id, no stack in it
    with zipfile.ZipFile(exported / PACKAGE) as package:
        traced = package.read("weights_torchscript.pt")
        assert str(exported).encode() not in b"".join(package.read(i) for i in package.infolist())
    with zipfile.ZipFile(io.BytesIO(traced)) as archive:
        names = archive.namelist()
    assert not [name for name in names if name.endswith((".debug_pkl", "serialization_id"))]


def test_readme_states_the_run(exported: Path) -> None:
    with zipfile.ZipFile(exported / PACKAGE) as archive:
        text = archive.read("README.md").decode()
    scores = read_json(exported / RUN / "metrics" / "summary.json")
    model_file = load_model_file(exported / RUN / "model.pt")
    assert f"`{model_file.config_hash}`" in text
    assert f"| {scores['vrand']:.4f} | {scores['vinfo']:.4f} |" in text
    assert "## Validation" in text and "Ada Lovelace" in text and "\nMIT." in text
    assert text.rstrip().endswith("## Notes from the lab\n\nImaged at 4 nm per pixel.")
    assert "doi:10.1007/978-3-319-24574-4_28" in text  # Ronneberger et al. 2015
    assert "doi:10.3389/fnana.2015.00142" in text  # the ISBI 2012 challenge's scores
    first = read_json(exported / "results" / "data" / "split.json")["folds"][0]["validation"][0]
    assert f"held-out slice {first}" in text  # the test tensors' source


def test_readme_python_example_runs(exported: Path, offline: list[object]) -> None:
    with zipfile.ZipFile(exported / PACKAGE) as archive:
        text = archive.read("README.md").decode()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    image = read_stack(exported / "results" / "data" / "train_images.tif")[4].astype(np.float32)
    code = code.replace("'<this zip>'", repr(str(exported / PACKAGE)))
    code = "\n".join(line for line in code.splitlines() if not line.startswith("image = "))
    scope = {"image": image}
    exec(code, scope)
    assert scope["membrane"].shape == image.shape


# --- the exported network, unpadded U-Net and the architecture file ------------------------------


UNPADDED = {"arch": "unet", "padding": "valid", "base_channels": 2, "depth": 2, "norm": "none"}


@dataclasses.dataclass(frozen=True)
class Unpadded:
    """A fresh unpadded U-Net (seed 0), its package and the slices it was made from."""

    net: torch.nn.Module
    norm: Normalization
    images: np.ndarray
    package: Path


@pytest.fixture(scope="module")
def unpadded(tmp_path_factory: pytest.TempPathFactory) -> Unpadded:
    torch.manual_seed(0)
    spec = {**UNPADDED, "dropout": 0.0}
    net = build_model(spec).eval()
    images, _ = synthetic_stack(2, 96, 96, seed=1, cell_size=12.0)
    norm = fit_normalization(images)
    rule = size_rule(MembraneProbability(net), spec)
    sample = example(net, rule, norm, images[1], 1)
    work = tmp_path_factory.mktemp("unpadded") / "work"
    package, summary = export_package(
        MembraneProbability(net), _record(spec, norm, rule), sample, Metadata(**METADATA), work
    )
    assert summary.status == "passed", summary.format()
    return Unpadded(net, norm, images, package)


def test_unpadded_unet_package_describes_its_halo(
    unpadded: Unpadded, offline: list[object]
) -> None:
    """The network mirrors its input by its margin: an output of the input's size, the margin as
    halo, and bioimageio.core's map of a whole slice equal to emseg's overlap-tile prediction."""
    geometry = geometry_for(UNPADDED)
    rule = size_rule(MembraneProbability(unpadded.net), UNPADDED)
    assert (rule.halo, rule.step, rule.margin) == (geometry.margin, geometry.multiple, 20)
    assert rule.min_input == 2 * rule.halo + rule.step
    description = _description(unpadded.package)
    axes = description.outputs[0].axes[2:]
    assert [(a.size.offset, a.halo) for a in axes] == [(0, geometry.margin)] * 2
    with zipfile.ZipFile(unpadded.package) as archive:  # a crop and its map, of one size
        shapes = [
            np.load(io.BytesIO(archive.read(f"test_{t}.npy"))).shape for t in ("input", "output")
        ]
    assert shapes == [(1, 1, 96, 96)] * 2
    # the whole slice: emseg's overlap-tile prediction with small tiles, from raw gray values
    padded = mirror_pad(unpadded.norm.apply(unpadded.images[0]), geometry.margin)
    expected = predict_slice(unpadded.net, padded, TileOptions(tile_size=48), CPU)
    image = unpadded.images[0].astype(np.float32)
    got = predict(model=description, inputs=image[np.newaxis, np.newaxis])
    np.testing.assert_allclose(got.members["membrane"].data.values[0, 0], expected, atol=1e-5)
    assert np.ptp(expected) > 0.01


@pytest.mark.parametrize("weights", ["pytorch_state_dict", "torchscript"])
def test_unpadded_unet_package_tiles_without_seams(
    unpadded: Unpadded, offline: list[object], weights: str
) -> None:
    """bioimageio.core's blocked prediction failed on the old description (an output block
    2 * margin smaller than its input block); now it gives the map of one pass."""
    images, _ = synthetic_stack(1, 144, 144, seed=2, cell_size=12.0)
    description = _description(unpadded.package)
    whole, tiled, blocks = _one_pass_and_tiled(description, images[0], weights)
    assert blocks >= 4
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=TILED_TOLERANCE)
    assert np.ptp(whole) > 0.01


def _record(spec: dict[str, object], norm: Normalization, rule: SizeRule) -> RunRecord:
    scores = {"vrand": 0.5, "vinfo": 0.5, "pixel_error": 0.5, "dice": 0.5, "iou": 0.5}
    return RunRecord(
        name="valid",
        fold=0,
        seed=0,
        model=spec,
        train=DEFAULTS["train"] | TINY["train"],
        predict={"tile_size": 48, "tta": False},
        dataset={"source": {"name": "synthetic"}, "stacks": {}},
        training_slices=[0],
        held_out=[1],
        scores=scores | {"threshold": 0.5},
        training={"iterations": 0, "train_seconds": 0.0, "device": "cpu"},
        normalization=norm,
        rule=rule,
        config_hash="untrained",
    )


def test_smallest_input_keeps_one_step_inside_the_halo() -> None:
    """The smallest block the package names keeps one step of output once the halo is cut from
    both sides; a slice smaller than it becomes a test input by mirroring (bioimageio.core tests
    no smaller input), one smaller than a step is refused."""
    spec = {"arch": "unet", "padding": "valid", "base_channels": 2, "depth": 2, "norm": "none"}
    net = build_model(spec).eval()
    rule = size_rule(MembraneProbability(net), spec)
    assert (rule.min_input, rule.step, rule.halo, rule.margin) == (44, 4, 20, 20)
    norm = Normalization(0.0, 255.0, 1.0, 99.0)
    raw = np.random.default_rng(0).integers(0, 255, (30, 41)).astype(np.uint8)
    small = example(net, rule, norm, raw, 3)
    assert small.mirrored == 8 and small.image.shape == small.prob.shape == (44, 44)
    np.testing.assert_array_equal(small.image[8:-8, 8:-8], raw[:28, :28])
    with pytest.raises(InputError, match="smaller than one step of the network's sizes, 4 px"):
        example(net, rule, norm, raw[:3], 3)
    instance = {**spec, "padding": "same", "norm": "instance"}
    rule = size_rule(MembraneProbability(build_model(instance).eval()), instance)
    assert rule.min_input == 2 * rule.halo + rule.step and rule.margin == 0


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "unet", "padding": "valid", "depth": 2, "norm": "batch"},
        {"arch": "unet", "padding": "same", "depth": 3, "norm": "instance"},
        {"arch": "fcn", "depth": 3, "norm": "none"},
        {"arch": "vnet", "depth": 2, "norm": "batch"},
    ],
)
def test_torchscript_holds_at_sizes_it_was_not_traced_at(spec: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = {**spec, "base_channels": 2, "dropout": 0.0}
    net = build_model(spec).eval()
    wrapper = MembraneProbability(net)
    rule = size_rule(wrapper, spec)
    traced_at = rule.min_input + 3 * rule.step
    image = np.random.default_rng(0).random((traced_at, traced_at), dtype=np.float32)
    checked = save_torchscript(wrapper, image, rule, tmp_path / "net.pt")
    assert traced_at not in checked and len(checked) == 3
    loaded = torch.jit.load(str(tmp_path / "net.pt"))
    other = torch.rand(1, 1, rule.min_input + 5 * rule.step, rule.min_input + rule.step)
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), wrapper(other))


def test_architecture_file_needs_no_emseg(tmp_path: Path) -> None:
    """The generated file builds every network in a Python where emseg cannot be imported."""
    path = tmp_path / "networks.py"
    path.write_text(standalone_source())
    specs = [
        {"arch": "unet", "padding": "valid", "base_channels": 2, "depth": 2, "norm": "none"},
        {"arch": "fcn", "padding": "same", "base_channels": 2, "depth": 3, "norm": "batch"},
        {"arch": "vnet", "padding": "same", "base_channels": 2, "depth": 2, "norm": "instance"},
    ]
    script = (
        "import importlib.util, json, sys\n"
        "sys.modules['emseg'] = None  # any import of emseg now fails\n"
        f"spec = importlib.util.spec_from_file_location('networks', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['networks'] = module\n"
        "spec.loader.exec_module(module)\n"
        f"specs = json.loads({json.dumps(specs)!r})\n"
        f"print(json.dumps([sorted(module.{CALLABLE}(**s).state_dict()) for s in specs]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    keys = json.loads(result.stdout)
    for spec, names in zip(specs, keys, strict=True):
        assert names == sorted(MembraneProbability(build_model(spec)).state_dict())


# --- bad requests -------------------------------------------------------------------------------


def _refused(folder: Path, *targets: str, override: dict) -> str:
    config = write_config(folder, override)
    result = snakemake(folder, "-n", *targets, config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert not (folder / "results").exists()
    return output


@pytest.mark.parametrize("asked", [False, True])
def test_plain_run_exports_only_when_the_config_asks(tmp_path: Path, asked: bool) -> None:
    config = write_config(tmp_path, {"export": {**METADATA, "with_default_target": asked}})
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert jobs_planned(result).get("export_bioimageio", 0) == int(asked)


def test_export_defaults_to_the_first_run_of_the_grid() -> None:
    config = merge(DEFAULTS, {"models": {"second": {}, "first": {}}, "export": METADATA})
    assert export_run(config) == ("second", 0, 0)
    config["export"] |= {"name": "first", "seed": 3}
    with pytest.raises(ConfigError, match="seed 3 is not in this config's grid"):
        export_run(config)


def test_export_of_a_run_outside_the_grid_names_the_missing_model(tmp_path: Path) -> None:
    output = _refused(tmp_path, "export", override={"export": {**METADATA, "name": "unet-paper"}})
    assert "export: results/runs/unet-paper/fold0/seed0/model.pt does not exist" in output
    direct = "results/runs/tiny/fold0/seed7/bioimageio/tiny_fold0_seed7.zip"
    output = _refused(tmp_path, direct, override={"export": METADATA})
    assert "results/runs/tiny/fold0/seed7/model.pt does not exist" in output
    assert "seeds [0]" in output


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("authors", "export.authors: a model package names its authors"),
        ("license", "export.license"),
    ],
)
def test_export_without_authors_or_license_is_refused(
    tmp_path: Path, missing: str, message: str
) -> None:
    export = {key: value for key, value in METADATA.items() if key != missing}
    assert message in _refused(tmp_path, "export", override={"export": export})


def test_non_spdx_license_is_refused_before_any_job(tmp_path: Path) -> None:
    export = {**METADATA, "license": "Public Domain"}
    output = _refused(tmp_path, "export", override={"export": export})
    assert "export.license: 'Public Domain' is not an SPDX license identifier" in output


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"authors": [{"name": "A", "orcid": "0000-0001-2345-6788"}]}, "export.authors[0].orcid"),
        ({"license": "Public Domain"}, "export.license: 'Public Domain' is not an SPDX"),
    ],
)
def test_metadata_the_spec_rejects_is_a_config_error(metadata: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        checked_metadata(Metadata(**{**METADATA, **metadata}))


def test_missing_extra_is_named() -> None:
    """Without bioimageio the export script says which extra to install, in one line."""
    script = (
        "import sys\n"
        "sys.modules['bioimageio'] = None  # as if the `export` extra were not installed\n"
        f"sys.path.insert(0, {str(REPO / 'workflow' / 'scripts')!r})\n"
        "import export_bioimageio\n"
        "try:\n"
        "    export_bioimageio.main(None)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.stdout.startswith("InputError exporting needs bioimageio.core"), result.stderr
    assert result.stdout.strip().endswith("pip install -e '.[export]'")
    assert len(result.stdout.strip().splitlines()) == 1
