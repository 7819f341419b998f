"""The training loop: tiles from the augmentation cache, checkpoints, validation and the run log.

Every batch is a pure function of (seed, step): which shard, sample and crop it takes is drawn from
`numpy.random.default_rng([seed, step])`. Together with the torch random state stored in each
checkpoint, this is what lets a killed job resume and end with the same weights (on CPU) as a run
that was never interrupted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg.checkpoint import load_checkpoint, save_checkpoint
from emseg.errors import TrainingDiverged
from emseg.losses import build_loss
from emseg.models import build_model
from emseg.models.geometry import Geometry
from emseg.precision import Precision, choose_precision
from emseg.preprocess import mirror_pad
from emseg.progress import progress
from emseg.shards import IMAGE, LABEL, WEIGHT
from emseg.tiling import TileOptions, predict_slice

LOG = logging.getLogger("emseg")


def select_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("train.device: mps requested but Apple MPS is not available")
    return torch.device(name)


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # (N,1,tile,tile) float32
    labels: np.ndarray  # (N,out,out) int64
    weights: np.ndarray  # (N,out,out) float32


class TileSampler:
    """Random training tiles from memory-mapped shards, mirror-padded by the network's margin."""

    def __init__(
        self,
        shards: Sequence[np.ndarray],
        geometry: Geometry,
        tile_size: int,
        batch_size: int,
        seed: int,
    ) -> None:
        if not shards:
            raise ValueError("train: no augmentation shards to draw training tiles from")
        geometry.require_valid(tile_size, "train.tile_size")
        self.shards, self.geometry = shards, geometry
        self.tile, self.out = tile_size, geometry.output_size(tile_size)
        self.batch_size, self.seed = batch_size, seed
        height, width = shards[0].shape[-2:]
        if self.out > min(height, width):
            raise ValueError(
                f"train.tile_size: tiles of {tile_size} px predict {self.out} px, more than the"
                f" {height}x{width} slices; use a smaller tile"
            )

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        margin, out = self.geometry.margin, self.out
        images, labels, weights = [], [], []
        for _ in range(self.batch_size):
            shard = self.shards[rng.integers(len(self.shards))]
            sample = np.asarray(shard[rng.integers(shard.shape[0])], dtype=np.float32)
            height, width = sample.shape[-2:]
            y, x = rng.integers(height - out + 1), rng.integers(width - out + 1)
            image = sample[IMAGE]
            if margin:
                image = mirror_pad(image, margin)
            images.append(image[y : y + self.tile, x : x + self.tile])
            labels.append(sample[LABEL, y : y + out, x : x + out])
            weights.append(sample[WEIGHT, y : y + out, x : x + out])
        return Batch(
            images=np.stack(images)[:, np.newaxis],
            labels=np.stack(labels).round().astype(np.int64),
            weights=np.stack(weights),
        )


def learning_rate_factor(schedule: str, iterations: int) -> Callable[[int], float]:
    """LambdaLR factor: constant, cosine decay to 1% or x0.1 steps at 60% and 85% of training."""
    if schedule == "constant":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: (
            0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(step, iterations) / iterations))
        )
    if schedule == "step":
        return lambda step: 0.1 ** ((step >= 0.6 * iterations) + (step >= 0.85 * iterations))
    raise ValueError(f"train.schedule: unknown schedule {schedule!r}")


def make_optimizer(model: torch.nn.Module, spec: Mapping[str, Any]) -> torch.optim.Optimizer:
    name, lr, decay = spec["optimizer"], float(spec["lr"]), float(spec.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=float(spec["momentum"]), weight_decay=decay
        )
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)
    raise ValueError(f"train.optimizer: unknown optimizer {name!r}")


@dataclass(frozen=True)
class ValidationSet:
    padded_images: np.ndarray  # (Z, H+2m, W+2m) float32
    labels: np.ndarray  # (Z, H, W) uint8, 1 = membrane


def validate(
    model: torch.nn.Module, data: ValidationSet, options: TileOptions, device: torch.device
) -> dict[str, float]:
    """Held-out loss (unweighted CE), pixel accuracy at 0.5 and membrane Dice over whole slices."""
    eps = 1e-6
    losses, correct, inter, total_pred, total_true, pixels = 0.0, 0, 0, 0, 0, 0
    for padded, label in zip(data.padded_images, data.labels, strict=True):
        prob = np.clip(predict_slice(model, padded, options, device), eps, 1 - eps)
        truth = label.astype(bool)
        losses += float(-np.where(truth, np.log(prob), np.log(1 - prob)).sum())
        pred = prob >= 0.5
        correct += int((pred == truth).sum())
        inter += int((pred & truth).sum())
        total_pred, total_true, pixels = (
            total_pred + int(pred.sum()),
            total_true + int(truth.sum()),
            pixels + truth.size,
        )
    dice = 2 * inter / (total_pred + total_true) if total_pred + total_true else 1.0
    return {"val_loss": losses / pixels, "val_pixel_accuracy": correct / pixels, "val_dice": dice}


@dataclass(frozen=True)
class StepRunner:
    """One optimiser step on a batch as training takes it; the benchmarks time the same call."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: Callable[..., torch.Tensor]
    precision: Precision
    device: torch.device

    def __call__(self, batch: Batch) -> torch.Tensor:
        """The loss of the batch; a non-finite loss is returned without a step (caller reports)."""
        images = torch.from_numpy(batch.images).to(self.device, non_blocking=True)
        if self.precision.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.from_numpy(batch.labels).to(self.device, non_blocking=True)
        weights = torch.from_numpy(batch.weights).to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast_context(self.device):
            logits = self.model(images)
        loss = self.loss_fn(logits.float(), labels, weights)
        if torch.isfinite(loss):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss


@dataclass(frozen=True)
class TrainSettings:
    model: Mapping[str, Any]
    train: Mapping[str, Any]
    config_hash: str
    checkpoint_dir: Path


def train(
    settings: TrainSettings, shards: Sequence[np.ndarray], validation: ValidationSet, threads: int
) -> tuple[torch.nn.Module, list[dict[str, float]], dict[str, Any]]:
    """Train, resuming from the last checkpoint of the same config; return model, log, summary."""
    spec, cfg = settings.model, settings.train
    seed, iterations = int(cfg["seed"]), int(cfg["iterations"])
    device = select_device(cfg["device"])
    precision = choose_precision(cfg["precision"], device, "train.precision")
    if device.type == "cpu":
        torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    model = precision.prepare(build_model(spec).to(device))
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, learning_rate_factor(cfg["schedule"], iterations)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision.autocast == torch.float16)
    run_step = StepRunner(
        model, optimizer, scaler, build_loss(cfg["loss"], spec["arch"]), precision, device
    )
    sampler = TileSampler(
        shards, model.geometry, int(cfg["tile_size"]), int(cfg["batch_size"]), seed
    )
    val_options = TileOptions(
        tile_size=int(cfg["tile_size"]),
        batch_size=int(cfg["batch_size"]),
        autocast=precision.autocast,
        channels_last=precision.channels_last,
    )

    last, best = settings.checkpoint_dir / "last.pt", settings.checkpoint_dir / "best.pt"
    step, log, elapsed, best_dice = 0, [], 0.0, -1.0
    if last.exists():
        state = load_checkpoint(last)
        if state.get("config_hash") == settings.config_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"])
            step, log, elapsed, best_dice = (
                state["step"],
                list(state["log"]),
                state["elapsed_s"],
                state["best_dice"],
            )
            LOG.info("resuming from %s at step %d of %d", last, step, iterations)
            if state.get("precision", precision.name) != precision.name:
                LOG.warning(
                    "%s was trained in %s so far; it goes on in %s (%s)",
                    last,
                    state["precision"],
                    precision.name,
                    precision.reason,
                )
        else:
            LOG.info("%s belongs to another config; starting over", last)

    def checkpoint_state() -> dict[str, Any]:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "log": log,
            "elapsed_s": elapsed,
            "best_dice": best_dice,
            "config_hash": settings.config_hash,
            "model_spec": dict(spec),
            "precision": precision.name,
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    LOG.info(
        "training %s on %s in %s for %d iterations, %d tiles of %d px per batch, %d threads",
        spec["arch"],
        device,
        precision.describe(),
        iterations,
        sampler.batch_size,
        sampler.tile,
        torch.get_num_threads(),
    )
    model.train()
    wait_s, started = 0.0, time.perf_counter() - elapsed
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        upcoming: Future[Batch] | None = (
            prefetch.submit(sampler.batch, step) if step < iterations else None
        )
        bar = progress(total=iterations, initial=step, desc="train", unit="it")
        while step < iterations:
            waited = time.perf_counter()
            batch = upcoming.result()
            wait_s += time.perf_counter() - waited
            upcoming = prefetch.submit(sampler.batch, step + 1) if step + 1 < iterations else None
            loss = run_step(batch)
            if not torch.isfinite(loss):
                kept = (
                    f"the last good checkpoint {last} is kept"
                    if last.exists()
                    else "no checkpoint had been written yet"
                )
                raise TrainingDiverged(
                    f"training loss became {loss.item()} at step {step + 1}; {kept}."
                    " Lower train.lr or check the input data"
                )
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            row = {"step": step, "elapsed_s": elapsed, "lr": lr, "train_loss": float(loss.item())}
            if step % int(cfg["val_every"]) == 0 or step == iterations:
                row.update(validate(model, validation, val_options, device))
                LOG.info(
                    "step %d: train loss %.4f, val loss %.4f, val accuracy %.4f, val dice %.4f",
                    step,
                    row["train_loss"],
                    row["val_loss"],
                    row["val_pixel_accuracy"],
                    row["val_dice"],
                )
                if row["val_dice"] > best_dice:
                    best_dice = row["val_dice"]
                    save_checkpoint(best, checkpoint_state() | {"log": [*log, row]})
            log.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
            bar.update(1)
            if step % int(cfg["checkpoint_every"]) == 0 or step == iterations:
                save_checkpoint(last, checkpoint_state())
        bar.close()
    summary = {
        "device": str(device),
        "precision": precision.name,
        "channels_last": precision.channels_last,
        "precision_reason": precision.reason,
        "threads": torch.get_num_threads(),
        "iterations": iterations,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "train_seconds": elapsed,
        "data_wait_fraction": wait_s / max(elapsed, 1e-9),
        "best_val_dice": best_dice,
        "final": {k: v for k, v in log[-1].items() if k.startswith("val_")} if log else {},
        "config_hash": settings.config_hash,
    }
    return model, log, summary
