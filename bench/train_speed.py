"""Training throughput of the real loop (`emseg.training.train`), its data wait and FLOP rate.

Each case trains for warm-up + timed steps on memory-mapped float16 shards like the workflow's
cache; the per-step times come from the loop's own log (`elapsed_s` is taken before validation,
so the final validation and checkpoint are not in any step). FLOPs are counted from the layer
shapes (2 x multiply-adds of every convolution; backward ~ 2 x forward, so a step is ~ 3 x forward).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.harness import NO_GPU, Settings, Table, em_slices, log, measure, workflow_config
from emseg.models import build_model
from emseg.preprocess import mirror_pad
from emseg.training import TileSampler, TrainSettings, ValidationSet, train
from emseg.weightmap import unet_weight_map

TARGET_WAIT = 0.05


def conv_flops(model: nn.Module, height: int, width: int) -> int:
    """Forward FLOPs (2 per multiply-add) of every (transposed) convolution for one input tile.

    Counted from the shapes of a forward pass on the 'meta' device, so nothing is computed.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    total = 0

    def count(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = layer.kernel_size
        if isinstance(layer, nn.ConvTranspose2d):  # every input pixel scatters to out x k x k
            per = layer.out_channels // layer.groups * kh * kw
            total += 2 * inputs[0].numel() * per
        else:  # every output pixel gathers in x k x k
            per = layer.in_channels // layer.groups * kh * kw
            total += 2 * output.numel() * per

    handles = [
        layer.register_forward_hook(count)
        for layer in meta.modules()
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        meta(torch.empty(1, 1, height, width, device="meta"))
    for handle in handles:
        handle.remove()
    return total


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, settings: Settings) -> float:
    """Measured dense matmul FLOP/s, the practical peak a network's FLOP rate is compared with."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    repeats = 1 if settings.quick else 10
    timing = measure(
        lambda: a @ b, repeats=repeats, warmup=1 if settings.quick else 3, device=device
    )
    return 2 * size**3 / timing.median


def _cases(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    paper, default = workflow_config("config/paper.yaml"), workflow_config()
    if settings.quick:  # same architectures, shrunk so a step takes milliseconds
        paper["model"]["base_channels"], paper["train"]["tile_size"] = 4, 204
        default["model"]["base_channels"], default["train"]["tile_size"] = 4, 64
    return [
        ("paper U-Net (config/paper.yaml)", paper),
        ("default (config.yaml)", default),
    ]


def _shards(folder: Path, size: int, count: int, samples: int) -> list[np.ndarray]:
    """Memory-mapped float16 shards (samples, image/label/weight, H, W), like the cache's."""
    images, labels, _ = em_slices(count, size)
    shards = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        sample = np.stack([image, label, unet_weight_map(label)]).astype(np.float16)
        path = folder / f"slice{index}.npy"
        np.save(path, np.repeat(sample[np.newaxis], samples, axis=0))
        shards.append(np.load(path, mmap_mode="r"))
    return shards


def _validation(shards: list[np.ndarray], margin: int, out: int) -> ValidationSet:
    """One held-out slice of the tile's output size: the final validation stays one forward pass."""
    image, label = np.asarray(shards[0][0, 0], np.float32), np.asarray(shards[0][0, 1])
    return ValidationSet(
        padded_images=mirror_pad(image[:out, :out], margin)[np.newaxis],
        labels=label[np.newaxis, :out, :out].round().astype(np.uint8),
    )


def _train_case(
    config: Mapping[str, Any],
    device: torch.device,
    steps: tuple[int, int],
    folder: Path,
    settings: Settings,
) -> tuple[dict[str, Any], int, str]:
    """Run train() for warm-up + timed steps; return table cells, FLOPs per step, precision."""
    warmup, timed = steps
    spec, cfg = config["model"], dict(config["train"])
    geometry = build_model(spec).geometry
    tile, batch = int(cfg["tile_size"]), int(cfg["batch_size"])
    out = geometry.output_size(tile)
    shards = _shards(folder, 64 if settings.quick else 512, 2 if settings.quick else 4, 4)
    cfg.update(
        device=device.type,
        iterations=warmup + timed,
        val_every=warmup + timed,
        checkpoint_every=warmup + timed,
    )
    run = TrainSettings(spec, cfg, "bench", folder / f"checkpoints-{device.type}")
    model, rows, summary = train(
        run, shards, _validation(shards, geometry.margin, out), threads=settings.threads
    )
    elapsed = np.array([row["elapsed_s"] for row in rows])
    steps_s = np.diff(np.concatenate([[0.0], elapsed]))[warmup:]
    median = float(np.median(steps_s))
    sampler = TileSampler(shards, geometry, tile, batch, seed=1)
    calls = iter(range(10**6))
    batch_s = measure(lambda: sampler.batch(next(calls)), 3 if settings.quick else 20, 1).median
    flops = 3 * conv_flops(model, tile, tile) * batch
    cells = {
        "tile": f"{batch} x {tile} -> {out}",
        "steps": len(steps_s),
        "min s/step": float(steps_s.min()),
        "median s/step": median,
        "max s/step": float(steps_s.max()),
        "samples/s": batch / median,
        "out Mpx/s": batch * out * out / median / 1e6,
        "TFLOP/s": flops / median / 1e12,
        "data wait %": 100 * summary["data_wait_fraction"],
        "batch build %": 100 * batch_s / median,
    }
    return cells, flops, summary["precision"]


COLUMNS = [
    "model",
    "device",
    "tile",
    "steps",
    "min s/step",
    "median s/step",
    "max s/step",
    "samples/s",
    "out Mpx/s",
    "TFLOP/s",
    "% of peak",
    "data wait %",
    "batch build %",
    "note",
]


def run(settings: Settings) -> list[Table]:
    peak = Table(
        "Device peak: measured dense matmul",
        ["device", "dtype", "size", "TFLOP/s"],
        notes=[
            "The denominator of '% of peak' below (CPU: fp32; GPU: bf16, what training uses)."
            " On the CPU oneDNN's convolutions can beat torch's fp32 matmul, so > 100 % occurs.",
        ],
    )
    table = Table(
        "Training throughput (emseg.training.train, one optimiser step per row entry)",
        COLUMNS,
        notes=[
            "Step times are the training loop's own per-step wall times after warm-up steps"
            " (CPU: 1 warm-up, GPU: 10); samples = tiles. FLOPs: convolutions counted from the"
            " layer shapes, a step = 3 x forward.",
            f"data wait % = train()'s summary['data_wait_fraction'] (time the loop blocks on the"
            f" prefetched batch; target < {100 * TARGET_WAIT:.0f} %). batch build % ="
            " TileSampler.batch alone (median) / median step: what the prefetch thread hides.",
        ],
    )
    size = 256 if settings.quick else 4096
    rates = {"cpu": matmul_rate(torch.device("cpu"), torch.float32, size, settings)}
    peak.add(device="cpu", dtype="fp32", size=size, **{"TFLOP/s": rates["cpu"] / 1e12})
    gpu = settings.gpu
    if gpu is None:
        peak.add(device="cuda", dtype="bf16", size="-", **{"TFLOP/s": NO_GPU})
    else:
        gpu_size = 1024 if settings.quick else 8192
        rates["cuda"] = matmul_rate(gpu, torch.bfloat16, gpu_size, settings)
        peak.add(device="cuda", dtype="bf16", size=gpu_size, **{"TFLOP/s": rates["cuda"] / 1e12})

    with tempfile.TemporaryDirectory(prefix="emseg-bench-train-") as tmp:
        for name, config in _cases(settings):
            for device in (torch.device("cpu"), gpu):
                if device is None:
                    table.add(model=name, device="cuda", note=NO_GPU)
                    continue
                if settings.quick:
                    steps = (0, 1)
                elif device.type == "cpu":
                    steps = (1, settings.repeats)
                else:
                    steps = (10, 50)
                log(f"training {name} on {device.type}: {sum(steps)} steps")
                folder = Path(tmp) / f"{len(table.rows)}"
                folder.mkdir()
                cells, flops, precision = _train_case(config, device, steps, folder, settings)
                cells["% of peak"] = 100 * cells["TFLOP/s"] * 1e12 / rates[device.type]
                note = f"{precision}, {flops / 1e9:.0f} GFLOP/step"
                if cells["data wait %"] >= 100 * TARGET_WAIT:
                    note += "; data wait above target"
                table.add(model=name, device=device.type, note=note, **cells)
    return [peak, table]
