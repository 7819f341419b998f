"""The trained-model file (`model.pt`): everything needed to apply a network anywhere.

A model file is self-contained: the weights, the architecture (the `model:` config it was built
from), the gray-value normalisation fitted at training time and the tile size it was trained with.
So a model copied to another machine, or applied to a volume long after its training folder was
deleted, predicts exactly as it did inside its run. It is written atomically and read with
`torch.load(weights_only=True)`, and every way it can be wrong is one line naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emseg import __version__
from emseg.checkpoint import load_checkpoint, save_checkpoint
from emseg.io import InputError
from emseg.models import build_model
from emseg.models.geometry import Geometry, geometry_for
from emseg.preprocess import Normalization

FORMAT = "emseg-model/1"


@dataclass(frozen=True)
class ModelFile:
    """A network with what it needs to predict: architecture, weights and input scaling."""

    path: Path
    spec: dict[str, Any]
    weights: dict[str, torch.Tensor] = field(repr=False)
    normalization: Normalization | None  # None: a model file written before emseg 0.2
    train_tile_size: int | None
    config_hash: str

    @property
    def geometry(self) -> Geometry:
        return geometry_for(self.spec)

    def build(self, device: torch.device) -> torch.nn.Module:
        """The network with its trained weights, in eval mode, on `device`."""
        model = build_model(self.spec)
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise InputError(
                f"{self.path}: weights do not fit the architecture it names ({first})"
            ) from error
        return model.to(device).eval()


def save_model_file(
    path: Path,
    model: torch.nn.Module,
    spec: Mapping[str, Any],
    normalization: Normalization,
    train_tile_size: int,
    config_hash: str,
) -> None:
    """Write `model` with its architecture, normalisation and training tile size, atomically."""
    save_checkpoint(
        path,
        {
            "format": FORMAT,
            "emseg_version": __version__,
            "model": model.state_dict(),
            "model_spec": dict(spec),
            "normalization": normalization.to_dict(),
            "train_tile_size": int(train_tile_size),
            "config_hash": config_hash,
        },
    )


def load_model_file(path: str | Path) -> ModelFile:
    """Read a model file; a missing, damaged or foreign file is an InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file does not exist")
    state = load_checkpoint(path, advice="not an emseg model file? give the model.pt of a run")
    if not isinstance(state, dict) or "model" not in state or "model_spec" not in state:
        raise InputError(f"{path}: not an emseg model file (no weights or architecture in it)")
    if "step" in state and "optimizer" in state:
        raise InputError(
            f"{path}: this is a training checkpoint, not a model file; use the run's model.pt"
        )
    try:
        geometry_for(state["model_spec"])
    except ValueError as error:
        raise InputError(f"{path}: unusable architecture ({error})") from error
    norm = state.get("normalization")
    return ModelFile(
        path=path,
        spec=dict(state["model_spec"]),
        weights=state["model"],
        normalization=Normalization.from_dict(norm) if norm is not None else None,
        train_tile_size=state.get("train_tile_size"),
        config_hash=str(state.get("config_hash", "")),
    )
