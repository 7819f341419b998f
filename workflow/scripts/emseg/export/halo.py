"""The package's output halo: how far the exported network's output pixels see into its input.

bioimageio.core, deepImageJ and the other consumers tile a large image into blocks that overlap
by the halo a package declares and cut that halo from every output block. A block's kept pixels
equal those of one pass over the whole image when none of them sees past the block's input: the
zeros a padded convolution reads at the block border, or the mirror an unpadded U-Net's
exported network adds, never reach them. So the halo is the network's reach, found exactly on a
copy of its architecture, rounded up to the pooling factor (blocks then keep the whole image's
pooling grid). At depth 4 a padded U-Net reaches 94 px and the mirrored unpadded one 96 px: both
get a 96 px halo (a FCN-8s 80 px, a V-Net 288 px). On a trained padded U-Net of depth 4, tiles
of 256 px differed from one pass by up to 0.97 without a halo, 0.042 with 64 px, 0.004 with 80 px
and not at all with 96 px: the network uses nearly all of its reach.

The copy has one channel per layer and all weights positive, and it sees a line of ones on zeros:
with nothing negative, no path can cancel, so an output changes exactly where the line reaches
it. Normalisation is left out: batch norm in eval mode is per pixel, and instance norm couples
every pixel of a block with every other, which no halo undoes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from emseg.export.network import MembraneProbability, membrane_network

PROBE_WIDTHS = (16, 32, 64, 128)  # multiples of the pooling factor a probe spans, tried in turn


def output_halo(spec: Mapping[str, Any]) -> int:
    """The halo (px) of the exported network for a `model:` config, a multiple of 2**depth."""
    probe = _probe_network(spec)
    multiple = probe.net.geometry.multiple
    for width in PROBE_WIDTHS:
        reach = _reach(probe, width * multiple)
        if reach is not None:
            return max(multiple, -(-reach // multiple) * multiple)
    raise ValueError(f"the network's reach exceeds {PROBE_WIDTHS[-1] // 2} x {multiple} px")


def _probe_network(spec: Mapping[str, Any]) -> MembraneProbability:
    """One channel per layer, no normalisation or dropout, every weight 1 and every bias 0."""
    probe = membrane_network(**{**spec, "base_channels": 1, "norm": "none", "dropout": 0.0})
    with torch.no_grad():
        for layer in probe.modules():
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.PReLU):
                layer.weight.fill_(1.0)
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d) and layer.bias is not None:
                layer.bias.zero_()
    return probe.double().eval()


def _reach(probe: MembraneProbability, width: int) -> int | None:
    """How far outside its pooling-aligned group of pixels an output sees, along x; None when
    what a line in the middle of `width` px reaches comes near the edge (probe a wider image)."""
    multiple = probe.net.geometry.multiple
    height = multiple * (1 + (probe.margin + probe.extra) // multiple)  # more than the mirror
    centre = width // 2 // multiple * multiple
    reach = 0
    for phase in range(multiple):
        column = centre + phase
        image = torch.zeros((1, 1, height, width), dtype=torch.float64)
        image[..., column] = 1.0
        with torch.no_grad():
            reached = torch.nonzero(probe.logits(image).sum(dim=(0, 1, 2)) > 0).flatten()
        if reached.numel() == 0 or reached.min() < multiple or reached.max() >= width - multiple:
            return None
        group = reached // multiple * multiple
        reach = max(reach, int((group - column).max()), int((column - group - multiple + 1).max()))
    return reach
