"""The package's halo: the exported network's reach, so that tiles of an image give one pass's map.

A tiler (bioimageio.core, deepImageJ) mirrors the image by the halo, cuts it into blocks that
overlap by twice the halo and cuts the halo from each output block. Here that is done by hand, in
float64, for every architecture: with the halo the package declares the tiles equal one pass over
the mirrored image exactly, and with one step less they do not, so the halo is also no larger
than it must be. bioimageio.core's own blocking of real packages is tested in test_export.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emseg.export.halo import output_halo
from emseg.export.network import MembraneProbability
from emseg.models import build_model

SPECS = [
    {"arch": "unet", "padding": "same", "depth": 2},
    {"arch": "unet", "padding": "valid", "depth": 2},
    {"arch": "unet", "padding": "same", "depth": 3},
    {"arch": "fcn", "padding": "same", "depth": 2},
    {"arch": "vnet", "padding": "same", "depth": 2},
]
EXACT = 1e-9  # float64: what the halo leaves is rounding (1e-16); one step less leaves more


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _network(spec: dict) -> MembraneProbability:
    torch.manual_seed(0)
    net = build_model({**spec, "base_channels": 2, "norm": "none", "dropout": 0.0})
    return MembraneProbability(net).double().eval()


def _run(network: MembraneProbability, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return network(torch.from_numpy(image)[None, None])[0, 0].numpy()


def _tiled(network: MembraneProbability, image: np.ndarray, halo: int, inner: int) -> np.ndarray:
    """Blocks as bioimageio.core cuts them: inner squares every `inner` px, each read with `halo`
    px of context (the image mirrored past its border), the halo cut from each output."""
    padded = np.pad(image, halo, mode="reflect")
    tiled = np.empty_like(image)
    for y in range(0, image.shape[0], inner):
        for x in range(0, image.shape[1], inner):
            block = padded[y : y + inner + 2 * halo, x : x + inner + 2 * halo]
            output = _run(network, block)
            tiled[y : y + inner, x : x + inner] = output[halo:-halo, halo:-halo]
    return tiled


def _tile_error(network: MembraneProbability, halo: int) -> float:
    step = network.net.geometry.multiple
    inner = 4 * step
    image = np.random.default_rng(1).random((3 * inner, 3 * inner))
    whole = _run(network, np.pad(image, halo, mode="reflect"))[halo:-halo, halo:-halo]
    return float(np.abs(_tiled(network, image, halo, inner) - whole).max())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['arch']}-{s['padding']}-{s['depth']}")
def test_halo_is_exactly_enough(spec: dict) -> None:
    network = _network(spec)
    halo, step = output_halo(spec), network.net.geometry.multiple
    assert halo % step == 0
    assert _tile_error(network, halo) < EXACT
    assert _tile_error(network, halo - step) > EXACT


def test_halo_of_the_default_networks() -> None:
    """The numbers the README gives: U-Nets of depth 4, padded or not, 96 px; FCN-8s 80 px."""
    for padding in ("same", "valid"):
        assert output_halo({"arch": "unet", "padding": padding, "depth": 4}) == 96
    assert output_halo({"arch": "fcn", "depth": 4}) == 80


def test_unpadded_network_mirrors_its_input_by_its_margin() -> None:
    """The exported unpadded U-Net is the network on the mirrored image: no size is lost."""
    network = _network({"arch": "unet", "padding": "valid", "depth": 3})
    margin, extra = network.margin, network.extra
    assert (margin, extra) == (44, 4)  # 64 + 88 + 4 px is a size the network accepts
    image = np.random.default_rng(2).random((64, 72))
    mirrored = np.pad(image, ((margin, margin + extra), (margin, margin + extra)), mode="reflect")
    with torch.no_grad():
        logits = network.net(torch.from_numpy(mirrored)[None, None])
    expected = torch.softmax(logits, dim=1)[0, 1, :-extra, :-extra].numpy()
    got = _run(network, image)
    assert got.shape == image.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
