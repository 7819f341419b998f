"""The `segment:` config section, checked: its own module so that reading a config (every
`snakemake` start, the config check in common.smk) does not import scipy, scikit-image and pandas
with the segmentation itself (emseg.segmentation)."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

METHODS = ("threshold", "watershed", "multicut")


@dataclass(frozen=True)
class SegmentSettings:
    """The `segment:` config section (see config.yaml for what each key does)."""

    method: str = "watershed"
    threshold: float = 0.5
    sigma: float = 2.0
    seed_threshold: float = 0.4
    min_size: int = 100
    fragment_threshold: float = 0.5
    beta: float = 0.25

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"segment.method: {self.method!r} is not one of {list(METHODS)}")
        for key in ("threshold", "seed_threshold", "fragment_threshold", "beta"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise ValueError(f"segment.{key}: {value!r} must lie strictly between 0 and 1")
        if self.sigma < 0:
            raise ValueError(f"segment.sigma: {self.sigma!r} must not be negative")
        if self.min_size < 0:
            raise ValueError(f"segment.min_size: {self.min_size!r} must not be negative")
        if self.method == "multicut" and importlib.util.find_spec("elf") is None:
            raise ValueError(
                "segment.method: multicut needs python-elf, which is not installed:"
                " pip install -e '.[segment]' (or use method watershed)"
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> SegmentSettings:
        """Settings from a config section; keys it does not name keep their defaults."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"segment: unknown key {unknown[0]!r} (known: {sorted(known)})")
        return cls(**section)
