"""The paper's recipe (config/paper.yaml) learns: its loss falls and its prediction is not constant.

A short version of the recipe: config/paper.yaml's optimiser, learning rate, momentum, schedule,
batch, loss, dropout, normalisation and unpadded convolutions, at 16 channels and 252 px tiles on
a small synthetic stack. With the learning rate the file had before (0.01, so a step of
0.01 / (1 - 0.99) = 1.0 times the gradient at momentum 0.99) this test fails: the loss becomes NaN
at step 83 (on ISBI the ReLUs die and the map is constant; README, "The paper's recipe").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emseg.models.geometry import geometry_for
from emseg.preprocess import mirror_pad
from emseg.shards import open_shards, write_shard
from emseg.synthetic import synthetic_stack
from emseg.tiling import TileOptions, predict_slice
from emseg.training import TrainSettings, ValidationSet, train
from emseg.weightmap import unet_weight_map
from workflow_helpers import REPO, merge

WIDTH, TILE, ITERATIONS, SIZE = 16, 252, 200, 160


def paper_recipe() -> tuple[dict[str, Any], dict[str, Any]]:
    """config/paper.yaml merged over config.yaml as the workflow does, shrunk to run in seconds."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config = merge(config, yaml.safe_load((REPO / "config" / "paper.yaml").read_text()))
    model = config["model"] | {"base_channels": WIDTH}
    settings = config["train"] | {"tile_size": TILE, "iterations": ITERATIONS, "device": "cpu"}
    settings |= {"val_every": ITERATIONS, "checkpoint_every": ITERATIONS, "precision": "fp32"}
    return model, settings


def _data(folder: Path, margin: int) -> tuple[list[np.ndarray], ValidationSet]:
    """Six training slices (one sample each) and one held-out slice of the synthetic EM stack."""
    images, labels = synthetic_stack(7, SIZE, SIZE, seed=2, cell_size=24.0)
    gray = images.astype(np.float32) / 255.0
    paths, records = [], []
    for z in range(6):
        sample = np.stack([gray[z], labels[z], unet_weight_map(labels[z])])[np.newaxis]
        paths.append(folder / f"slice{z}.npy")
        records.append(folder / f"slice{z}.json")
        write_shard(paths[-1], sample, {"slice": z}, records[-1])
    validation = ValidationSet(mirror_pad(gray[6:], margin), labels[6:].astype(np.uint8))
    return open_shards(paths, records), validation


def test_the_paper_recipe_learns(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_spec, train_spec = paper_recipe()
    shards, validation = _data(tmp_path, geometry_for(model_spec).margin)
    settings = TrainSettings(model_spec, train_spec, "paper", tmp_path / "checkpoints")
    model, log, _ = train(settings, shards, validation, threads=1)

    losses = np.array([row["train_loss"] for row in log])
    first, last = losses[:20].mean(), losses[-20:].mean()
    padded, truth = validation.padded_images[0], validation.labels[0].astype(bool)
    prob = predict_slice(model, padded, TileOptions(TILE, 1), torch.device("cpu"))
    assert last < 0.7 * first  # the loss falls
    assert prob.std() > 0.1  # not one constant map
    constant = max(truth.mean(), 1 - truth.mean())  # the accuracy of the better constant map
    assert ((prob >= 0.5) == truth).mean() > constant + 0.05
