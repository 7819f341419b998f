"""V-Net (Milletari, Navab & Ahmadi, 3DV 2016) in two dimensions.

Every resolution level is a residual stage: 1, 2, 3, 3, ... padded 5x5 convolutions with PReLU,
whose input is added to the output of its last convolution (the 1-channel image is broadcast
over the first stage's channels, as the paper replicates it). Down-sampling is a strided 2x2
convolution that doubles the channels; up-sampling a 2x2 transposed convolution. On the way up
the up-sampled map is concatenated with the encoder stage of the same level, so each decoder
stage works on twice that level's channels, with the same number of convolutions as on the way
down (3, 3, 2, 1 for the paper's four levels). A 1x1 convolution gives the 2 class logits.
Dropout sits at the end of the contracting path. Output size = input size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emseg.models.geometry import padded_geometry
from emseg.models.unet import NUM_CLASSES, check_input, he_normal_, norm_layer

PRELU_INIT = 0.25  # PyTorch's (and He et al.'s) initial PReLU slope, also used for the init gain


def convs_at_level(level: int) -> int:
    """Convolutions per residual stage: 1, 2, 3, 3, ... from the finest level down."""
    return min(level + 1, 3)


class ResidualStage(nn.Module):
    """`num_convs` 5x5 conv (+ norm) layers, PReLU between; input added before the last PReLU."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"  # a normalisation's shift makes the conv bias redundant
        layers: list[nn.Module] = []
        for i in range(num_convs):
            if i > 0:
                layers.append(nn.PReLU(channels))
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 5, padding=2, bias=bias),
                norm_layer(norm, channels),
            ]
        self.convs = nn.Sequential(*layers)
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.convs(x) + x)


def resample(conv: nn.Module, channels: int, norm: str) -> nn.Sequential:
    """A strided (transposed) 2x2 convolution followed by normalisation and PReLU."""
    return nn.Sequential(conv, norm_layer(norm, channels), nn.PReLU(channels))


class VNet(nn.Module):
    """2-D V-Net; logits (N, 2, H, W) for inputs with H, W multiples of 2**depth."""

    def __init__(
        self, base_channels: int = 64, depth: int = 4, norm: str = "none", dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.geometry = padded_geometry(depth)
        channels = [base_channels * 2**level for level in range(depth + 1)]

        self.input_stage = ResidualStage(1, channels[0], convs_at_level(0), norm)
        self.down = nn.ModuleList(
            nn.Sequential(
                resample(
                    nn.Conv2d(channels[level - 1], channels[level], 2, stride=2),
                    channels[level],
                    norm,
                ),
                ResidualStage(channels[level], channels[level], convs_at_level(level), norm),
            )
            for level in range(1, depth + 1)
        )
        self.dropout = nn.Dropout(dropout)  # end of the contracting path
        # decoder level `level` receives the bottom map or the decoder map one level coarser
        up_in = [
            channels[depth] if level == depth - 1 else 2 * channels[level + 1]
            for level in range(depth)
        ]
        self.up = nn.ModuleList(
            resample(
                nn.ConvTranspose2d(up_in[level], channels[level], 2, stride=2),
                channels[level],
                norm,
            )
            for level in reversed(range(depth))
        )
        self.up_stages = nn.ModuleList(
            ResidualStage(2 * channels[level], 2 * channels[level], convs_at_level(level), norm)
            for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(2 * channels[0], NUM_CLASSES, kernel_size=1)
        he_normal_(self, negative_slope=PRELU_INIT)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.geometry)
        x = self.input_stage(x)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(x)
        x = self.dropout(x)
        for up, stage in zip(self.up, self.up_stages, strict=True):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
