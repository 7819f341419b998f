"""Segmentation networks: U-Net, FCN and V-Net behind one config-driven constructor.

Every model maps (N, 1, H, W) float32 images to (N, 2, H', W') logits, class 0 = cell and
class 1 = membrane, and carries `.geometry` (see geometry.py) with H' = geometry.output_size(H).
The networks (and torch) load on first use: the Snakefile needs only the geometry, and importing
torch would add a second to every `snakemake` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from emseg.models.geometry import Geometry, geometry_for, parse_spec

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FCN", "Geometry", "UNet", "VNet", "build_model", "geometry_for"]
_NETWORKS = {"UNet": "emseg.models.unet", "FCN": "emseg.models.fcn", "VNet": "emseg.models.vnet"}


def __getattr__(name: str) -> Any:
    if name in _NETWORKS:
        return getattr(importlib.import_module(_NETWORKS[name]), name)
    raise AttributeError(f"module 'emseg.models' has no attribute {name!r}")


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build the network a model config dict describes (unknown keys are ignored)."""
    s = parse_spec(spec)
    if s.arch == "unet":
        return __getattr__("UNet")(s.base_channels, s.depth, s.padding, s.norm, s.dropout)
    if s.arch == "fcn":
        return __getattr__("FCN")(s.base_channels, s.depth, s.norm, s.dropout)
    return __getattr__("VNet")(s.base_channels, s.depth, s.norm, s.dropout)
