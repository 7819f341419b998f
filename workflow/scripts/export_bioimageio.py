"""Rule export_bioimageio: one trained run as a validated, tested BioImage Model Zoo package."""

import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from emseg.export.network import MembraneProbability
from emseg.export.record import Metadata, RunRecord
from emseg.export.tensors import SizeRule, example, size_rule
from emseg.io import InputError, atomic_path, read_json, read_stack
from emseg.model_file import ModelFile, load_model_file
from emseg.runner import LOG, run_rule


def main(snakemake: Any) -> None:
    export_package = _bioimageio()
    torch.set_num_threads(max(1, snakemake.threads))
    model_file = load_model_file(Path(snakemake.input.model))
    if model_file.normalization is None:
        raise InputError(f"{model_file.path}: written before emseg 0.2 (no normalisation); retrain")
    net = model_file.build(torch.device("cpu"))
    network = MembraneProbability(net)
    record = _record(snakemake, model_file, size_rule(network, model_file.spec))
    rule = record.rule
    LOG.info("exporting %s: %s", record.title, record.network())
    LOG.info("input sides %d + n x %d px, output halo %d px", rule.min_input, rule.step, rule.halo)
    index = record.held_out[0]
    raw = read_stack(snakemake.input.images)[index]
    with tempfile.TemporaryDirectory(prefix="emseg-export-") as work:
        sample = example(net, rule, record.normalization, raw, index)
        metadata = _metadata(snakemake)
        package, summary = export_package(network, record, sample, metadata, Path(work))
        for detail in summary.details:
            LOG.info("bioimageio %s: %s", detail.status, detail.name)
        with atomic_path(snakemake.output.package) as tmp:
            shutil.copyfile(package, tmp)
    LOG.info("wrote %s (validated, model test passed)", snakemake.output.package)


def _bioimageio() -> Callable[..., Any]:
    """`export_package`, from the optional `export` extra; bioimageio's own log quietened."""
    try:
        from loguru import logger

        from emseg.export.package import export_package
    except ImportError as error:
        raise InputError(
            f"exporting needs bioimageio.core and bioimageio.spec ({error}); "
            "pip install -e '.[export]'"
        ) from None
    logger.remove()  # warnings and errors only: its per-check lines go to our log instead
    logger.add(sys.stderr, level="WARNING")
    return export_package


def _record(snakemake: Any, model_file: ModelFile, rule: SizeRule) -> RunRecord:
    assert model_file.normalization is not None
    return RunRecord(
        name=snakemake.wildcards.name,
        fold=int(snakemake.wildcards.fold),
        seed=int(snakemake.wildcards.seed),
        model=model_file.spec,
        train=snakemake.params.train,
        predict=snakemake.params.predict,
        dataset=read_json(snakemake.input.dataset),
        training_slices=list(snakemake.params.training),
        held_out=list(snakemake.params.held_out),
        scores=read_json(snakemake.input.scores),
        training=read_json(snakemake.input.training),
        normalization=model_file.normalization,
        rule=rule,
        config_hash=model_file.config_hash,
    )


def _metadata(snakemake: Any) -> Metadata:
    export = snakemake.params.export
    documentation = snakemake.input.get("documentation")
    return Metadata(
        authors=list(export.get("authors") or []),
        license=str(export.get("license") or ""),
        documentation=Path(documentation).read_text() if documentation else "",
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
