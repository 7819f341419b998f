"""`snakemake apply`: trained models applied to volumes block by block, through real Snakemake.

A volume of odd size is cut into blocks far smaller than a slice and into several jobs; the
OME-Zarr they write must pass the NGFF schema (ome-zarr-models), open in ome-zarr's own reader
with its labels, and equal the single-process prediction of each whole slice. A run killed with
SIGKILL redoes only its unfinished jobs and ends with the same volume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models import open_ome_zarr
from PIL import Image

from volume_helpers import AUTO, options_in, random_stack, reference, write_model, write_zarr
from workflow_helpers import jobs_planned, snakemake, start_snakemake, write_config

pytestmark = pytest.mark.slow

SMALL = {"block": [1, 32, 32], "chunks": [1, 16, 16], "blocks_per_job": 6, "threads": 1}
# config/tiny.yaml's predict section, in the precision `auto` picks on this CPU (as apply_blocks)
OPTIONS = options_in(AUTO, tile_size=32, batch_size=4)


def apply_config(folder: Path, volumes: dict[str, Any], **apply: Any) -> Path:
    return write_config(folder, {"apply": {**SMALL, **apply, "volumes": volumes}})


def failure(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_a_trained_run_segments_a_tiff_volume_into_an_ome_zarr(tmp_path: Path) -> None:
    stack = random_stack((3, 61, 83))
    tifffile.imwrite(
        tmp_path / "stack.tif",
        stack,
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"},
    )
    volumes = {"stack": {"input": str(tmp_path / "stack.tif"), "tiff": True}}
    config = apply_config(tmp_path, volumes, model="tiny/fold0/seed0", dtype="float32")
    result = snakemake(tmp_path, "apply", config=config)
    assert result.returncode == 0, failure(result)[-3000:]

    out = tmp_path / "results/apply/stack"
    model = tmp_path / "results/runs/tiny/fold0/seed0/model.pt"
    expected = reference(stack, [model], OPTIONS)
    image = zarr.open_array(out / "stack.ome.zarr/0", mode="r")
    np.testing.assert_allclose(image[:], expected, atol=2e-6)
    np.testing.assert_array_equal(tifffile.imread(out / "stack_membrane_prob.tif"), image[:])
    plan = json.loads((out / "plan.json").read_text())
    records = [json.loads(path.read_text()) for path in (out / "jobs").glob("*.json")]
    assert plan["jobs"] == len(records) == 3  # 18 blocks, 6 per job
    assert {record["precision"] for record in records} == {AUTO.name}
    assert json.loads((out / "stack.json").read_text())["voxels"] == stack.size
    preview = np.asarray(Image.open(out / "stack_preview.png"))  # raw | probability | cells
    assert preview.shape == (61, 3 * 83 + 2 * 8, 3)

    store = out / "stack.ome.zarr"  # the NGFF schema, and ome-zarr's reader with the labels
    assert type(open_ome_zarr(zarr.open_group(store, mode="r"))).__name__ == "Image"
    assert type(open_ome_zarr(zarr.open_group(store / "labels/mask", mode="r"))).__name__ == (
        "ImageLabel"
    )
    nodes = list(Reader(parse_url(str(store)))())
    image_node = nodes[0]
    assert [d.shape for d in image_node.data] == [(3, 61, 83), (3, 31, 42), (3, 16, 21), (3, 8, 11)]
    scale = image_node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([0.05, 0.004, 0.004])  # from the TIFF's ImageJ metadata
    assert image_node.metadata["axes"][0]["unit"] == "micrometer"
    names = {node.metadata.get("name") for node in nodes}
    assert {"mask", "cells"} <= names  # napari shows both as labels layers
    cells = zarr.open_array(store / "labels/cells/0", mode="r")
    assert cells.dtype == np.uint32 and cells.shape == stack.shape


def test_model_files_need_no_data_and_ngff_05_validates(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model.pt", "valid")
    stack = write_zarr(tmp_path / "volume.zarr", random_stack((2, 50, 70)))
    volumes = {"vol": {"input": str(tmp_path / "volume.zarr"), "ngff": "0.5", "tiff": True}}
    config = apply_config(tmp_path, volumes, model=str(model), voxel_size=[50, 4, 4], unit="nm")
    config.write_text(config.read_text().replace("source: synthetic", "source: isbi2012"))
    planned = jobs_planned(snakemake(tmp_path, "apply", "-n", config=config))
    assert set(planned) == {"apply", "apply_prepare", "apply_blocks", "apply_finish"} | {
        "apply_add_mask",
        "apply_mask",
        "apply_segment",
        "apply_stitch",
        "apply_relabel",
        "apply_tiff",
    }
    result = snakemake(tmp_path, "apply", config=config)
    assert result.returncode == 0, failure(result)[-3000:]
    store = tmp_path / "results/apply/vol/vol.ome.zarr"
    assert json.loads((store / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
    assert type(open_ome_zarr(zarr.open_group(store, mode="r"))).__name__ == "Image"
    assert type(open_ome_zarr(zarr.open_group(store / "labels", mode="r"))).__name__ == "Labels"
    for label in ("mask", "cells"):  # the label images the later stages added, NGFF 0.5 too
        group = zarr.open_group(store / "labels" / label, mode="r")
        assert type(open_ome_zarr(group)).__name__ == "ImageLabel"
    axes = json.loads((store / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert [axis["unit"] for axis in axes["axes"]] == ["nanometer"] * 3  # the config's nm
    with tifffile.TiffFile(tmp_path / "results/apply/vol/vol_membrane_prob.tif") as tif:
        assert tif.imagej_metadata["unit"] == "nm" and tif.imagej_metadata["spacing"] == 50
    stored = zarr.open_array(store / "0", mode="r")[:]
    tile = json.loads((tmp_path / "results/apply/vol/plan.json").read_text())["members"][0]
    options = options_in(AUTO, tile_size=tile["tile_size"], batch_size=4)
    expected = reference(stack, [model], options)
    assert np.abs(stored.astype(int) - np.rint(expected * 255)).max() <= 1  # uint8 by default


def test_a_large_volume_is_planned_from_its_header(tmp_path: Path) -> None:
    """64 x 16384 x 16384 voxels (no chunk written) with the default block and job sizes."""
    zarr.create_array(
        tmp_path / "big.zarr", shape=(64, 16384, 16384), dtype="u1", chunks=(1, 1024, 1024)
    )
    model = write_model(tmp_path / "model.pt")
    config = write_config(
        tmp_path,
        {"apply": {"model": str(model), "volumes": {"big": {"input": str(tmp_path / "big.zarr")}}}},
    )
    planned = jobs_planned(snakemake(tmp_path, "apply", "-n", config=config))
    assert planned["apply_blocks"] == 64 * 8 * 8 // 8  # block 1 x 2048 x 2048, 8 blocks per job
    assert planned["apply_prepare"] == planned["apply_finish"] == 1


def test_a_killed_run_redoes_only_unfinished_jobs(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model.pt")
    write_zarr(tmp_path / "volume.zarr", random_stack((4, 64, 96)))
    # no cells: they are made after every block (a relabel job run again: test_stitching.py)
    volumes = {"vol": {"input": str(tmp_path / "volume.zarr"), "segment": False}}
    runs = {}
    for name in ("reference", "killed"):
        folder = tmp_path / name
        folder.mkdir()
        runs[name] = (folder, apply_config(folder, volumes, model=str(model), blocks_per_job=2))
    folder, config = runs["reference"]
    assert snakemake(folder, "apply", config=config).returncode == 0

    folder, config = runs["killed"]
    jobs = folder / "results/apply/vol/jobs"
    process = start_snakemake(folder, config, "apply")
    deadline = time.monotonic() + 300
    while len(list(jobs.glob("*.json"))) < 3:
        assert process.poll() is None and time.monotonic() < deadline, "killed too late"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # The newest record may have been written just before Snakemake could mark its job done:
    # then the job counts as unfinished and runs again. The older ones are finished for sure.
    records = sorted(jobs.glob("*.json"), key=lambda path: path.stat().st_mtime_ns)
    finished = {path.name: path.read_bytes() for path in records[:-1]}
    assert 3 <= len(records) < 12  # 4 x 2 x 3 blocks, 2 per job
    assert snakemake(folder, "--unlock", config=config).returncode == 0

    again = snakemake(folder, "apply", config=config)
    assert again.returncode == 0, failure(again)[-3000:]
    assert again.stderr.count("rule apply_blocks:") in (12 - len(records), 12 - len(finished))
    for name, content in finished.items():  # a finished job is neither rerun nor rewritten
        assert (jobs / name).read_bytes() == content
    for level in ("0", "1", "labels/mask/0", "labels/mask/1"):
        expected = zarr.open_array(runs["reference"][0] / f"results/apply/vol/vol.ome.zarr/{level}")
        got = zarr.open_array(folder / f"results/apply/vol/vol.ome.zarr/{level}")
        np.testing.assert_array_equal(got[:], expected[:])


def test_outputs_asked_for_later_predict_nothing_again(tmp_path: Path) -> None:
    """Outputs made from the stored probability (mask and its threshold, cells, TIFF) leave the
    prediction alone when they are switched on or off, or changed."""
    model = write_model(tmp_path / "model.pt")
    write_zarr(tmp_path / "volume.zarr", random_stack((2, 64, 96)))
    out = tmp_path / "results/apply/vol"
    probability = out / "vol.ome.zarr/0"

    def run(segment: bool, tiff: bool, mask: bool = True, threshold: float = 0.5) -> dict[str, int]:
        volumes = {"vol": {"input": str(tmp_path / "volume.zarr"), "segment": segment}}
        config = write_config(
            tmp_path,
            {
                "apply": {**SMALL, "volumes": volumes, "model": str(model), "tiff": tiff}
                | {"mask": mask, "blocks_per_job": 3},
                "predict": {"threshold": threshold},
            },
        )
        planned = jobs_planned(snakemake(tmp_path, "apply", "-n", config=config))
        result = snakemake(tmp_path, "apply", config=config)
        assert result.returncode == 0, failure(result)[-3000:]
        return planned

    def labels() -> set[str]:  # what ome-zarr's reader (and so napari) finds in the store
        nodes = Reader(parse_url(str(out / "vol.ome.zarr")))()
        return {node.metadata.get("name") for node in nodes} - {None}

    run(segment=False, tiff=False)
    assert labels() == {"membrane probability", "mask"}
    predicted = {path: path.stat().st_mtime_ns for path in probability.rglob("*") if path.is_file()}

    planned = run(segment=True, tiff=True)
    assert {"apply_prepare", "apply_blocks"}.isdisjoint(planned), planned
    assert {"apply_segment", "apply_stitch", "apply_relabel", "apply_tiff"} <= set(planned)
    assert labels() == {"membrane probability", "mask", "cells"}
    cells = zarr.open_array(out / "vol.ome.zarr/labels/cells/0", mode="r")[:]
    assert cells.dtype == np.uint32 and cells.max() > 0
    assert (out / "vol_membrane_prob.tif").is_file()

    assert set(run(segment=False, tiff=True)) == {"apply_finish", "apply"}
    assert labels() == {"membrane probability", "mask"}  # the cells are gone from the store
    assert not (out / "vol.ome.zarr/labels/cells").exists()

    planned = run(segment=True, tiff=True)  # the segmentation records are kept: no new segment
    assert set(planned) == {"apply_stitch", "apply_relabel", "apply_finish", "apply"}, planned
    again = zarr.open_array(out / "vol.ome.zarr/labels/cells/0", mode="r")[:]
    np.testing.assert_array_equal(again, cells)

    assert set(run(segment=True, tiff=True, mask=False)) == {"apply_finish", "apply"}
    assert labels() == {"membrane probability", "cells"}
    assert not (out / "vol.ome.zarr/labels/mask").exists()

    stored = zarr.open_array(probability, mode="r")[:]  # uint8: round(p x 255)
    level = int(np.percentile(stored, 75))
    planned = run(segment=True, tiff=True, threshold=(level + 0.5) / 255)  # the mask anew
    assert set(planned) == {"apply_add_mask", "apply_mask", "apply_finish", "apply"}, planned
    assert labels() == {"membrane probability", "mask", "cells"}
    mask = zarr.open_array(out / "vol.ome.zarr/labels/mask/0", mode="r")[:]
    np.testing.assert_array_equal(mask, stored > level)
    assert 0 < mask.mean() < 0.3
    assert predicted == {path: path.stat().st_mtime_ns for path in predicted}  # never rewritten

    (out / "vol.ome.zarr").rename(tmp_path / "moved.ome.zarr")  # the records outlive the store
    lost = snakemake(tmp_path, "apply", "-n", config=tmp_path / "test_config.yaml")  # the last
    message = "results/apply/vol/vol.ome.zarr: missing, though results/apply/vol/plan.json"
    assert lost.returncode != 0 and message in failure(lost), failure(lost)[-3000:]


def _rgb(folder: Path) -> str:
    tifffile.imwrite(folder / "rgb.tif", np.zeros((40, 40, 3), np.uint8))
    return str(folder / "rgb.tif")


def _four_d(folder: Path) -> str:
    zarr.create_array(folder / "four.zarr", shape=(2, 3, 40, 40), dtype="u1")
    return str(folder / "four.zarr")


def _no_dataset(folder: Path) -> str:
    import h5py

    with h5py.File(folder / "v.h5", "w") as handle:
        handle.create_dataset("raw", data=np.zeros((2, 40, 40), np.uint8))
    return f"{folder / 'v.h5'}:/volumes/raw"


def _tiny(folder: Path) -> str:
    tifffile.imwrite(folder / "line.tif", np.zeros((3, 8, 90), np.uint8), photometric="minisblack")
    return str(folder / "line.tif")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_rgb, r"apply\.volumes\.bad\.input: .*rgb\.tif: 3 samples per pixel"),
        (_four_d, r"apply\.volumes\.bad\.input: .*four\.zarr: 4-D volume"),
        (_no_dataset, r"apply\.volumes\.bad\.input: .*v\.h5:/volumes/raw: no such HDF5 dataset"),
        (_tiny, r"apply\.volumes\.bad\.input: .*line\.tif: slices of 8 x 90 px are too small"),
    ],
)
def test_bad_volumes_stop_before_any_job(tmp_path: Path, make, message: str) -> None:
    model = write_model(tmp_path / "model.pt")
    config = apply_config(tmp_path, {"bad": {"input": make(tmp_path)}}, model=str(model))
    result = snakemake(tmp_path, "apply", config=config)
    assert result.returncode != 0
    assert [line for line in failure(result).splitlines() if _match(message, line)], failure(result)
    assert not (tmp_path / "results").exists()


def _match(pattern: str, line: str) -> bool:
    import re

    return re.search(pattern, line) is not None


def test_a_missing_model_and_an_occupied_store_are_named(tmp_path: Path) -> None:
    write_zarr(tmp_path / "volume.zarr", random_stack((2, 40, 40)))
    volumes = {"vol": {"input": str(tmp_path / "volume.zarr")}}
    missing = apply_config(tmp_path, volumes, model=str(tmp_path / "gone.pt"))
    result = snakemake(tmp_path, "apply", config=missing)
    assert result.returncode != 0
    assert "apply.volumes.vol.model: " in failure(result) and "gone.pt does not exist" in failure(
        result
    )
    not_a_run = apply_config(tmp_path, volumes, model="other/fold0/seed0")
    assert "run 'other/fold0/seed0' is not in this config's grid" in failure(
        snakemake(tmp_path, "apply", config=not_a_run)
    )

    model = write_model(tmp_path / "model.pt")
    occupied = tmp_path / "results/apply/vol/vol.ome.zarr"
    zarr.create_array(occupied, shape=(5, 5), dtype="u1")  # someone else's data
    result = snakemake(tmp_path, "apply", config=apply_config(tmp_path, volumes, model=str(model)))
    assert result.returncode != 0
    assert "vol.ome.zarr: already holds a different volume" in failure(result)
    assert (occupied / ".zarray").exists() or (occupied / "zarr.json").exists()  # left alone
