"""Intensity normalisation and mirror padding of slices.

Normalisation is robust percentile scaling: the `lower` and `upper` percentiles of the *training*
slices map to 0 and 1. Percentiles ignore the few saturated or dead pixels that min-max scaling
follows, and fitting them on the training slices alone keeps validation and test data unseen; the
fitted values are stored and reused unchanged at prediction time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Normalization:
    """Affine map from raw gray values to the network's input range."""

    low: float
    high: float
    lower_percentile: float
    upper_percentile: float

    def apply(self, stack: np.ndarray) -> np.ndarray:
        """Scale so that `low` -> 0 and `high` -> 1; values beyond stay (no contrast clipping)."""
        return ((stack.astype(np.float32) - self.low) / (self.high - self.low)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Normalization:
        missing = [key for key in cls.__dataclass_fields__ if key not in record]
        if missing:
            raise ValueError(f"normalization record lacks {missing}")
        return cls(**{key: float(record[key]) for key in cls.__dataclass_fields__})


def fit_normalization(stack: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> Normalization:
    """Fit percentile scaling on `stack`; a constant stack gets unit scale, not a division by 0."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"preprocess percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}"
        )
    if np.size(stack) == 0:
        raise ValueError(f"fit_normalization: stack is empty (shape {np.shape(stack)})")
    low, high = (float(v) for v in np.percentile(stack, [lower, upper]))
    if high <= low:
        high = low + 1.0
    return Normalization(low=low, high=high, lower_percentile=lower, upper_percentile=upper)


def mirror_pad(array: np.ndarray, margin: int) -> np.ndarray:
    """Reflect the last two axes about their border pixels by `margin` (the overlap-tile mirror).

    numpy's 'reflect' does not repeat the border pixel, matching the paper's Fig. 2; margins larger
    than the slice are reflected repeatedly, and a 1-pixel axis is repeated (nothing to reflect).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if array.ndim < 2:
        raise ValueError(f"mirror_pad needs an array of at least 2 dimensions, got {array.shape}")
    if margin == 0:
        return array
    for axis in (array.ndim - 2, array.ndim - 1):
        widths = [(0, 0)] * array.ndim
        widths[axis] = (margin, margin)
        array = np.pad(array, widths, mode="reflect" if array.shape[axis] > 1 else "edge")
    return array
