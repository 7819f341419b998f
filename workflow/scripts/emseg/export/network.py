"""The exported network: an emseg network whose output is the membrane probability.

emseg's networks return two class logits; every consumer of a model package (deepImageJ, napari,
bioimageio.core) should get the probability map that `emseg.tiling` computes, so the softmax and
the choice of the membrane class live inside the exported network.

This file is shipped in the package too: `standalone.py` copies it, below the model modules, into
one architecture file, so it may import from emseg only names that those modules define.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from emseg.models.fcn import FCN
from emseg.models.geometry import parse_spec
from emseg.models.unet import UNet
from emseg.models.vnet import VNet


class MembraneProbability(nn.Module):
    """A segmentation network followed by the softmax over its classes; keeps class 1 (membrane).

    (N, 1, H, W) images -> (N, 1, H', W') membrane probabilities, H' as the network's geometry says.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.net(x), dim=1)[:, 1:2]


def membrane_network(**spec: Any) -> MembraneProbability:
    """The exported network for a `model:` config (arch, padding, base_channels, depth, ...)."""
    s = parse_spec(spec)
    if s.arch == "unet":
        net: nn.Module = UNet(s.base_channels, s.depth, s.padding, s.norm, s.dropout)
    elif s.arch == "fcn":
        net = FCN(s.base_channels, s.depth, s.norm, s.dropout)
    else:
        net = VNet(s.base_channels, s.depth, s.norm, s.dropout)
    return MembraneProbability(net)
