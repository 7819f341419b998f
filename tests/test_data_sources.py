"""Every data source through the data and preprocessing rules, and the errors bad input gets."""

from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from emseg.io import read_stack
from emseg.synthetic import synthetic_stack
from workflow_helpers import ISBI, jobs_planned, snakemake, write_config

PADDED = "results/preprocessed/padded0/labelled_images.tif"
needs_isbi = pytest.mark.skipif(not ISBI.is_dir(), reason="ISBI 2012 data not found")


def _user_stacks(
    folder: Path, height: int = 41, width: int = 57, slices: int = 4
) -> tuple[Path, Path]:
    """A 16-bit image stack and a label stack with membrane = 255, in a folder with a space."""
    images, labels = synthetic_stack(slices, height, width, seed=3, cell_size=14.0)
    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path = folder / "raw stack.tif", folder / "labels.tif"
    tifffile.imwrite(image_path, images.astype(np.uint16) * 200, photometric="minisblack")
    tifffile.imwrite(
        label_path, np.where(labels == 1, 255, 7).astype(np.uint8), photometric="minisblack"
    )
    return image_path, label_path


def _files_config(folder: Path, images: Path, labels: Path, **extra: object) -> Path:
    data = {"source": "files", "train_images": str(images), "train_labels": str(labels)}
    data = {"membrane_value": 255, **data, **extra}
    return write_config(folder, {"data": data, "split": {"val_count": 1}})


def test_files_source_with_odd_sizes_and_16_bit(tmp_path: Path) -> None:
    images, labels = _user_stacks(tmp_path / "my data")
    config = _files_config(tmp_path, images, labels)
    result = snakemake(tmp_path, PADDED, "results/preprocessed/labels.tif", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    canonical = tifffile.imread(tmp_path / "results/data/train_labels.tif")
    source = tifffile.imread(labels)
    np.testing.assert_array_equal(canonical, (source == 255).astype(np.uint8))
    padded = read_stack(tmp_path / PADDED)
    assert padded.shape == (4, 41, 57) and padded.dtype == np.float32
    norm = json.loads((tmp_path / "results/preprocessed/normalization.json").read_text())
    raw = tifffile.imread(images).astype(float)
    assert norm["low"] == pytest.approx(np.percentile(raw, 1.0))
    np.testing.assert_allclose(
        padded, (raw - norm["low"]) / (norm["high"] - norm["low"]), rtol=1e-5
    )


def test_files_source_from_png_folders_with_a_test_stack(tmp_path: Path) -> None:
    images, labels = synthetic_stack(4, 33, 35, seed=4, cell_size=12.0)
    folders = {name: tmp_path / name for name in ("img", "lbl", "tst")}
    for folder in folders.values():
        folder.mkdir()
    for i in range(4):
        Image.fromarray(images[i]).save(folders["img"] / f"{i}.png")
        Image.fromarray(np.where(labels[i] == 1, 255, 0).astype(np.uint8)).save(
            folders["lbl"] / f"{i}.png"
        )
        Image.fromarray(images[i]).save(folders["tst"] / f"slice{i}.png")
    config = _files_config(
        tmp_path, folders["img"], folders["lbl"], test_images=str(folders["tst"])
    )
    result = snakemake(
        tmp_path, "results/preprocessed/padded0/test_images.tif", PADDED, config=config
    )
    assert result.returncode == 0, result.stderr[-3000:]
    test = tifffile.imread(tmp_path / "results/preprocessed/padded0/test_images.tif")
    assert test.shape == (4, 33, 35)
    targets = ("results/preprocessed/padded0/test_images.tif", PADDED)
    assert not jobs_planned(snakemake(tmp_path, "-n", *targets, config=config))

    # one slice edited in place: the folder's own time stamp stays, the slice's does not
    time.sleep(1.1)  # past the file system's time-stamp resolution
    Image.fromarray(255 - images[2]).save(folders["img"] / "2.png")
    planned = jobs_planned(snakemake(tmp_path, "-n", *targets, config=config))
    assert planned.get("import_files") == 1 and planned.get("normalize") == 1, planned
    # one slice added to the test folder
    Image.fromarray(images[0]).save(folders["tst"] / "slice4.png")
    result = snakemake(tmp_path, *targets, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    test = tifffile.imread(tmp_path / "results/preprocessed/padded0/test_images.tif")
    assert test.shape == (5, 33, 35)
    edited = tifffile.imread(tmp_path / "results/data/train_images.tif")[2]
    np.testing.assert_array_equal(edited, 255 - images[2])


def test_valid_unet_pads_by_its_margin(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "model": {"padding": "valid", "depth": 2, "norm": "none"},
            "train": {"tile_size": 60},
            "predict": {"tile_size": 60},
        },
    )
    target = "results/preprocessed/padded20/labelled_images.tif"
    result = snakemake(tmp_path, target, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    padded = tifffile.imread(tmp_path / target)
    plain = tifffile.imread(tmp_path / "results/preprocessed/labelled_images.tif")
    assert padded.shape == (5, 72 + 40, 72 + 40)
    np.testing.assert_array_equal(padded[:, 20:-20, 20:-20], plain)
    np.testing.assert_array_equal(padded[:, 20 - 3, 20:-20], plain[:, 3])  # reflected about row 0


@needs_isbi
def test_isbi_source_from_a_local_mirror(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"data": {"source": "isbi2012"}, "split": {"val_count": 5}})
    test = "results/preprocessed/test_images.tif"
    env = {"EMSEG_ISBI_MIRROR": str(ISBI)}
    result = snakemake(tmp_path, PADDED, test, config=config, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    labels = tifffile.imread(tmp_path / "results/data/train_labels.tif")
    assert labels.shape == (30, 512, 512)
    assert labels.mean() == pytest.approx(1_727_250 / (30 * 512 * 512))  # the README's statistics
    padded = read_stack(tmp_path / PADDED)
    assert padded.shape == (30, 512, 512)
    assert read_stack(tmp_path / test).shape == (30, 512, 512)


@pytest.fixture
def isbi_server() -> Iterator[str]:
    """The ISBI folder served over HTTP on 127.0.0.1."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ISBI))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@needs_isbi
def test_isbi_source_over_http(tmp_path: Path, isbi_server: str) -> None:
    config = write_config(tmp_path, {"data": {"source": "isbi2012", "base_url": isbi_server}})
    result = snakemake(
        tmp_path, "results/data/dataset.json", config=config, env={"EMSEG_ISBI_MIRROR": ""}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fetched = json.loads((tmp_path / "results/data/isbi2012/fetched.json").read_text())
    assert fetched["origin"] == isbi_server and len(fetched["files"]) == 90
    assert not list((tmp_path / "results").rglob("*.part"))
    # The same bytes from a mirror (the SHA-256 sums pin them): nothing is fetched or rebuilt again.
    again = snakemake(
        tmp_path,
        "results/data/dataset.json",
        "-n",
        config=config,
        env={"EMSEG_ISBI_MIRROR": str(ISBI)},
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert jobs_planned(again) == {}


def _fails_naming(tmp_path: Path, config: Path, *needles: str) -> str:
    result = snakemake(tmp_path, config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for needle in needles:
        assert needle in output, output[-3000:]
    return output


def test_shape_mismatch_names_both_files_and_leaves_nothing(tmp_path: Path) -> None:
    images, labels = _user_stacks(tmp_path / "in")
    tifffile.imwrite(
        labels,
        np.zeros((4, 41, 50), np.uint8) + np.eye(41, 50, dtype=np.uint8),
        photometric="minisblack",
    )
    _fails_naming(
        tmp_path, _files_config(tmp_path, images, labels, membrane_value=1), "differ in shape"
    )
    assert not (tmp_path / "results/data/train_images.tif").exists()
    assert not list((tmp_path / "results").rglob("*.tmp"))


def test_three_valued_labels_are_refused(tmp_path: Path) -> None:
    images, labels = _user_stacks(tmp_path / "in")
    stack = tifffile.imread(labels)
    stack[0, 0, :5] = 100
    tifffile.imwrite(labels, stack, photometric="minisblack")
    _fails_naming(tmp_path, _files_config(tmp_path, images, labels), "labels.tif", "3 values")
    assert not (tmp_path / "results/data/dataset.json").exists()


def test_truncated_tiff_is_refused(tmp_path: Path) -> None:
    images, labels = _user_stacks(tmp_path / "in")
    images.write_bytes(images.read_bytes()[:3000])
    _fails_naming(tmp_path, _files_config(tmp_path, images, labels), "raw stack.tif", "truncated")


def test_rgb_image_is_refused(tmp_path: Path) -> None:
    images, labels = _user_stacks(tmp_path / "in")
    tifffile.imwrite(images, np.zeros((41, 57, 3), np.uint8), photometric="rgb")
    _fails_naming(tmp_path, _files_config(tmp_path, images, labels), "raw stack.tif", "RGB")


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    _, labels = _user_stacks(tmp_path / "in")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_naming(tmp_path, _files_config(tmp_path, empty, labels), "empty", "no .png/.tif/.tiff")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"data": {"source": "nowhere"}}, "data.source"),
        ({"train": {"iterations": -5}}, "train.iterations"),
        ({"data": {"source": "files", "train_images": "/no/such/file.tif"}}, "data.train_images"),
        ({"model": {"depth": 2}, "train": {"tile_size": 30}}, "train.tile_size"),
        ({"split": {"val_count": 5}}, "split.val_count"),
        ({"bogus_key": 1}, "bogus_key"),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path: Path, override: dict, key: str) -> None:
    config = write_config(tmp_path, override)
    output = _fails_naming(tmp_path, config, key)
    assert "rule " not in output.split("Error")[0] or "localrule" not in output
    assert not (tmp_path / "results").exists()


def test_another_test_stack_retrains_nothing(tmp_path: Path) -> None:
    """Only the test stack's own stages rerun: import, scaling, prediction and what follows."""
    images, labels = _user_stacks(tmp_path / "my data", height=72, width=72, slices=5)
    tests = {}
    for seed in (5, 6):
        stack = synthetic_stack(2, 72, 72, seed=seed, cell_size=14.0)[0].astype(np.uint16) * 200
        tests[seed] = tmp_path / f"test{seed}.tif"
        tifffile.imwrite(tests[seed], stack, photometric="minisblack")
    config = _files_config(tmp_path, images, labels, test_images=str(tests[5]))
    result = snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-3000:]

    elsewhere = {"mirror": str(tmp_path)}
    config = _files_config(tmp_path, images, labels, test_images=str(tests[5]), **elsewhere)
    planned = jobs_planned(snakemake(tmp_path, "-n", config=config))
    assert set(planned) <= {"report", "all"}, planned  # the report shows the config
    config = _files_config(tmp_path, images, labels, test_images=str(tests[6]), **elsewhere)
    planned = jobs_planned(snakemake(tmp_path, "-n", config=config))
    assert planned.get("import_test_files") == 1 and planned.get("normalize_test") == 1
    assert planned.get("predict") == 1  # the test slices; the held-out ones are kept
    assert not {"import_files", "normalize", "augment_slice", "train", "score"} & set(planned)
    result = snakemake(tmp_path, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    scaled = read_stack(tmp_path / "results/preprocessed/test_images.tif")
    norm = json.loads((tmp_path / "results/preprocessed/normalization.json").read_text())
    np.testing.assert_allclose(
        scaled,
        (tifffile.imread(tests[6]) - norm["low"]) / (norm["high"] - norm["low"]),
        rtol=1e-5,
    )


def test_a_slice_name_with_braces_is_named(tmp_path: Path) -> None:
    """Each slice of a folder is a job input, and Snakemake reads braces in a path as wildcards."""
    images, labels = synthetic_stack(3, 33, 35, seed=4, cell_size=12.0)
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / f"slice{{{i}}}.png")
    label_path = tmp_path / "labels.tif"
    tifffile.imwrite(
        label_path, np.where(labels == 1, 255, 0).astype(np.uint8), photometric="minisblack"
    )
    result = snakemake(tmp_path, "-n", config=_files_config(tmp_path, folder, label_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "data.train_images: " in output and "slice{0}.png" in output and "braces" in output
    assert "Traceback" not in output
