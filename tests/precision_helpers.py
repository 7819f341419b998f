"""The stated agreement of bf16 with fp32 predictions, checked by every test that runs both."""

from __future__ import annotations

import numpy as np

# bf16 keeps 8 bits of mantissa: stated agreement of bf16 with fp32 (README, "Precision").
BF16_MAX_DIFF, BF16_MEAN_DIFF = 0.05, 0.005


def assert_bf16_agrees(bf16: np.ndarray, fp32: np.ndarray) -> None:
    """Membrane probabilities within 0.05 of fp32 at every pixel and 0.005 on average."""
    difference = np.abs(bf16 - fp32)
    assert difference.max() <= BF16_MAX_DIFF and difference.mean() <= BF16_MEAN_DIFF
