"""Networks: size bookkeeping against real forward passes, architecture details, init, config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emseg.models import FCN, UNet, VNet, build_model, geometry_for
from emseg.models.fcn import bilinear_kernel
from emseg.models.geometry import Geometry

torch.set_num_threads(1)

CONFIGS = [
    {"arch": "unet", "padding": "valid"},
    {"arch": "unet", "padding": "same"},
    {"arch": "fcn"},
    {"arch": "vnet"},
]
DEPTHS = [1, 2, 3, 4]


def small(config: dict, depth: int, **extra: object) -> dict:
    return {**config, "depth": depth, "base_channels": 2, "dropout": 0.0, **extra}


def simulate(size: int, depth: int, conv_loss: int) -> int | None:
    """Trace one axis through an encoder-decoder layer by layer; None where a step is inexact.

    conv_loss is the size lost per level's convolutions (4 for unpadded U-Net, 0 when padded).
    """
    skips = []
    for _ in range(depth):
        size -= conv_loss
        if size < 1 or size % 2:
            return None
        skips.append(size)
        size //= 2
    size -= conv_loss
    if size < 1:
        return None
    for skip in reversed(skips):
        size = 2 * size
        if size > skip:
            return None
        size -= conv_loss
        if size < 1:
            return None
    return size


@pytest.fixture(scope="module")
def paper_unet() -> UNet:
    torch.manual_seed(0)
    return build_model({"arch": "unet"})


# ---------------------------------------------------------------- geometry


def test_paper_geometry() -> None:
    geometry = geometry_for({"arch": "unet", "padding": "valid", "depth": 4})
    assert geometry.margin == 92
    assert not geometry.padded
    assert geometry.output_size(572) == 388
    assert geometry.input_size_for_output(388) == 572
    assert geometry.is_valid(572)
    for bad in (570, 571, 573, 574, 184, 0):
        assert not geometry.is_valid(bad)
        with pytest.raises(ValueError, match=str(bad)):
            geometry.output_size(bad)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("padded", [False, True])
def test_geometry_matches_layer_by_layer_trace(depth: int, padded: bool) -> None:
    config = {"arch": "unet", "padding": "same" if padded else "valid", "depth": depth}
    geometry = geometry_for(config)
    for size in range(1, 400):
        expected = simulate(size, depth, conv_loss=0 if padded else 4)
        assert geometry.is_valid(size) == (expected is not None), size
        if expected is not None:
            assert geometry.output_size(size) == expected
            assert size - expected == 2 * geometry.margin


@pytest.mark.parametrize("arch", ["fcn", "vnet"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_padded_geometry_needs_exact_halvings(arch: str, depth: int) -> None:
    geometry = geometry_for({"arch": arch, "depth": depth})
    assert geometry.padded and geometry.margin == 0
    for size in range(1, 100):
        assert geometry.is_valid(size) == (size % 2**depth == 0)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_input_size_for_output_is_smallest(config: dict, depth: int) -> None:
    geometry = geometry_for({**config, "depth": depth})
    for wanted in (1, 5, 64, 100, 388):
        size = geometry.input_size_for_output(wanted)
        assert geometry.output_size(size) >= wanted
        smaller = [s for s in range(1, size) if geometry.is_valid(s)]
        assert all(geometry.output_size(s) < wanted for s in smaller)
    with pytest.raises(ValueError, match="min_output"):
        geometry.input_size_for_output(0)


def test_valid_input_sizes_is_the_filter_of_is_valid() -> None:
    geometry = geometry_for({"arch": "unet", "depth": 3})
    assert geometry.valid_input_sizes(1, 300) == [s for s in range(1, 301) if geometry.is_valid(s)]
    assert geometry.valid_input_sizes(110, 115) == []
    with pytest.raises(ValueError, match="lo"):
        geometry.valid_input_sizes(10, 5)


def test_geometry_is_frozen_and_constructible_without_residue() -> None:
    geometry = Geometry(margin=0, multiple=8, padded=True)
    assert geometry.valid_input_sizes(1, 30) == [8, 16, 24]
    with pytest.raises(AttributeError):
        geometry.margin = 3  # type: ignore[misc]


# ---------------------------------------------------------------- forward passes


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_every_valid_size_runs_with_predicted_output(config: dict, depth: int) -> None:
    torch.manual_seed(0)
    model = build_model(small(config, depth)).eval()
    geometry = model.geometry
    assert geometry == geometry_for(small(config, depth))
    lo = geometry.input_size_for_output(1)
    sizes = geometry.valid_input_sizes(lo, lo + 3 * geometry.multiple)
    assert len(sizes) == 4
    with torch.no_grad():
        for height, width in zip(sizes, reversed(sizes), strict=True):  # non-square too
            out = model(torch.randn(1, 1, height, width))
            expected = (1, 2, geometry.output_size(height), geometry.output_size(width))
            assert out.shape == expected
            assert out.dtype == torch.float32


@pytest.mark.parametrize("config", CONFIGS)
def test_invalid_size_is_rejected_by_forward(config: dict) -> None:
    model = build_model(small(config, 3))
    good = model.geometry.input_size_for_output(8)
    with pytest.raises(ValueError, match="width"):
        model(torch.randn(1, 1, good, good + 2))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(1, 3, good, good))


def test_paper_input_gives_paper_output() -> None:
    model = build_model(small({"arch": "unet"}, 4)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_normalisation_variants(config: dict, norm: str) -> None:
    model = build_model(small(config, 2, norm=norm, base_channels=4)).train()
    kind = nn.BatchNorm2d if norm == "batch" else nn.InstanceNorm2d
    assert any(isinstance(m, kind) for m in model.modules())
    size = model.geometry.input_size_for_output(16)
    assert model(torch.randn(2, 1, size, size)).shape[1] == 2


@pytest.mark.parametrize("config", CONFIGS)
def test_gradients_reach_every_parameter(config: dict) -> None:
    torch.manual_seed(0)
    model = build_model(small(config, 3, base_channels=4))
    size = model.geometry.input_size_for_output(24)
    model(torch.randn(2, 1, size, size)).square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("config", CONFIGS)
def test_channels_last_gives_same_logits(config: dict) -> None:
    torch.manual_seed(0)
    model = build_model(small(config, 2, base_channels=4)).eval()
    size = model.geometry.input_size_for_output(16)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_dropout_is_active_only_in_training(config: dict) -> None:
    torch.manual_seed(0)
    model = build_model({**small(config, 2, base_channels=4), "dropout": 0.5})
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    size = model.geometry.input_size_for_output(16)
    x = torch.randn(1, 1, size, size)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        assert torch.equal(model.eval()(x), model(x))


# ---------------------------------------------------------------- architecture details


def conv3(cin: int, cout: int) -> int:
    return 9 * cin * cout + cout


def test_paper_unet_parameter_count(paper_unet: UNet) -> None:
    c = [64, 128, 256, 512, 1024]
    expected = conv3(1, 64) + conv3(64, 64)
    expected += sum(conv3(c[i - 1], c[i]) + conv3(c[i], c[i]) for i in range(1, 5))
    expected += sum(
        4 * c[i + 1] * c[i] + c[i] + conv3(2 * c[i], c[i]) + conv3(c[i], c[i]) for i in range(4)
    )
    expected += 64 * 2 + 2
    assert sum(p.numel() for p in paper_unet.parameters()) == expected
    assert 30.9e6 < expected < 31.1e6  # the paper's ~31M


def test_paper_unet_layers(paper_unet: UNet) -> None:
    convs = [m for m in paper_unet.modules() if type(m) is nn.Conv2d]
    assert all(m.padding == (0, 0) for m in convs)
    assert sum(m.kernel_size == (3, 3) for m in convs) == 18
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 2
    ups = [m for m in paper_unet.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in ups] == [
        (1024, 512),
        (512, 256),
        (256, 128),
        (128, 64),
    ]
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in ups)
    pools = [m for m in paper_unet.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(m.kernel_size == 2 for m in pools)
    dropouts = [m for m in paper_unet.modules() if isinstance(m, nn.Dropout)]
    assert [m.p for m in dropouts] == [0.5]


def test_paper_unet_he_normal_init(paper_unet: UNet) -> None:
    for module in paper_unet.modules():
        if isinstance(module, nn.ConvTranspose2d):
            fan_in = module.in_channels  # 2x2 kernel, stride 2: one input pixel per output
        elif isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        else:
            continue
        weight = module.weight.detach()
        if weight.numel() < 10_000:
            continue
        assert weight.mean().abs() < 0.05 * weight.std()
        assert weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
        assert torch.count_nonzero(module.bias) == 0


def test_fcn_fuses_three_scales_with_bilinear_upsampling() -> None:
    model = FCN(base_channels=4, depth=4)
    assert len(model.score_skips) == 2
    assert [m.stride for m in model.up2] == [(2, 2), (2, 2)]
    assert model.up_final.stride == (4, 4)  # FCN-8s at depth 5 would be 8
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4
    assert len(FCN(base_channels=4, depth=1).score_skips) == 0


def test_bilinear_kernel_matches_interpolation() -> None:
    x = torch.randn(1, 1, 9, 11)
    for factor in (2, 4):
        up = F.conv_transpose2d(
            x, bilinear_kernel(1, 2 * factor), stride=factor, padding=factor // 2
        )
        reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert up.shape == reference.shape
        inner = slice(factor, -factor)  # borders differ: zero padding versus edge clamping
        torch.testing.assert_close(up[..., inner, inner], reference[..., inner, inner])


def test_vnet_stages_follow_the_paper() -> None:
    model = VNet(base_channels=16, depth=4)

    def num_convs(stage: nn.Module) -> int:
        return sum(isinstance(m, nn.Conv2d) and m.kernel_size == (5, 5) for m in stage.modules())

    assert num_convs(model.input_stage) == 1
    assert [num_convs(block) for block in model.down] == [2, 3, 3, 3]
    assert [num_convs(stage) for stage in model.up_stages] == [3, 3, 2, 1]
    downs = [block[0][0] for block in model.down]
    assert [(m.in_channels, m.out_channels) for m in downs] == [
        (16, 32),
        (32, 64),
        (64, 128),
        (128, 256),
    ]
    assert all(m.kernel_size == (2, 2) and m.stride == (2, 2) for m in downs)
    assert all(isinstance(up[0], nn.ConvTranspose2d) for up in model.up)
    assert any(isinstance(m, nn.PReLU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU | nn.MaxPool2d) for m in model.modules())
    assert model.head.in_channels == 32


def test_vnet_stage_is_residual() -> None:
    model = VNet(base_channels=4, depth=1).eval()
    stage = model.input_stage
    for conv in stage.convs:
        if isinstance(conv, nn.Conv2d):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        expected = stage.act(x.expand(1, 4, 8, 8))  # the input broadcast over the channels
        torch.testing.assert_close(stage(x), expected)


# ---------------------------------------------------------------- config


def test_build_model_defaults_and_ignores_unknown_keys() -> None:
    model = build_model({"arch": "unet", "base_channels": 2, "loss": "auto", "extra": 1})
    assert isinstance(model, UNet)
    assert model.geometry.margin == 92 and model.geometry.multiple == 16
    assert isinstance(build_model({"arch": "fcn", "base_channels": 2}), FCN)
    assert isinstance(build_model({"arch": "vnet", "base_channels": 2, "padding": "same"}), VNet)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "arch"),
        ({"arch": "segnet"}, "arch"),
        ({"arch": "unet", "padding": "full"}, "padding"),
        ({"arch": "fcn", "padding": "valid"}, "padding"),
        ({"arch": "unet", "depth": 0}, "depth"),
        ({"arch": "unet", "depth": 2.0}, "depth"),
        ({"arch": "unet", "base_channels": "64"}, "base_channels"),
        ({"arch": "unet", "base_channels": True}, "base_channels"),
        ({"arch": "unet", "norm": "group"}, "norm"),
        ({"arch": "unet", "dropout": 1.0}, "dropout"),
        ({"arch": "unet", "dropout": -0.1}, "dropout"),
    ],
)
def test_bad_config_names_the_key(config: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"model.{key}"):
        geometry_for(config)
    with pytest.raises(ValueError, match=f"model.{key}"):
        build_model(config)
