"""Hostile input: bad configs, shell metacharacters in paths, odd images, random sizes.

Each case either works correctly or stops with one line that names the key or the file. Cases
about the workflow run the real Snakefile on tiny data; image checks that need no Snakemake call
the function the import rule runs (`emseg.dataset.import_user_stacks`) on real files.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from emseg.dataset import MIN_SIDE, import_user_stacks, import_user_test_stack
from emseg.io import InputError, read_stack
from emseg.metrics import isbi_scores, rand_info_scores
from emseg.models import build_model
from emseg.preprocess import fit_normalization, mirror_pad
from emseg.synthetic import synthetic_stack
from emseg.tiling import TileOptions, predict_slice
from workflow_helpers import REPO, snakemake, write_config

CPU = torch.device("cpu")
PADDED = "results/preprocessed/padded0/labelled_images.tif"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _labels(slices: int, height: int, width: int, seed: int = 3) -> np.ndarray:
    """A two-valued label stack (255 = membrane, 0 = cell) of real-looking cells."""
    _, labels = synthetic_stack(slices, height, width, seed=seed, cell_size=12.0)
    return np.where(labels == 1, 255, 0).astype(np.uint8)


def _tiff(path: Path, stack: np.ndarray, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, stack, **({"photometric": "minisblack"} | options))
    return path


def _files_config(
    folder: Path, images: Path, labels: Path, results: str = "results", **data: object
) -> Path:
    spec = {"source": "files", "membrane_value": 255, "train_images": str(images)}
    spec |= {"train_labels": str(labels), **data}
    return write_config(folder, {"data": spec, "split": {"val_count": 1}, "results": results})


def _failure(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    return output


# --- config -------------------------------------------------------------------------------------


def test_more_folds_than_slices_is_refused_before_any_job(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"cv": {"folds": 9}})  # the tiny synthetic stack has 5
    output = _failure(snakemake(tmp_path, config=config))
    assert "cv.folds: 9 folds need 9 labelled slices, not 5" in output
    assert not (tmp_path / "results").exists()


def test_an_empty_label_folder_is_named_not_blamed_on_the_split(tmp_path: Path) -> None:
    images = _tiff(tmp_path / "images.tif", np.zeros((3, 20, 24), np.uint8))
    (tmp_path / "labels").mkdir()
    config = _files_config(tmp_path, images, tmp_path / "labels")
    output = _failure(snakemake(tmp_path, "-n", config=config))
    assert "data.train_labels: " in output and "labels: folder holds no .png/.tif/.tiff" in output
    assert "split.val_count" not in output and "cv.folds" not in output


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"augment": {"zoom_range": 2}}, ["config key augment.zoom_range:", "maximum of 0.9"]),
        ({"predict": {"overlap": 1.5}}, ["config key predict.overlap:", "maximum of 1"]),
        ({"model": {"depth": 0}}, ["config key model.depth:", "minimum of 1"]),
        ({"train": {"batch_size": "many"}}, ["config key train.batch_size:", "'integer'"]),
        ({"train": {"bogus": 1}}, ["config key train:", "'bogus' was unexpected"]),
    ],
)
def test_bad_values_are_refused_naming_the_key(
    tmp_path: Path, override: dict, needles: list[str]
) -> None:
    output = _failure(snakemake(tmp_path, config=write_config(tmp_path, override)))
    for needle in needles:
        assert needle in output, output[-3000:]
    assert not (tmp_path / "results").exists()


# --- paths --------------------------------------------------------------------------------------

HOSTILE = """we ird $(touch PWNED) `touch PWNED` 'q' "dq" ; ls & | > x * ? [a] #c"""


def test_shell_metacharacters_in_paths_are_data_not_commands(tmp_path: Path) -> None:
    folder = tmp_path / HOSTILE
    images, _ = synthetic_stack(4, 33, 35, seed=4, cell_size=12.0)
    image_path = _tiff(folder / "im $(touch PWNED).tif", images)
    label_path = _tiff(folder / "lab;touch PWNED;'.tif", _labels(4, 33, 35, seed=4))
    results = "out $(touch PWNED) ; 'r'"
    config = _files_config(tmp_path, image_path, label_path, results=results)
    target = f"{results}/preprocessed/padded0/labelled_images.tif"
    result = snakemake(tmp_path, target, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    labels = tifffile.imread(tmp_path / results / "preprocessed/labels.tif")
    np.testing.assert_array_equal(labels, tifffile.imread(label_path) == 255)
    padded = tifffile.imread(tmp_path / target)
    assert padded.shape == images.shape and np.isfinite(padded).all()
    assert not list(tmp_path.rglob("PWNED"))
    assert not (Path.cwd() / "PWNED").exists() and not (REPO / "PWNED").exists()


@pytest.mark.parametrize("key", ["results", "data.train_images"])
def test_braces_in_paths_are_refused_naming_the_key(tmp_path: Path, key: str) -> None:
    """Snakemake reads {x} in any file path as a wildcard and cannot escape it."""
    folder = tmp_path / ("in" if key == "results" else "in {x}")
    image_path = _tiff(folder / "im.tif", synthetic_stack(4, 33, 35, seed=4)[0])
    label_path = _tiff(tmp_path / "labels.tif", _labels(4, 33, 35, seed=4))
    results = "out {x}" if key == "results" else "results"
    config = _files_config(tmp_path, image_path, label_path, results=results)
    output = _failure(snakemake(tmp_path, config=config))
    assert f"{key}:" in output and "brace" in output, output[-3000:]


# --- images through the workflow ----------------------------------------------------------------


def test_float32_non_square_images_and_a_constant_test_stack_work(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = (rng.random((4, 37, 53)) * 1000.0 - 200.0).astype(np.float32)  # no multiple of 16
    image_path = _tiff(tmp_path / "in" / "float.tif", raw)
    label_path = _tiff(tmp_path / "in" / "labels.tif", _labels(4, 37, 53))
    test_path = _tiff(tmp_path / "in" / "flat.tif", np.full((2, 40, 45), 777, np.uint16))
    config = _files_config(tmp_path, image_path, label_path, test_images=str(test_path))
    test_target = "results/preprocessed/padded0/test_images.tif"
    result = snakemake(tmp_path, PADDED, test_target, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    low, high = np.percentile(raw.astype(np.float64), [1.0, 99.0])
    padded = tifffile.imread(tmp_path / PADDED)
    np.testing.assert_allclose(padded, (raw - low) / (high - low), rtol=1e-5, atol=1e-6)
    flat = tifffile.imread(tmp_path / test_target)
    assert flat.shape == (2, 40, 45) and np.isfinite(flat).all()
    np.testing.assert_allclose(flat, (777 - low) / (high - low), rtol=1e-5)


def test_nan_in_a_float_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).random((4, 33, 35)).astype(np.float32)
    raw[2, 5, 7] = np.nan
    image_path = _tiff(tmp_path / "in" / "with nan.tif", raw)
    label_path = _tiff(tmp_path / "in" / "labels.tif", _labels(4, 33, 35))
    output = _failure(snakemake(tmp_path, config=_files_config(tmp_path, image_path, label_path)))
    assert f"{image_path}: image contains NaN" in output
    assert "Traceback" not in output
    assert not (tmp_path / "results/data/train_images.tif").exists()


# --- images through the import function ---------------------------------------------------------


def _import(folder: Path, images: Path, labels: Path, test: Path | None = None) -> dict[str, Path]:
    """Run the import rule's function; return the canonical outputs it wrote."""
    outputs = {key: folder / "data" / f"{key}.tif" for key in ("train_images", "train_labels")}
    outputs["record"] = folder / "data" / "dataset.json"
    inputs = {"train_images": str(images), "train_labels": str(labels)}
    import_user_stacks(outputs, inputs, membrane_value=255)
    if test is not None:
        outputs["test_images"] = folder / "data" / "test_images.tif"
        import_user_test_stack(outputs["test_images"], str(test), outputs["train_images"])
    return outputs


def test_16_bit_images_keep_their_gray_values(tmp_path: Path) -> None:
    raw = np.random.default_rng(2).integers(0, 65536, (3, 20, 24), dtype=np.uint16)
    labels = _tiff(tmp_path / "labels.tif", _labels(3, 20, 24))
    outputs = _import(tmp_path, _tiff(tmp_path / "raw16.tif", raw), labels)
    stored = tifffile.imread(outputs["train_images"])
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, raw)


def test_constant_images_normalise_without_nan(tmp_path: Path) -> None:
    flat = _tiff(tmp_path / "flat.tif", np.full((3, 20, 24), 9, np.uint8))
    outputs = _import(tmp_path, flat, _tiff(tmp_path / "labels.tif", _labels(3, 20, 24)))
    stack = read_stack(outputs["train_images"])
    normalised = fit_normalization(stack, 1.0, 99.0).apply(stack)
    assert np.isfinite(normalised).all()
    np.testing.assert_array_equal(normalised, 0.0)


def test_a_4096_square_slice_is_preprocessed_in_bounded_memory(tmp_path: Path) -> None:
    side = 4096
    rng = np.random.default_rng(3)
    image = _tiff(tmp_path / "big.tif", rng.integers(0, 4096, (side, side), dtype=np.uint16))
    membrane = np.where(rng.random((side, side)) < 0.3, 255, 0).astype(np.uint8)
    labels = _tiff(tmp_path / "labels.tif", membrane)
    tracemalloc.start()
    try:
        outputs = _import(tmp_path, image, labels)
        stack = read_stack(outputs["train_images"])
        padded = mirror_pad(fit_normalization(stack, 1.0, 99.0).apply(stack), 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert padded.shape == (1, side + 40, side + 40) and padded.dtype == np.float32
    assert tifffile.imread(outputs["train_labels"]).shape == (side, side)
    # a few float32 copies of the slice, never float64 ones of the whole pipeline
    assert peak < 16 * side * side, f"peak {peak / 2**20:.0f} MiB"


def test_too_thin_slices_are_refused_naming_the_file(tmp_path: Path) -> None:
    line = _tiff(tmp_path / "line scan.tif", np.arange(3 * 40, dtype=np.uint8).reshape(3, 1, 40))
    labels = _tiff(tmp_path / "labels.tif", np.tile([[[0, 255]]], (3, 1, 20)).astype(np.uint8))
    with pytest.raises(InputError, match=f"line scan.tif: slices of 1 x 40 px .* {MIN_SIDE} x"):
        _import(tmp_path, line, labels)


def test_rgb_and_multichannel_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    labels = _tiff(tmp_path / "labels.tif", _labels(2, 20, 24))
    rgb = _tiff(tmp_path / "colour.tif", np.zeros((20, 24, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=r"colour\.tif: 3 samples per pixel"):
        _import(tmp_path, rgb, labels)
    channels = tmp_path / "channels.tif"
    stack = np.zeros((2, 2, 20, 24), np.uint16)
    tifffile.imwrite(channels, stack, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match=r"channels.tif: multi-channel TIFF \(axes ZCYX\)"):
        _import(tmp_path, channels, labels)
    assert not (tmp_path / "data" / "train_images.tif").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((0, 128, 255), r"labels have 3 values \[  0 128 255\], expected two"),
        ((0, 128), r"no pixel has the membrane value 255 \(values: \[  0 128\]\)"),
        ((255,), r"every pixel has the membrane value 255; labels need cells too"),
    ],
)
def test_labels_other_than_the_declared_two_values_are_refused(
    tmp_path: Path, values: tuple[int, ...], message: str
) -> None:
    labels = np.resize(np.array(values, np.uint8), 3 * 20 * 24).reshape(3, 20, 24)
    images = _tiff(tmp_path / "images.tif", np.zeros((3, 20, 24), np.uint8))
    with pytest.raises(InputError, match=f"my labels.tif: {message}"):
        _import(tmp_path, images, _tiff(tmp_path / "my labels.tif", labels))


def test_a_test_stack_of_another_pixel_type_is_refused(tmp_path: Path) -> None:
    """Its gray values would be scaled by the training stack's fit, silently wrong."""
    images = _tiff(tmp_path / "images.tif", np.zeros((3, 20, 24), np.uint16))
    labels = _tiff(tmp_path / "labels.tif", _labels(3, 20, 24))
    test = _tiff(tmp_path / "test.tif", np.zeros((2, 20, 24), np.uint8))
    with pytest.raises(InputError, match=r"test\.tif: pixel type uint8, the training images"):
        _import(tmp_path, images, labels, test)
    assert not (tmp_path / "data" / "test_images.tif").exists()


def test_image_and_label_stacks_with_different_slice_counts_are_refused(tmp_path: Path) -> None:
    images = _tiff(tmp_path / "five.tif", np.zeros((5, 20, 24), np.uint8))
    labels = _tiff(tmp_path / "four.tif", _labels(4, 20, 24))
    with pytest.raises(InputError) as error:
        _import(tmp_path, images, labels)
    assert str(error.value).startswith(f"{images} and {labels}: image stack (5, 20, 24)")
    assert "label stack (4, 20, 24) differ" in str(error.value)
    assert not list((tmp_path / "data").glob("*"))


# --- label conventions ---------------------------------------------------------------------------


def _canonical(folder: Path, images: Path, labels: Path, membrane_value: int) -> np.ndarray:
    """Import with `membrane_value`; return the canonical labels (1 = membrane)."""
    outputs = {key: folder / "data" / f"{key}.tif" for key in ("train_images", "train_labels")}
    outputs["record"] = folder / "data" / "dataset.json"
    inputs = {"train_images": str(images), "train_labels": str(labels)}
    import_user_stacks(outputs, inputs, membrane_value=membrane_value)
    return tifffile.imread(outputs["train_labels"])


@pytest.mark.parametrize("membrane_value", [0, 1])
def test_palette_png_labels_import_as_their_indices(
    tmp_path: Path, emseg_log: pytest.LogCaptureFixture, membrane_value: int
) -> None:
    """Read as luminance, indices 0 (dark red) and 1 (white) were 38 and 255: no label value."""
    membrane = _labels(3, 20, 24) == 255
    indices = np.where(membrane, membrane_value, 1 - membrane_value).astype(np.uint8)
    (tmp_path / "labels").mkdir()
    for index, plane in enumerate(indices):
        image = Image.frombytes("P", (24, 20), plane.tobytes())
        image.putpalette([128, 0, 0, 255, 255, 255])
        image.save(tmp_path / "labels" / f"{index}.png")
    images = _tiff(tmp_path / "images.tif", np.zeros((3, 20, 24), np.uint8))
    labels = _canonical(tmp_path, images, tmp_path / "labels", membrane_value)
    np.testing.assert_array_equal(labels, membrane)
    assert "inverted" not in emseg_log.text  # membrane is the minority here


def test_membrane_covering_most_pixels_warns_of_inverted_labels(
    tmp_path: Path, emseg_log: pytest.LogCaptureFixture
) -> None:
    """ISBI's convention read the other way round: membrane 0 would cover 78 % of the pixels."""
    pattern = np.array([0] * 78 + [255] * 22, np.uint8)
    given = np.resize(pattern, 2 * 20 * 25).reshape(2, 20, 25)
    images = _tiff(tmp_path / "images.tif", np.zeros((2, 20, 25), np.uint8))
    labels = _canonical(tmp_path, images, _tiff(tmp_path / "my labels.tif", given), 0)
    np.testing.assert_array_equal(labels, given == 0)  # warned, not refused
    warnings = [r.getMessage() for r in emseg_log.records if r.levelname == "WARNING"]
    assert warnings == [
        f"{tmp_path / 'my labels.tif'}: membrane covers 78 % of the labelled pixels with"
        " data.membrane_value: 0; are the labels inverted? set data.membrane_value to the cell"
        " value (255)"
    ]


# --- properties ---------------------------------------------------------------------------------

_NETS: dict[str, torch.nn.Module] = {}


def _net(padding: str) -> torch.nn.Module:
    """A tiny U-Net of depth 2, built once per padding (hypothesis reruns the test body)."""
    if padding not in _NETS:
        torch.manual_seed(0)
        spec = {"arch": "unet", "padding": padding, "base_channels": 2, "depth": 2}
        _NETS[padding] = build_model(spec | {"norm": "none", "dropout": 0.0}).eval()
    return _NETS[padding]


@settings(max_examples=15, deadline=None)
@given(
    padding=st.sampled_from(["same", "valid"]),
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    batch_size=st.integers(1, 3),
    tta=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_tiling_returns_a_probability_per_input_pixel(
    padding: str, height: int, width: int, batch_size: int, tta: bool, seed: int
) -> None:
    model = _net(padding)
    geometry = model.geometry
    tile = geometry.input_size_for_output(16) if padding == "valid" else 16
    image = np.random.default_rng(seed).random((height, width)).astype(np.float32)
    options = TileOptions(tile_size=tile, batch_size=batch_size, tta=tta)
    prob = predict_slice(model, mirror_pad(image, geometry.margin), options, CPU)
    assert prob.shape == (height, width) and prob.dtype == np.float32
    assert np.all((prob >= 0.0) & (prob <= 1.0))


_LABEL_IMAGES = st.tuples(st.integers(2, 12), st.integers(2, 12)).flatmap(
    lambda shape: st.tuples(
        arrays(np.int32, shape, elements=st.integers(1, 5)),
        arrays(np.int32, shape, elements=st.integers(1, 5)),
    )
)


@settings(max_examples=15, deadline=None)
@given(pair=_LABEL_IMAGES)
def test_scores_are_perfect_against_itself_and_swap_split_and_merge(
    pair: tuple[np.ndarray, np.ndarray],
) -> None:
    first, second = pair
    same = rand_info_scores(first, first)
    assert same.vrand == pytest.approx(1.0) and same.vinfo == pytest.approx(1.0)
    forward, backward = rand_info_scores(first, second), rand_info_scores(second, first)
    assert forward.vrand_split == pytest.approx(backward.vrand_merge)
    assert forward.vrand_merge == pytest.approx(backward.vrand_split)
    assert forward.vinfo_split == pytest.approx(backward.vinfo_merge)
    assert forward.vinfo_merge == pytest.approx(backward.vinfo_split)
    assert forward.vrand == pytest.approx(backward.vrand)


@settings(max_examples=15, deadline=None)
@given(
    membrane=arrays(
        np.uint8, st.tuples(st.integers(3, 16), st.integers(3, 16)), elements=st.integers(0, 1)
    )
)
def test_a_label_image_scored_as_its_own_prediction_is_perfect(membrane: np.ndarray) -> None:
    scores = isbi_scores(membrane.astype(np.float32), membrane, threshold=0.5)
    assert scores.vrand == pytest.approx(1.0) and scores.vinfo == pytest.approx(1.0)
