"""The model package: its files, its description (spec 0.5), the zip, validation and model test.

`export_package` writes every file of the package into a work folder, describes them with
bioimageio.spec's own classes, saves the zip (which bioimageio.spec validates on the way) and runs
bioimageio.core's model test on it: the test input through both weight formats must reproduce the
test output, and the inputs of the smallest valid sizes must give outputs of the described sizes.
Only a package that passes is handed back. The output declares a halo (`halo.py`), and the input
reflect padding, so that bioimageio.core's and deepImageJ's tiled prediction of a large image
equals one pass over it. Nothing here needs the internet: bioimageio's cache
goes to the work folder and the description holds no URL that validation would try to fetch.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from bioimageio.core import settings as core_settings
from bioimageio.core import test_model
from bioimageio.spec import ValidationSummary, save_bioimageio_package
from bioimageio.spec import settings as spec_settings
from bioimageio.spec.model import v0_5 as bio
from pydantic import ValidationError

from emseg import __version__
from emseg.errors import ConfigError
from emseg.export.archive import normalize_zip
from emseg.export.network import MembraneProbability
from emseg.export.readme import citations, readme
from emseg.export.record import Metadata, RunRecord
from emseg.export.standalone import CALLABLE, FILE_NAME, standalone_source
from emseg.export.tensors import Example, cover_image
from emseg.export.weights import save_state_dict, save_torchscript
from emseg.io import sha256_file
from emseg.models.geometry import parse_spec

WEIGHTS = "weights.pt"
TORCHSCRIPT = "weights_torchscript.pt"
INPUT_ID, OUTPUT_ID = "raw", "membrane"


class PackageError(RuntimeError):
    """The written package did not pass bioimageio's validation or model test."""


def export_package(
    network: MembraneProbability,
    record: RunRecord,
    example: Example,
    metadata: Metadata,
    work: Path,
) -> tuple[Path, ValidationSummary]:
    """Write, validate and test the package in `work`; returns the zip and the test summary."""
    for settings in (spec_settings, core_settings):  # offline: a private cache, nothing fetched
        settings.cache_path = work / "bioimageio-cache"
    authors, license_id = checked_metadata(metadata)
    files = work / "package"
    files.mkdir(parents=True, exist_ok=True)
    traced_checks = _write_files(files, network, record, example, metadata)
    description = describe(files, record, authors, license_id, traced_checks)
    zip_path = save_bioimageio_package(description, output_path=work / "package.zip")
    normalize_zip(zip_path)  # rdf.yaml came with the clock's time
    summary = test_model(zip_path, devices=["cpu"])
    if summary.status != "passed":
        failed = [
            f"{detail.name}: {error.msg}" for detail in summary.details for error in detail.errors
        ]
        raise PackageError(f"the package failed bioimageio.core's model test: {failed[:3]}")
    return zip_path, summary


def checked_metadata(metadata: Metadata) -> tuple[list[bio.Author], bio.LicenseId]:
    """Authors and license as the spec wants them; a bad entry is a ConfigError naming the key."""
    if not metadata.authors:
        raise ConfigError("export.authors: name at least one author of the model")
    authors = []
    for index, entry in enumerate(metadata.authors):
        try:
            authors.append(bio.Author(**entry))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"export.authors[{index}].{where}: {first['msg']}") from None
    try:
        license_id = bio.LicenseId(metadata.license)
    except ValidationError:
        raise ConfigError(
            f"export.license: {metadata.license!r} is not an SPDX license identifier "
            "(e.g. CC-BY-4.0, MIT, BSD-3-Clause; see https://spdx.org/licenses)"
        ) from None
    return authors, license_id


def _write_files(
    folder: Path,
    network: MembraneProbability,
    record: RunRecord,
    example: Example,
    metadata: Metadata,
) -> list[int]:
    """Every file of the package; returns the sizes the TorchScript module was checked at."""
    save_state_dict(network, folder / WEIGHTS)
    normalized = record.normalization.apply(example.image)
    checked = save_torchscript(network, normalized, record.rule, folder / TORCHSCRIPT)
    (folder / FILE_NAME).write_text(standalone_source())
    np.save(folder / "test_input.npy", example.image[None, None])
    np.save(folder / "test_output.npy", example.prob[None, None])
    tifffile.imwrite(folder / "sample_input.tif", example.image, photometric="minisblack")
    tifffile.imwrite(folder / "sample_output.tif", example.prob, photometric="minisblack")
    cover_image(example, record.normalization).save(folder / "cover.png")
    (folder / "README.md").write_text(readme(record, example, metadata))
    return checked


def describe(
    folder: Path,
    record: RunRecord,
    authors: list[bio.Author],
    license_id: bio.LicenseId,
    traced_checks: list[int],
) -> bio.ModelDescr:
    """The model description (bioimageio.yaml) of the files in `folder`."""
    return bio.ModelDescr(
        name=_name(record),
        description=_description(record),
        authors=authors,
        cite=[bio.CiteEntry(text=c.text, doi=bio.Doi(c.doi)) for c in citations(record)],
        license=license_id,
        documentation=_file(folder / "README.md"),
        covers=[_file(folder / "cover.png")],
        tags=_tags(record),
        inputs=[_input(folder, record)],
        outputs=[_output(folder, record)],
        weights=_weights(folder, record, traced_checks),
        config=bio.Config(emseg=_emseg_config(record)),  # type: ignore[call-arg]
    )


def _file(path: Path) -> bio.FileDescr:
    return bio.FileDescr(source=path, sha256=bio.Sha256(sha256_file(path)))


def _input(folder: Path, record: RunRecord) -> bio.InputTensorDescr:
    rule, norm = record.rule, record.normalization
    size = bio.ParameterizedSize(min=rule.min_input, step=rule.step)
    gain = 1.0 / (norm.high - norm.low)
    return bio.InputTensorDescr(
        id=bio.TensorId(INPUT_ID),
        description="one EM slice, gray values as acquired",
        pad=bio.ReflectPadding(mode="reflect"),  # set: a default mode is not written out
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier("gray")]),
            bio.SpaceInputAxis(id=bio.AxisId("y"), size=size),
            bio.SpaceInputAxis(id=bio.AxisId("x"), size=size),
        ],
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        test_tensor=_file(folder / "test_input.npy"),
        sample_tensor=_file(folder / "sample_input.tif"),
        preprocessing=[
            bio.ScaleLinearDescr(
                kwargs=bio.ScaleLinearKwargs(gain=gain, offset=-norm.low * gain),
            )
        ],
    )


def _output(folder: Path, record: RunRecord) -> bio.OutputTensorDescr:
    """The input's size, with the network's reach as halo: tiles overlap by it and cut it."""

    def axis(name: str) -> bio.SpaceOutputAxisWithHalo:
        reference = bio.SizeReference(tensor_id=bio.TensorId(INPUT_ID), axis_id=bio.AxisId(name))
        return bio.SpaceOutputAxisWithHalo(
            id=bio.AxisId(name), size=reference, halo=record.rule.halo
        )

    return bio.OutputTensorDescr(
        id=bio.TensorId(OUTPUT_ID),
        description="membrane probability (softmax of the cell and membrane logits)",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier("membrane")]),
            axis("y"),
            axis("x"),
        ],
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        test_tensor=_file(folder / "test_output.npy"),
        sample_tensor=_file(folder / "sample_output.tif"),
    )


def _weights(folder: Path, record: RunRecord, traced_checks: list[int]) -> bio.WeightsDescr:
    version = bio.Version(torch.__version__.split("+")[0])
    kwargs = dataclasses.asdict(parse_spec(record.model))
    architecture = bio.ArchitectureFromFileDescr(
        source=folder / FILE_NAME,
        sha256=bio.Sha256(sha256_file(folder / FILE_NAME)),
        callable=bio.Identifier(CALLABLE),
        kwargs=kwargs,
    )
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=folder / WEIGHTS,
            sha256=bio.Sha256(sha256_file(folder / WEIGHTS)),
            architecture=architecture,
            pytorch_version=version,
            comment=f"emseg {__version__} network with the softmax; code generated from emseg",
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=folder / TORCHSCRIPT,
            sha256=bio.Sha256(sha256_file(folder / TORCHSCRIPT)),
            pytorch_version=version,
            parent="pytorch_state_dict",
            comment=f"traced; checked against the network at input sizes {traced_checks}",
        ),
    )


def _name(record: RunRecord) -> str:
    run = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", record.name)
    return f"emseg {run} fold {record.fold} seed {record.seed} membrane"[:64]


def _description(record: RunRecord) -> str:
    return (
        f"Membrane probability of EM slices: a {record.network()} trained with emseg "
        f"on {record.source()}; held-out V_rand {record.scores['vrand']:.4f}, "
        f"V_info {record.scores['vinfo']:.4f}."
    )[:512]


def _tags(record: RunRecord) -> list[str]:
    arch = record.model["arch"]
    tags = ["electron-microscopy", "2d", "cell-membrane", "semantic-segmentation", "pytorch"]
    tags += ["unet" if arch == "unet" else arch, "emseg"]
    if record.dataset.get("source", {}).get("name") == "isbi2012":
        tags.append("isbi2012")
    return tags


def _emseg_config(record: RunRecord) -> dict[str, Any]:
    """The run's identity and settings, machine-readable, under `config.emseg`."""
    return {
        "version": __version__,
        "run": {"name": record.name, "fold": record.fold, "seed": record.seed},
        "config_hash": record.config_hash,
        "model": dict(record.model),
        "normalization": record.normalization.to_dict(),
        "geometry": dataclasses.asdict(record.rule),
        "training_slices": list(record.training_slices),
        "held_out_slices": list(record.held_out),
        "held_out_scores": {k: v for k, v in record.scores.items() if isinstance(v, float)},
    }
