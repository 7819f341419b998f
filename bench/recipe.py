"""The paper's recipe: how far a step along the gradient may go, and what a too-large one does.

With momentum m, SGD moves the weights by lr / (1 - m) times a gradient that keeps its direction.
Two measurements show where that step must stay for the unpadded U-Net without normalisation:

- the loss after one step of eta x the gradient from the initial weights, at several widths (the
  range of helpful steps shrinks as the network widens);
- short trainings at 8 channels with the recipe's SGD at several learning rates, recording the
  share of dead ReLU channels (zero everywhere in the batch) and the spread of the output map.

Tiles come from real ISBI 2012 training slices (or the synthetic stack), augmented and weighted as
the workflow's cache is (config.yaml with config/paper.yaml), mirror-padded to the 572 px input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.harness import Settings, Table, em_slices, log, workflow_config
from emseg.augment import AugmentConfig, augment_pair
from emseg.losses import weighted_cross_entropy
from emseg.models import build_model
from emseg.training import Batch, TileSampler, make_optimizer
from emseg.weightmap import unet_weight_map

ETAS = (0.01, 0.1, 1.0)


def _sampler(
    spec: Mapping[str, Any], config: Mapping[str, Any], tile: int, settings: Settings
) -> TileSampler:
    """Random tiles, one per batch, from an augmentation cache built as the workflow builds it.

    25 slices with 4 augmented samples each (--quick: 4 small slices, 1 sample).
    """
    count, size, samples = _cache_size(settings)
    images, labels, _ = em_slices(count, size)
    options = dict(config["augment"])
    seed = int(options.pop("seed"))
    options.pop("samples_per_slice")
    augment = AugmentConfig.from_mapping(options)
    weights = config["weights"]
    shards = []
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        rng = np.random.default_rng([seed, index])
        shard = []
        for _ in range(samples):
            deformed, deformed_label = augment_pair(image, label, rng, augment)
            weight = unet_weight_map(
                deformed_label, weights["w0"], weights["sigma"], weights["class_balance"]
            )
            shard.append(np.stack([deformed, deformed_label, weight]).astype(np.float32))
        shards.append(np.stack(shard))
    return TileSampler(shards, build_model(spec).geometry, tile, 1, seed=0)


def _cache_size(settings: Settings) -> tuple[int, int, int]:
    """Slices, their size and augmented samples per slice of the bench's cache."""
    return (4, 64, 1) if settings.quick else (25, 512, 4)


def _tensors(batch: Batch) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in (batch.images, batch.labels, batch.weights))


def _loss_along_gradient(spec: Mapping[str, Any], batch: Batch) -> dict[str, float]:
    """Loss at the initial weights and after a step of eta x the gradient, for each eta."""
    torch.manual_seed(0)
    model = build_model(spec).eval()  # no dropout noise: the same function before and after
    images, labels, weights = _tensors(batch)
    loss = weighted_cross_entropy(model(images), labels, weights)
    loss.backward()
    start = [p.detach().clone() for p in model.parameters()]
    cells = {"loss at init": float(loss.detach())}
    with torch.no_grad():
        for eta in ETAS:
            for param, initial in zip(model.parameters(), start, strict=True):
                param.copy_(initial - eta * param.grad)
            cells[f"after {eta:g} x gradient"] = float(
                weighted_cross_entropy(model(images), labels, weights)
            )
    return cells


def _dead_share(model: nn.Module) -> tuple[list[float], list[torch.utils.hooks.RemovableHandle]]:
    """Per ReLU, the share of channels that are zero everywhere in the last forward pass."""
    shares: list[float] = []
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    shares.extend(0.0 for _ in relus)

    def hook(index: int) -> Any:
        def record(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            shares[index] = float((out.detach().amax(dim=(0, 2, 3)) <= 0).float().mean())

        return record

    return shares, [relu.register_forward_hook(hook(i)) for i, relu in enumerate(relus)]


def _train(
    spec: Mapping[str, Any], train: Mapping[str, Any], sampler: TileSampler, steps: int, clip: float
) -> dict[str, float]:
    """`steps` of the recipe's SGD; the state at the end: loss, dead channels, output spread."""
    torch.manual_seed(0)
    model = build_model(spec)
    optimizer = make_optimizer(model, train)
    shares, handles = _dead_share(model)
    losses = []
    for step in range(steps):
        images, labels, weights = _tensors(sampler.batch(step))
        logits = model(images)
        loss = weighted_cross_entropy(logits, labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    for handle in handles:
        handle.remove()
    prob = logits.detach().softmax(dim=1)[:, 1]
    window = losses[-min(20, len(losses)) :]
    return {
        "loss, first 20": float(np.mean(losses[:20])),
        "loss, last 20": float(np.mean(window)),
        "dead channels %": 100 * float(np.mean(shares)),
        "all-dead layers": sum(share == 1.0 for share in shares),
        "map s.d.": float(prob.std()),
    }


def run(settings: Settings) -> list[Table]:
    paper = workflow_config("config/paper.yaml")
    spec, train = dict(paper["model"]), dict(paper["train"])
    tile = 188 if settings.quick else int(train["tile_size"])
    widths = (4, 8) if settings.quick else (8, 16, 32, 64)
    sampler = _sampler(spec, paper, tile, settings)
    along = Table(
        "Paper recipe: the loss along the gradient at initialisation",
        ["base channels", "tile", "loss at init", *(f"after {eta:g} x gradient" for eta in ETAS)],
        notes=[
            "The unpadded U-Net of config/paper.yaml (He init, no norm) at each width, one"
            f" {tile} px tile; the loss (weighted cross-entropy, mean over pixels) before and"
            " after moving the initial weights by eta times the gradient; eval mode (no dropout)."
            " With momentum 0.99 a persistent gradient moves the weights by 100 x lr per step.",
        ],
    )
    for width in widths:
        log(f"loss along the gradient at {width} channels")
        for step in range(2):
            cells = _loss_along_gradient({**spec, "base_channels": width}, sampler.batch(step))
            along.add(**{"base channels": width, "tile": f"{tile} (#{step + 1})"}, **cells)
    steps, width = (5, 4) if settings.quick else (400, 8)
    count, _, samples = _cache_size(settings)
    training = Table(
        f"Paper recipe: {steps} SGD steps at {width} channels",
        ["lr", "step lr/(1-m)", "change", *_train_columns()],
        notes=[
            f"config/paper.yaml's recipe (SGD, momentum {train['momentum']}, constant lr, one"
            f" {tile} px tile per step, weighted cross-entropy, dropout {spec['dropout']}) at"
            f" {width} channels, on {samples} augmented samples of each of {count} slices."
            " dead channels % = mean over the ReLUs of the share of channels that are zero"
            " everywhere in the last batch; all-dead layers = ReLUs with no channel alive; map"
            " s.d. = spread of the last batch's membrane probability (~0: one constant map).",
        ],
    )
    variants = [
        (0.01, "", {}, math.inf),
        (0.01, "no dropout", {"dropout": 0.0}, math.inf),
        (0.01, "gradient norm clipped at 1", {}, 1.0),
        (0.001, "", {}, math.inf),
        (float(train["lr"]), "config/paper.yaml now", {}, math.inf),
    ]
    for lr, change, model_change, clip in variants:
        log(f"{steps} steps at lr {lr} {change}")
        cells = _train(
            {**spec, "base_channels": width, **model_change},
            {**train, "lr": lr},
            sampler,
            steps,
            clip,
        )
        momentum = float(train["momentum"])
        training.add(lr=lr, **{"step lr/(1-m)": lr / (1 - momentum)}, change=change, **cells)
    return [along, training]


def _train_columns() -> list[str]:
    return ["loss, first 20", "loss, last 20", "dead channels %", "all-dead layers", "map s.d."]
