"""Rule predict: the membrane probability stack (float32) of one subset."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg.io import read_stack, write_stack
from emseg.model_file import load_model_file
from emseg.precision import choose_precision
from emseg.progress import progress
from emseg.runner import LOG, run_rule
from emseg.tiling import TileOptions, predict_slice
from emseg.training import select_device


def main(snakemake: Any) -> None:
    spec = snakemake.params.predict
    device = select_device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(max(1, snakemake.threads))
    precision = choose_precision(spec["precision"], device, "predict.precision")
    model = precision.prepare(load_model_file(Path(snakemake.input.model)).build(device))
    options = TileOptions(
        tile_size=int(spec["tile_size"]),
        batch_size=int(spec["batch_size"]),
        overlap=float(spec["overlap"]),
        tta=bool(spec["tta"]),
        autocast=precision.autocast,
        channels_last=precision.channels_last,
    )
    padded = read_stack(snakemake.input.images)
    if snakemake.params.slices is not None:  # the fold's held-out slices of the labelled stack
        padded = padded[list(snakemake.params.slices)]
    padded = padded.astype(np.float32)
    LOG.info(
        "predicting %d slices of %s on %s in %s (tta %s)",
        len(padded),
        padded.shape[1:],
        device,
        precision.describe(),
        options.tta,
    )
    probs = np.stack(
        [
            predict_slice(model, slice_, options, device)
            for slice_ in progress(
                padded, desc=f"predict {snakemake.wildcards.subset}", unit="slice"
            )
        ]
    )
    write_stack(snakemake.output.prob, probs.astype(np.float32))
    LOG.info("wrote %s %s", snakemake.output.prob, probs.shape)


if "snakemake" in globals():
    run_rule(main, snakemake)  # noqa: F821
