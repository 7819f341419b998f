"""Segmentation networks: U-Net, FCN and V-Net behind one config-driven constructor.

Every model maps (N, 1, H, W) float32 images to (N, 2, H', W') logits, class 0 = cell and
class 1 = membrane, and carries `.geometry` (see geometry.py) with H' = geometry.output_size(H).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from emseg.models.fcn import FCN
from emseg.models.geometry import Geometry, geometry_for, parse_spec
from emseg.models.unet import UNet
from emseg.models.vnet import VNet

__all__ = ["FCN", "Geometry", "UNet", "VNet", "build_model", "geometry_for"]


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Build the network a model config dict describes (unknown keys are ignored)."""
    s = parse_spec(spec)
    if s.arch == "unet":
        return UNet(s.base_channels, s.depth, s.padding, s.norm, s.dropout)
    if s.arch == "fcn":
        return FCN(s.base_channels, s.depth, s.norm, s.dropout)
    return VNet(s.base_channels, s.depth, s.norm, s.dropout)
