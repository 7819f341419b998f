"""Fully convolutional network with FCN-8s skip fusion (Long, Shelhamer & Darrell, CVPR 2015).

Encoder: a VGG-16-like stack sized for 1-channel EM by the config, `depth` stages of padded 3x3
convolutions + ReLU (two convolutions in the first two stages, three after, as in VGG-16;
channels base * 2**stage, capped at 8 * base like VGG's 512), each ending in a 2x2 max-pool.
The fully connected fc6/fc7 layers become convolutions (3x3 and 1x1, with dropout) on the
coarsest map. Class scores are taken at the last three scales (fc7 and the two preceding
pools; fewer when depth < 3), fused coarse to fine by learned 2x transposed convolutions and
summation, and a final learned transposed convolution brings them back to the input size.
Upsampling kernels start as bilinear interpolation, as in the paper; other weights are He-normal
because there is no ImageNet VGG for 1-channel EM.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from emseg.models.geometry import padded_geometry
from emseg.models.unet import NUM_CLASSES, check_input, he_normal_, norm_layer

FUSED_SCALES = 3  # FCN-8s: scores from fc7, pool4 and pool3


def bilinear_kernel(channels: int, size: int) -> Tensor:
    """Transposed-conv weight (channels, channels, size, size) performing bilinear upsampling."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = torch.outer(ramp, ramp)
    return weight


def upsampler(factor: int) -> nn.ConvTranspose2d:
    """Learned transposed convolution that scales class scores exactly by `factor`."""
    layer = nn.ConvTranspose2d(
        NUM_CLASSES,
        NUM_CLASSES,
        kernel_size=2 * factor,
        stride=factor,
        padding=factor // 2,
        bias=False,
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(NUM_CLASSES, 2 * factor))
    return layer


def vgg_stage(in_channels: int, out_channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """`num_convs` padded 3x3 conv (+ norm) + ReLU layers followed by a 2x2 max-pool."""
    bias = norm == "none"  # a normalisation's shift makes the conv bias redundant
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 1, 1, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class FCN(nn.Module):
    """FCN-8s-style network; logits (N, 2, H, W) for inputs with H, W multiples of 2**depth."""

    def __init__(
        self, base_channels: int = 64, depth: int = 4, norm: str = "none", dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.geometry = padded_geometry(depth)
        channels = [base_channels * 2 ** min(stage, 3) for stage in range(depth)]
        in_channels = [1, *channels[:-1]]
        self.stages = nn.ModuleList(
            vgg_stage(cin, cout, 2 if stage < 2 else 3, norm)
            for stage, (cin, cout) in enumerate(zip(in_channels, channels, strict=True))
        )

        fc_channels = 2 * channels[-1]
        self.fc = nn.Sequential(
            nn.Conv2d(channels[-1], fc_channels, 3, padding=1),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score_fc = nn.Conv2d(fc_channels, NUM_CLASSES, 1)
        # score layers on the pools before the last, finest last (score_pool4, score_pool3)
        num_skips = min(FUSED_SCALES, depth) - 1
        self.skip_stages = list(range(depth - 2, depth - 2 - num_skips, -1))
        self.score_skips = nn.ModuleList(
            nn.Conv2d(channels[stage], NUM_CLASSES, 1) for stage in self.skip_stages
        )
        he_normal_(self)
        self.up2 = nn.ModuleList(upsampler(2) for _ in self.skip_stages)
        self.up_final = upsampler(2 ** (depth - num_skips))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.geometry)
        pools = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        score = self.score_fc(self.fc(x))
        for stage, score_skip, up in zip(self.skip_stages, self.score_skips, self.up2, strict=True):
            score = up(score) + score_skip(pools[stage])
        return self.up_final(score)
