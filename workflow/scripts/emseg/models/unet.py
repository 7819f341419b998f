"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015), faithful to the paper.

Contracting path: `depth` levels of two unpadded 3x3 convolutions + ReLU, each followed by a
2x2 max-pool that halves the size; channels double per level (64 ... 1024 by default). Dropout
sits at the end of the contracting path. Expanding path: a 2x2 up-convolution that halves the
channels, concatenation with the center-cropped feature map of the same level, two 3x3
convolutions + ReLU. A final 1x1 convolution maps to the 2 classes (0 = cell, 1 = membrane).
Weights are drawn from N(0, sqrt(2 / fan_in)) as the paper prescribes.

padding="same" gives the common modern variant: padded convolutions, output size = input size,
optionally with batch or instance normalisation after every convolution.

The small helpers at the top (normalisation, He init, input checks) are shared by fcn and vnet.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from emseg.models.geometry import Geometry, unet_geometry

NUM_CLASSES = 2


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation after a convolution; 'none' keeps the paper's plain conv + ReLU."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'none', 'batch' or 'instance', got {kind!r}")


def he_normal_(module: nn.Module, negative_slope: float = 0.0) -> None:
    """He-normal init of every (transposed) convolution in `module`, zero biases.

    Conv2d uses kaiming_normal_ (fan_in). For a transposed convolution PyTorch's fan_in counts
    output channels, so the true number of inputs feeding one output pixel,
    in_channels * (kernel / stride)**2, is used instead.
    """
    gain = math.sqrt(2.0 / (1 + negative_slope**2))
    for layer in module.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            kh, kw = layer.kernel_size
            sh, sw = layer.stride
            fan_in = layer.in_channels * max(kh // sh, 1) * max(kw // sw, 1)
            nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
        elif isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(
                layer.weight, a=negative_slope, mode="fan_in", nonlinearity="leaky_relu"
            )
        else:
            continue
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def check_input(x: Tensor, geometry: Geometry) -> None:
    """Reject inputs that are not (N, 1, H, W) or whose H or W the network cannot process."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"input must have shape (N, 1, H, W), got {tuple(x.shape)}")
    for axis, size in zip(("height", "width"), x.shape[2:], strict=True):
        try:
            geometry.output_size(size)
        except ValueError as err:
            raise ValueError(f"input {axis}: {err}") from None


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Crop the central height x width window (the skip connection of the unpadded U-Net)."""
    top = (x.shape[2] - height) // 2
    left = (x.shape[3] - width) // 2
    return x[:, :, top : top + height, left : left + width]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by optional normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, norm: str) -> None:
        bias = norm == "none"  # a normalisation's shift makes the conv bias redundant
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=padding, bias=bias),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """2x2 up-convolution halving channels, crop-and-concatenate skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, padding, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[2], x.shape[3])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with `depth` poolings; logits (N, 2, H', W') with H' = geometry.output_size(H)."""

    def __init__(
        self,
        base_channels: int = 64,
        depth: int = 4,
        padding: str = "valid",
        norm: str = "none",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        pad = 1 if padding == "same" else 0
        self.geometry = unet_geometry(depth, padded=padding == "same")
        channels = [base_channels * 2**level for level in range(depth + 1)]

        self.down = nn.ModuleList([DoubleConv(1, channels[0], pad, norm)])
        self.down.extend(
            DoubleConv(channels[level - 1], channels[level], pad, norm)
            for level in range(1, depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout)  # end of the contracting path, as in the paper
        self.up = nn.ModuleList(
            Up(channels[level + 1], channels[level], pad, norm) for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], NUM_CLASSES, kernel_size=1)
        he_normal_(self)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.geometry)
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                skips.append(x)
                x = self.pool(x)
            x = block(x)
        x = self.dropout(x)
        for block in self.up:
            x = block(x, skips.pop())
        return self.head(x)
