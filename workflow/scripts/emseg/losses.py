"""Training losses on 2-class logits: class 0 = cell, class 1 = membrane.

All losses take logits (N, 2, H, W), an int64 target (N, H, W) in {0, 1} and a float32 weight
map (N, H, W), so the trainer can call any of them the same way; losses that do not use the
weight map accept and ignore it. Targets and weights must already be cropped to the logits' size
(unpadded U-Net outputs are smaller than their inputs).

- weighted_ce: the U-Net paper's energy, pixel-wise softmax cross-entropy times w(x).
- ce: plain cross-entropy (FCN's loss).
- dice: V-Net's soft Dice on the membrane class, 2 sum(p g) / (sum p^2 + sum g^2), per sample.
- dice_ce: Dice + plain cross-entropy, a common more stable combination.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

MEMBRANE = 1

Loss = Callable[..., Tensor]


def _check(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
    """Reject shapes and dtypes that would broadcast or index silently into a wrong loss."""
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"logits must have shape (N, 2, H, W), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected}, got {tuple(target.shape)}")
    if target.dtype != torch.int64:
        raise ValueError(f"target must be int64, got {target.dtype}")
    if weight is not None and tuple(weight.shape) != expected:
        raise ValueError(f"weight must have shape {expected}, got {tuple(weight.shape)}")


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Pixel-wise softmax cross-entropy scaled by w(x), averaged over all pixels."""
    if weight is None:
        raise ValueError("weight map is required by weighted_cross_entropy")
    _check(logits, target, weight)
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    return (per_pixel * weight).mean()


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Plain cross-entropy averaged over pixels; `weight` is accepted and ignored."""
    _check(logits, target)
    return F.cross_entropy(logits, target)


def dice_loss(
    logits: Tensor, target: Tensor, weight: Tensor | None = None, eps: float = 1.0
) -> Tensor:
    """1 - soft Dice of the membrane class (V-Net form), averaged over samples.

    `eps` smooths numerator and denominator so tiles without membrane give a finite loss.
    """
    _check(logits, target)
    prob = logits.softmax(dim=1)[:, MEMBRANE]
    truth = (target == MEMBRANE).to(prob.dtype)
    intersection = (prob * truth).sum(dim=(1, 2))
    denominator = (prob * prob).sum(dim=(1, 2)) + truth.sum(dim=(1, 2))
    dice = (2 * intersection + eps) / (denominator + eps)
    return 1 - dice.mean()


def dice_ce_loss(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Soft Dice plus plain cross-entropy; `weight` is accepted and ignored."""
    return dice_loss(logits, target) + cross_entropy(logits, target)


LOSSES: dict[str, Loss] = {
    "weighted_ce": weighted_cross_entropy,
    "ce": cross_entropy,
    "dice": dice_loss,
    "dice_ce": dice_ce_loss,
}

AUTO_LOSS = {"unet": "weighted_ce", "fcn": "weighted_ce", "vnet": "dice"}


def build_loss(name: str, arch: str) -> Loss:
    """The loss `name`; 'auto' picks each paper's choice (weighted CE, or Dice for V-Net)."""
    if arch not in AUTO_LOSS:
        raise ValueError(f"arch must be one of {list(AUTO_LOSS)}, got {arch!r}")
    if name == "auto":
        name = AUTO_LOSS[arch]
    if name not in LOSSES:
        raise ValueError(f"loss must be 'auto' or one of {list(LOSSES)}, got {name!r}")
    return LOSSES[name]
