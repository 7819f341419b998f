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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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

    @property
    def last_checkpoint(self) -> Path:
        """Where the run is saved every `checkpoint_every` steps, and resumed from."""
        return self.checkpoint_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        """The run at its best validation Dice so far."""
        return self.checkpoint_dir / "best.pt"


@dataclass
class TrainingRun:
    """One run's network, optimiser state and progress: what a checkpoint saves and a resume
    restores, so that a resumed run goes on exactly where the killed one stopped."""

    settings: TrainSettings
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    precision: Precision
    device: torch.device
    step: int = 0
    log: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0
    best_dice: float = -1.0

    @classmethod
    def start(cls, settings: TrainSettings, threads: int) -> TrainingRun:
        """A fresh run: the network initialised from the config's seed, nothing trained yet."""
        cfg = settings.train
        device = select_device(cfg["device"])
        precision = choose_precision(cfg["precision"], device, "train.precision")
        if device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        torch.manual_seed(int(cfg["seed"]))
        model = precision.prepare(build_model(settings.model).to(device))
        optimizer = make_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, learning_rate_factor(cfg["schedule"], int(cfg["iterations"]))
        )
        scaler = torch.amp.GradScaler(device.type, enabled=precision.autocast == torch.float16)
        return cls(settings, model, optimizer, scheduler, scaler, precision, device)

    def step_runner(self) -> StepRunner:
        loss = build_loss(self.settings.train["loss"], self.settings.model["arch"])
        return StepRunner(
            self.model, self.optimizer, self.scaler, loss, self.precision, self.device
        )

    def state(self) -> dict[str, Any]:
        """Everything a resume needs, as one checkpoint."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "step": self.step,
            "log": self.log,
            "elapsed_s": self.elapsed,
            "best_dice": self.best_dice,
            "config_hash": self.settings.config_hash,
            "model_spec": dict(self.settings.model),
            "precision": self.precision.name,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def resume(self, path: Path) -> None:
        """Go on from checkpoint `path` if it belongs to this config; otherwise start over."""
        state = load_checkpoint(path)
        if state.get("config_hash") != self.settings.config_hash:
            LOG.info("%s belongs to another config; starting over", path)
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step, self.log = state["step"], list(state["log"])
        self.elapsed, self.best_dice = state["elapsed_s"], state["best_dice"]
        LOG.info(
            "resuming from %s at step %d of %d", path, self.step, self.settings.train["iterations"]
        )
        if state.get("precision", self.precision.name) != self.precision.name:
            LOG.warning(
                "%s was trained in %s so far; it goes on in %s (%s)",
                path,
                state["precision"],
                self.precision.name,
                self.precision.reason,
            )

    def summary(self, wait_s: float) -> dict[str, Any]:
        """train_summary.json: how the run was trained, how long it took, where it ended."""
        return {
            "device": str(self.device),
            "precision": self.precision.name,
            "channels_last": self.precision.channels_last,
            "precision_reason": self.precision.reason,
            "threads": torch.get_num_threads(),
            "iterations": int(self.settings.train["iterations"]),
            "parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "train_seconds": self.elapsed,
            "data_wait_fraction": wait_s / max(self.elapsed, 1e-9),
            "best_val_dice": self.best_dice,
            "final": {k: v for k, v in self.log[-1].items() if k.startswith("val_")}
            if self.log
            else {},
            "config_hash": self.settings.config_hash,
        }


def train(
    settings: TrainSettings, shards: Sequence[np.ndarray], validation: ValidationSet, threads: int
) -> tuple[torch.nn.Module, list[dict[str, float]], dict[str, Any]]:
    """Train, resuming from the last checkpoint of the same config; return model, log, summary."""
    cfg = settings.train
    run = TrainingRun.start(settings, threads)
    sampler = TileSampler(
        shards, run.model.geometry, int(cfg["tile_size"]), int(cfg["batch_size"]), int(cfg["seed"])
    )
    if settings.last_checkpoint.exists():
        run.resume(settings.last_checkpoint)
    LOG.info(
        "training %s on %s in %s for %d iterations, %d tiles of %d px per batch, %d threads",
        settings.model["arch"],
        run.device,
        run.precision.describe(),
        int(cfg["iterations"]),
        sampler.batch_size,
        sampler.tile,
        torch.get_num_threads(),
    )
    wait_s = _train_steps(run, sampler, validation)
    return run.model, run.log, run.summary(wait_s)


def _train_steps(run: TrainingRun, sampler: TileSampler, validation: ValidationSet) -> float:
    """Step from run.step to the last iteration, validating and checkpointing as configured;
    the next batch is drawn in a thread while this one trains. Returns the seconds spent
    waiting for batches."""
    cfg = run.settings.train
    iterations, val_every = int(cfg["iterations"]), int(cfg["val_every"])
    last, best = run.settings.last_checkpoint, run.settings.best_checkpoint
    val_options = TileOptions(
        tile_size=int(cfg["tile_size"]),
        batch_size=int(cfg["batch_size"]),
        autocast=run.precision.autocast,
        channels_last=run.precision.channels_last,
    )
    run_step = run.step_runner()
    run.model.train()
    wait_s, started = 0.0, time.perf_counter() - run.elapsed
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        upcoming = prefetch.submit(sampler.batch, run.step) if run.step < iterations else None
        bar = progress(total=iterations, initial=run.step, desc="train", unit="it")
        while upcoming is not None:
            waited = time.perf_counter()
            batch = upcoming.result()
            wait_s += time.perf_counter() - waited
            upcoming = (
                prefetch.submit(sampler.batch, run.step + 1) if run.step + 1 < iterations else None
            )
            loss = run_step(batch)
            _require_finite(loss, run.step + 1, last)
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            run.step += 1
            run.elapsed = time.perf_counter() - started
            row = {
                "step": run.step,
                "elapsed_s": run.elapsed,
                "lr": lr,
                "train_loss": float(loss.item()),
            }
            if run.step % val_every == 0 or run.step == iterations:
                row.update(validate(run.model, validation, val_options, run.device))
                _log_validation(row)
                if row["val_dice"] > run.best_dice:
                    run.best_dice = row["val_dice"]
                    save_checkpoint(best, run.state() | {"log": [*run.log, row]})
            run.log.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", refresh=False)
            bar.update(1)
            if run.step % int(cfg["checkpoint_every"]) == 0 or run.step == iterations:
                save_checkpoint(last, run.state())
        bar.close()
    return wait_s


def _require_finite(loss: torch.Tensor, step: int, last: Path) -> None:
    """A NaN or infinite loss stops the run with what to do; the last good checkpoint stays."""
    if torch.isfinite(loss):
        return
    kept = (
        f"the last good checkpoint {last} is kept"
        if last.exists()
        else "no checkpoint had been written yet"
    )
    raise TrainingDiverged(
        f"training loss became {loss.item()} at step {step}; {kept}."
        " Lower train.lr or check the input data"
    )


def _log_validation(row: Mapping[str, float]) -> None:
    LOG.info(
        "step %d: train loss %.4f, val loss %.4f, val accuracy %.4f, val dice %.4f",
        row["step"],
        row["train_loss"],
        row["val_loss"],
        row["val_pixel_accuracy"],
        row["val_dice"],
    )
