"""Losses: hand-computed values, direct formula evaluation, gradients and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emseg.losses import (
    LOSSES,
    build_loss,
    cross_entropy,
    dice_ce_loss,
    dice_loss,
    weighted_cross_entropy,
)

torch.set_num_threads(1)


def random_case(seed: int, n: int = 2, h: int = 5, w: int = 7):
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 2, (n, 2, h, w)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 2, (n, h, w)))
    weight = torch.from_numpy(rng.uniform(0.5, 10, (n, h, w)).astype(np.float32))
    return logits, target, weight


def perfect_logits(target: torch.Tensor, margin: float = 30.0) -> torch.Tensor:
    """Logits that put all probability on the target class."""
    membrane = target.float() * 2 - 1
    return torch.stack([-margin * membrane, margin * membrane], dim=1)


def test_uniform_logits_give_ln2() -> None:
    _, target, weight = random_case(0)
    logits = torch.zeros(2, 2, 5, 7)
    assert cross_entropy(logits, target).item() == pytest.approx(math.log(2))
    expected = weight.double().mean().item() * math.log(2)
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected)


def test_weighted_ce_matches_formula() -> None:
    logits, target, weight = random_case(1)
    x = logits.double().numpy()
    log_softmax = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(log_softmax, target.numpy()[:, None], axis=1)[:, 0]
    expected = float((-picked * weight.numpy()).mean())
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected, 1e-5)


def test_weights_scale_ce_exactly() -> None:
    logits, target, weight = random_case(2)
    base = weighted_cross_entropy(logits, target, weight)
    assert weighted_cross_entropy(logits, target, 4 * weight).item() == pytest.approx(
        4 * base.item(), rel=1e-6
    )
    ones = torch.ones_like(weight)
    assert weighted_cross_entropy(logits, target, ones).item() == pytest.approx(
        cross_entropy(logits, target).item(), rel=1e-6
    )
    # a weight of zero removes a pixel from the sum but not from the pixel count
    only_first = torch.zeros_like(weight)
    only_first[0, 0, 0] = 1.0
    single = -torch.log_softmax(logits[0, :, 0, 0], dim=0)[target[0, 0, 0]].item()
    assert weighted_cross_entropy(logits, target, only_first).item() == pytest.approx(
        single / weight.numel(), rel=1e-5
    )


def test_plain_ce_ignores_weight() -> None:
    logits, target, weight = random_case(3)
    assert torch.equal(cross_entropy(logits, target, weight), cross_entropy(logits, target))
    assert torch.equal(dice_loss(logits, target, weight), dice_loss(logits, target))


def test_perfect_logits() -> None:
    _, target, _ = random_case(4)
    logits = perfect_logits(target)
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert cross_entropy(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_ce_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # the exact opposite prediction: no overlap; sum p^2 counts the cell pixels and sum g the
    # membrane pixels, so Dice = eps / (H * W + eps) in every sample
    assert dice_loss(-logits, target).item() == pytest.approx(1 - 1 / (5 * 7 + 1), rel=1e-5)


def test_dice_by_hand() -> None:
    # p(membrane) = 0.5 everywhere on 2x2 tiles
    logits = torch.zeros(2, 2, 2, 2)
    target = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]).long()
    # sample 0: (2 * 2 + 1) / (4 * 0.25 + 4 + 1) = 5/6;  sample 1: (0 + 1) / (1 + 0 + 1) = 1/2
    assert dice_loss(logits[:1], target[:1]).item() == pytest.approx(1 / 6)
    assert dice_loss(logits[1:], target[1:]).item() == pytest.approx(1 / 2)
    assert dice_loss(logits, target).item() == pytest.approx((1 / 6 + 1 / 2) / 2)
    assert dice_loss(logits[:1], target[:1], eps=0.0).item() == pytest.approx(1 - 4 / 5)


def test_dice_is_on_the_membrane_class() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1] = 1
    logits = perfect_logits(target)
    swapped = perfect_logits(1 - target)
    assert dice_loss(logits, target).item() < 1e-6
    assert dice_loss(swapped, target).item() > 0.75


def test_dice_ce_is_the_sum() -> None:
    logits, target, _ = random_case(5)
    expected = dice_loss(logits, target) + cross_entropy(logits, target)
    torch.testing.assert_close(dice_ce_loss(logits, target), expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_flow(name: str) -> None:
    logits, target, weight = random_case(6)
    logits.requires_grad_(True)
    loss = LOSSES[name](logits, target, weight)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    # a small step against the gradient lowers the loss
    stepped = (logits - 0.1 * logits.grad).detach()
    assert LOSSES[name](stepped, target, weight) < loss


def test_build_loss() -> None:
    assert set(LOSSES) == {"weighted_ce", "ce", "dice", "dice_ce"}
    assert build_loss("auto", "unet") is weighted_cross_entropy
    assert build_loss("auto", "fcn") is weighted_cross_entropy
    assert build_loss("auto", "vnet") is dice_loss
    assert build_loss("dice_ce", "unet") is dice_ce_loss
    with pytest.raises(ValueError, match="loss"):
        build_loss("focal", "unet")
    with pytest.raises(ValueError, match="arch"):
        build_loss("auto", "segnet")


def test_bad_inputs_are_rejected() -> None:
    logits, target, weight = random_case(7)
    with pytest.raises(ValueError, match="target"):
        cross_entropy(logits, target.float())
    with pytest.raises(ValueError, match="target"):
        dice_loss(logits, target[:, 1:])
    with pytest.raises(ValueError, match="weight"):
        weighted_cross_entropy(logits, target, weight[:, :, 1:])
    with pytest.raises(ValueError, match="weight"):
        weighted_cross_entropy(logits, target, None)
    with pytest.raises(ValueError, match="logits"):
        cross_entropy(logits[:, :1], target)
