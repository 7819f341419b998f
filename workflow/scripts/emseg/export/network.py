"""The exported network: an emseg network whose output is the membrane probability.

emseg's networks return two class logits; every consumer of a model package (deepImageJ, napari,
bioimageio.core) should get the probability map that `emseg.tiling` computes, so the softmax and
the choice of the membrane class live inside the exported network.

An unpadded U-Net's output is 2 * margin smaller than its input. bioimageio.core (0.11) tiles
an image only for outputs of their input's size (an output block is the input block's size; an
offset would shift it, not shrink it), so the exported network mirrors its input by the margin
first, as emseg's overlap-tile prediction does, and returns a map of its input's size.

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

    (N, 1, H, W) images -> (N, 1, H, W) membrane probabilities, for H and W multiples of
    2**depth. An unpadded U-Net sees its input mirrored by its margin on the top and left and by
    the margin + `extra` on the bottom and right (so that the size is one it accepts), and the
    `extra` rows and columns of its output are cut: the pooling grid starts `margin` px before
    the image, as in `emseg.tiling.predict_slice`.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        geometry = net.geometry
        self.margin = geometry.margin
        self.extra = (geometry.residue - 2 * geometry.margin) % geometry.multiple

    def logits(self, x: Tensor) -> Tensor:
        """The network's class logits at every pixel of `x` (before the softmax)."""
        if not self.margin:
            return self.net(x)
        low, high = self.margin, self.margin + self.extra
        logits = self.net(nn.functional.pad(x, (low, high, low, high), mode="reflect"))
        if self.extra:
            logits = logits[:, :, : -self.extra, : -self.extra]
        return logits

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x), dim=1)[:, 1:2]


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
