"""Spatial bookkeeping of the networks, derived analytically from the model config.

The training tiler, the sliding-window predictor and the config checks all need to know which
input sizes a network accepts and how much smaller its output is, before any model is built.
Everything here is per axis: height and width are checked independently, so tiles need not be
square.

Unpadded U-Net (Ronneberger et al. 2015) with `depth` poolings: each level loses 4 pixels to its
two valid 3x3 convolutions, so with b the bottom feature size (after its convolutions)

    input  = 2**depth * (b + 8) - 4          (every 2x2 pooling sees an even size)
    output = 2**depth * (b - 4) + 4          = input - 2 * margin
    margin = 6 * 2**depth - 4                (92 for depth 4: 572 -> 388)

Padded networks (same U-Net, FCN, V-Net) keep the size and only need it to survive `depth`
halvings exactly: input % 2**depth == 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

ARCHS = ("unet", "fcn", "vnet")
PADDINGS = ("valid", "same")
NORMS = ("none", "batch", "instance")


@dataclass(frozen=True)
class Geometry:
    """Which input sizes a network accepts and the output size it returns, per axis.

    Valid inputs n satisfy n % multiple == residue and leave an output n - 2 * margin >= 1.
    """

    margin: int  # pixels lost per side by valid convolutions (0 for padded nets)
    multiple: int  # the pooling stride product, 2**depth
    padded: bool
    residue: int = 0  # required input % multiple (unpadded U-Net: -4 mod 2**depth)
    minimum: int = 1  # smallest input the layers run on (instance norm needs 2 x 2 at the bottom)

    def is_valid(self, input_size: int) -> bool:
        """True when an input of this size passes every pooling exactly and leaves output."""
        return (
            input_size >= self.minimum
            and input_size % self.multiple == self.residue
            and input_size - 2 * self.margin >= 1
        )

    def output_size(self, input_size: int) -> int:
        """Output size for a valid input size; raises ValueError naming the size otherwise."""
        if not self.is_valid(input_size):
            raise ValueError(
                f"input size {input_size} is invalid for this network "
                f"(needs size % {self.multiple} == {self.residue} and size > {2 * self.margin}); "
                f"nearest valid sizes: {self.nearest_valid_sizes(input_size)}"
            )
        return input_size - 2 * self.margin

    def input_size_for_output(self, min_output: int) -> int:
        """Smallest valid input whose output is at least `min_output` pixels."""
        if min_output < 1:
            raise ValueError(f"min_output must be >= 1, got {min_output}")
        return self._first_valid_at_or_above(min_output + 2 * self.margin)

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        """All valid input sizes in the inclusive range [lo, hi]."""
        if lo > hi:
            raise ValueError(f"valid_input_sizes: lo ({lo}) must be <= hi ({hi})")
        first = self._first_valid_at_or_above(max(lo, 1))
        return list(range(first, hi + 1, self.multiple))

    def _first_valid_at_or_above(self, size: int) -> int:
        """Round `size` up to the residue class, then to the smallest size with output."""
        size = max(size, 2 * self.margin + 1, self.minimum, 1)
        return size + (self.residue - size) % self.multiple

    def require_valid(self, input_size: int, key: str) -> None:
        """Raise ValueError naming the config `key` and the nearest valid sizes."""
        if not self.is_valid(input_size):
            below, above = self.nearest_valid_sizes(input_size)
            nearest = f"{below} or {above}" if below else str(above)
            raise ValueError(
                f"{key}: {input_size} is not a valid input size for this network; use {nearest}"
            )

    def nearest_valid_sizes(self, size: int) -> tuple[int | None, int]:
        """The closest valid sizes below and above `size`, for error messages."""
        above = self._first_valid_at_or_above(size)
        below = above - self.multiple
        return (below if self.is_valid(below) else None), above


def unet_geometry(depth: int, padded: bool) -> Geometry:
    """Geometry of a U-Net with `depth` poolings, padded ('same') or unpadded ('valid')."""
    multiple = 2**depth
    if padded:
        return Geometry(margin=0, multiple=multiple, padded=True)
    return Geometry(margin=6 * multiple - 4, multiple=multiple, padded=False, residue=-4 % multiple)


def padded_geometry(depth: int) -> Geometry:
    """Geometry of a size-preserving network with `depth` exact halvings (FCN, V-Net)."""
    return Geometry(margin=0, multiple=2**depth, padded=True)


@dataclass(frozen=True)
class ModelSpec:
    """A validated model config, with the defaults filled in."""

    arch: str
    padding: str
    base_channels: int
    depth: int
    norm: str
    dropout: float


def _choice(spec: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = spec.get(key, default)
    if value not in choices:
        raise ValueError(f"model.{key} must be one of {list(choices)}, got {value!r}")
    return value


def _positive_int(spec: Mapping[str, Any], key: str, default: int) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{key} must be an integer >= 1, got {value!r}")
    return value


def parse_spec(spec: Mapping[str, Any]) -> ModelSpec:
    """Validate a model config dict (unknown keys ignored) and fill in the defaults."""
    if "arch" not in spec:
        raise ValueError(f"model.arch is missing; expected one of {list(ARCHS)}")
    arch = _choice(spec, "arch", ARCHS, "unet")
    padding = _choice(spec, "padding", PADDINGS, "valid" if arch == "unet" else "same")
    if arch != "unet" and padding != "same":
        raise ValueError(f"model.padding must be 'same' for arch {arch!r} (only unet is unpadded)")
    dropout = spec.get("dropout", 0.5)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"model.dropout must be a number in [0, 1), got {dropout!r}")
    return ModelSpec(
        arch=arch,
        padding=padding,
        base_channels=_positive_int(spec, "base_channels", 64),
        depth=_positive_int(spec, "depth", 4),
        norm=_choice(spec, "norm", NORMS, "none"),
        dropout=float(dropout),
    )


def geometry_for(spec: Mapping[str, Any]) -> Geometry:
    """The geometry of the model a config describes, without building it.

    Instance norm cannot normalise a single pixel, so with it the smallest map (the bottom of the
    network) must keep at least 2 x 2 pixels.
    """
    parsed = parse_spec(spec)
    if parsed.arch == "unet":
        geometry = unet_geometry(parsed.depth, padded=parsed.padding == "same")
    else:
        geometry = padded_geometry(parsed.depth)
    if parsed.norm != "instance":
        return geometry
    bottom = 2 if geometry.padded else 2 + 8  # padded: 2 px left; valid: b = 2 after its convs
    return replace(geometry, minimum=geometry.multiple * bottom - (0 if geometry.padded else 4))
