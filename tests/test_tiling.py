"""Overlap-tile prediction: exact stitching for valid nets, blending for padded ones."""

import numpy as np
import pytest
import torch

from emseg.models import build_model
from emseg.models.geometry import padded_geometry
from emseg.preprocess import mirror_pad
from emseg.tiling import TileOptions, _gaussian_window, predict_slice

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _valid_unet(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        {"arch": "unet", "padding": "valid", "base_channels": 4, "depth": depth, "dropout": 0.0}
    )
    return model.double().eval()


def _whole_pass(model: torch.nn.Module, padded: np.ndarray) -> np.ndarray:
    """One forward pass over the whole padded slice, grown at the bottom/right to a valid size."""
    geometry = model.geometry
    sizes = [geometry.input_size_for_output(s - 2 * geometry.margin) for s in padded.shape]
    grown = np.pad(
        padded, [(0, size - s) for size, s in zip(sizes, padded.shape, strict=True)], mode="reflect"
    )
    with torch.no_grad():
        logits = model(torch.from_numpy(grown)[None, None])
    prob = torch.softmax(logits, 1)[0, 1].numpy()
    return prob[: padded.shape[0] - 2 * geometry.margin, : padded.shape[1] - 2 * geometry.margin]


@pytest.mark.parametrize(("height", "width", "seed"), [(37, 53, 0), (64, 64, 1), (101, 29, 2)])
def test_overlap_tile_equals_single_pass_for_valid_unet(height: int, width: int, seed: int) -> None:
    model = _valid_unet(depth=2)
    rng = np.random.default_rng(seed)
    image = rng.random((height, width))
    padded = mirror_pad(image, model.geometry.margin)
    tile = model.geometry.input_size_for_output(20)  # several tiles per slice
    options = TileOptions(tile_size=tile, batch_size=3)
    stitched = predict_slice(model, padded, options, CPU)
    assert stitched.shape == (height, width)
    np.testing.assert_allclose(stitched, _whole_pass(model, padded), atol=1e-5)


def test_valid_unet_depth3_random_sizes() -> None:
    model = _valid_unet(depth=3)
    rng = np.random.default_rng(7)
    for height, width in rng.integers(20, 90, size=(3, 2)):
        padded = mirror_pad(rng.random((height, width)), model.geometry.margin)
        tile = model.geometry.input_size_for_output(30)
        stitched = predict_slice(model, padded, TileOptions(tile_size=tile, batch_size=2), CPU)
        np.testing.assert_allclose(stitched, _whole_pass(model, padded), atol=1e-5)


class PixelwiseNet(torch.nn.Module):
    """A padded 1x1-convolution network: its output at a pixel depends on that pixel alone."""

    def __init__(self) -> None:
        super().__init__()
        self.geometry = padded_geometry(2)
        self.conv = torch.nn.Conv2d(1, 2, 1)
        torch.nn.init.constant_(self.conv.weight, 0.0)
        with torch.no_grad():
            self.conv.weight[1, 0] = 3.0
            self.conv.bias[:] = torch.tensor([0.0, -1.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_blending_reproduces_a_position_independent_network_exactly() -> None:
    model = PixelwiseNet()
    image = np.random.default_rng(3).random((45, 70)).astype(np.float32)
    options = TileOptions(tile_size=16, batch_size=5, overlap=0.5)
    prob = predict_slice(model, image, options, CPU)
    expected = 1.0 / (1.0 + np.exp(-(3.0 * image - 1.5)))
    np.testing.assert_allclose(prob, expected, atol=1e-6)


def test_test_time_augmentation_is_identity_for_a_pixelwise_network() -> None:
    model = PixelwiseNet()
    image = np.random.default_rng(4).random((30, 41)).astype(np.float32)
    plain = predict_slice(model, image, TileOptions(tile_size=16), CPU)
    tta = predict_slice(model, image, TileOptions(tile_size=16, tta=True), CPU)
    np.testing.assert_allclose(tta, plain, atol=1e-6)


def test_tta_of_a_real_unet_is_the_mean_over_eight_views() -> None:
    model = _valid_unet(depth=2)
    image = np.random.default_rng(5).random((24, 24))
    padded = mirror_pad(image, model.geometry.margin)
    tile = model.geometry.input_size_for_output(24)
    options = TileOptions(tile_size=tile)
    views = []
    for k in range(8):
        view = np.rot90(padded, k % 4)
        view = view[:, ::-1] if k >= 4 else view
        prob = predict_slice(model, np.ascontiguousarray(view), options, CPU)
        prob = prob[:, ::-1] if k >= 4 else prob
        views.append(np.rot90(prob, -(k % 4)))
    tta = predict_slice(model, padded, TileOptions(tile_size=tile, tta=True), CPU)
    np.testing.assert_allclose(tta, np.mean(views, axis=0), atol=1e-6)


def test_slices_smaller_than_a_tile_are_predicted_at_their_size() -> None:
    model = PixelwiseNet()
    image = np.random.default_rng(6).random((5, 9)).astype(np.float32)
    prob = predict_slice(model, image, TileOptions(tile_size=16), CPU)
    assert prob.shape == (5, 9)
    np.testing.assert_allclose(prob, 1.0 / (1.0 + np.exp(-(3.0 * image - 1.5))), atol=1e-6)


@pytest.mark.parametrize("arch", ["unet", "fcn", "vnet"])
def test_padded_architectures_predict_probabilities_of_the_slice_size(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model({"arch": arch, "padding": "same", "base_channels": 4, "depth": 2})
    image = np.random.default_rng(8).random((33, 47)).astype(np.float32)
    prob = predict_slice(model, image, TileOptions(tile_size=16, batch_size=4), CPU)
    assert prob.shape == (33, 47)
    assert prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))
    assert model.training, "the model is put back into the mode it came in"


def test_invalid_tile_size_names_the_config_key() -> None:
    model = _valid_unet(depth=2)
    padded = mirror_pad(np.zeros((30, 30)), model.geometry.margin)
    with pytest.raises(ValueError, match=r"predict\.tile_size: 50"):
        predict_slice(model, padded, TileOptions(tile_size=50), CPU)


def test_gaussian_window_peaks_in_the_centre_and_never_reaches_zero() -> None:
    window = _gaussian_window(32)
    assert window.max() == pytest.approx(1.0)
    assert window.min() > 0
    assert window[15, 15] > window[8, 15] > window[0, 15] >= window[0, 0]
    np.testing.assert_allclose(window, window.T)
