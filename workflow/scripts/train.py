"""Rule train: fit the network on the augmentation cache and save the final weights."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emseg.io import atomic_path, read_json, read_stack, write_json
from emseg.model_file import save_model_file
from emseg.plots import plot_learning_curves
from emseg.preprocess import Normalization
from emseg.runner import LOG, run_rule
from emseg.shards import open_shards
from emseg.training import TrainSettings, ValidationSet, train


def main(snakemake: Any) -> None:
    shards = open_shards(
        [Path(p) for p in snakemake.input.shards], [Path(p) for p in snakemake.input.records]
    )
    held_out = list(snakemake.params.validation)
    validation = ValidationSet(
        padded_images=read_stack(snakemake.input.images)[held_out].astype(np.float32),
        labels=read_stack(snakemake.input.labels)[held_out].astype(np.uint8),
    )
    settings = TrainSettings(
        model=snakemake.params.model,
        train=snakemake.params.train,
        config_hash=snakemake.params.config_hash,
        checkpoint_dir=Path(snakemake.params.checkpoints),
    )
    model, log, summary = train(settings, shards, validation, threads=snakemake.threads)
    final = summary["final"]
    LOG.info(
        "held-out pixel accuracy %.4f, membrane dice %.4f after %d iterations (%.0f s)",
        final.get("val_pixel_accuracy", float("nan")),
        final.get("val_dice", float("nan")),
        summary["iterations"],
        summary["train_seconds"],
    )
    table = pd.DataFrame(log)
    with atomic_path(snakemake.output.log) as tmp:
        table.to_csv(tmp, index=False)
    plot_learning_curves(table, Path(snakemake.output.curve))
    write_json(snakemake.output.summary, summary)
    save_model_file(
        Path(snakemake.output.model),
        model,
        spec=snakemake.params.model,
        normalization=Normalization.from_dict(read_json(snakemake.input.normalization)),
        train_tile_size=int(snakemake.params.train["tile_size"]),
        config_hash=snakemake.params.config_hash,
    )


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
