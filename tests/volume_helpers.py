"""Small model files and volumes for the tests of applying models to volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from emseg.model_file import load_model_file, save_model_file
from emseg.models import build_model
from emseg.precision import Precision, choose_precision
from emseg.preprocess import Normalization, mirror_pad
from emseg.tiling import TileOptions, predict_slice

CPU = torch.device("cpu")
FP32 = Precision(None, False, "test: fp32, contiguous")  # the arithmetic of predict_slice's default
AUTO = choose_precision("auto", CPU, "predict.precision")  # what apply_blocks picks on this CPU


def options_in(precision: Precision, **options: Any) -> TileOptions:
    """TileOptions that predict in `precision`, as apply_blocks and the predict rule do."""
    return TileOptions(
        autocast=precision.autocast, channels_last=precision.channels_last, **options
    )


def write_model(path: Path, padding: str = "same", seed: int = 0, low: float = 20.0) -> Path:
    """A small random U-Net saved as a model file, with a gray-value normalisation."""
    torch.manual_seed(seed)
    norm = "batch" if padding == "same" else "none"
    spec = {"arch": "unet", "padding": padding, "base_channels": 4, "depth": 2, "norm": norm}
    spec["dropout"] = 0.0
    model = build_model(spec).eval()
    with torch.no_grad():  # batch-norm statistics away from the identity, so that they matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    save_model_file(path, model, spec, Normalization(low, 230.0, 1.0, 99.0), 32, "test")
    return path


def random_stack(shape: tuple[int, int, int], seed: int = 5) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def write_zarr(path: Path, stack: np.ndarray) -> np.ndarray:
    zarr.create_array(path, shape=stack.shape, dtype=stack.dtype, chunks=(1, 32, 32))[:] = stack
    return stack


def reference(stack: np.ndarray, model_paths: list[Path], options: TileOptions) -> np.ndarray:
    """The single-process prediction: predict_slice on each whole slice, models averaged."""
    total = np.zeros(stack.shape, dtype=np.float32)
    for path in model_paths:
        model_file = load_model_file(path)
        model = model_file.build(CPU)
        if options.channels_last:
            model = model.to(memory_format=torch.channels_last)
        for z, plane in enumerate(stack):
            padded = mirror_pad(model_file.normalization.apply(plane), model.geometry.margin)
            total[z] += predict_slice(model, padded, options, CPU)
    return total / len(model_paths)
