"""Cells segmented block by block equal the whole-slice segmentation; none is cut at a border.

The probability maps are those of a synthetic EM stack (cells of about 24 px, so many straddle the
32 px blocks), stored in an OME-Zarr as the block jobs leave it; the three passes (segment with a
halo, stitch, relabel) run in-process, with every segmentation method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from scipy import ndimage

from emseg.apply_finish import finish_volume, forget_label_image
from emseg.blocks import (
    BlockGrid,
    job_count,
    label_job_count,
    label_job_members,
    levels_per_job,
    pyramid_shapes,
)
from emseg.io import InputError
from emseg.metrics import rand_info_scores
from emseg.omezarr import create_store, listed_labels, open_level, quantize, store_layout
from emseg.segment_settings import SegmentSettings
from emseg.segmentation import segment_stack
from emseg.stitching import relabel_blocks, segment_blocks, stitch
from emseg.synthetic import synthetic_stack

SHAPE = (2, 100, 118)


def membrane_probability(seed: int = 3) -> np.ndarray:
    """A smooth, noisy membrane probability with real cell shapes."""
    _, labels = synthetic_stack(SHAPE[0], SHAPE[1], SHAPE[2], seed, cell_size=24.0)
    prob = ndimage.gaussian_filter(labels.astype(np.float32), (0, 1.2, 1.2)) * 1.6
    noise = np.random.default_rng(seed).normal(0, 0.05, SHAPE).astype(np.float32)
    return np.clip(prob + noise, 0.0, 1.0)


def prepared_store(folder: Path, prob: np.ndarray, dtype: str, side: int = 32) -> dict[str, Any]:
    """A store holding `prob` at level 0, and the plan the block jobs would have worked from."""
    chunks, block = (1, 16, 16), (1, side, side)
    levels = pyramid_shapes(SHAPE, chunks)
    grid = BlockGrid(SHAPE, block)
    plan = {
        "name": "v",
        "store": str(folder / "v.ome.zarr"),
        "shape": list(SHAPE),
        "block": list(block),
        "chunks": list(chunks),
        "levels": [list(level) for level in levels],
        "voxel_size": [1.0, 1.0, 1.0],
        "unit": None,
        "ngff": "0.4",
        "blocks_per_job": 5,
        "jobs": job_count(len(grid), 5),
        "job_levels": levels_per_job(block, chunks, len(levels)),
        "output": {"dtype": dtype},
        "plan_hash": "test",
    }
    create_store(store_layout(plan), {"input": "test", "shape": list(SHAPE), "dtype": "uint8"})
    open_level(Path(plan["store"]), 0)[:] = quantize(prob, dtype)
    return plan


def blockwise_cells(folder: Path, plan: dict[str, Any], settings: SegmentSettings) -> np.ndarray:
    records = [folder / f"{job}.npz" for job in range(plan["jobs"])]
    for job, record in enumerate(records):
        segment_blocks(plan, settings, 24, job, record)
    stitch(plan, records, folder / "ids.npz")
    relabel_all(folder, plan)
    return zarr.open_array(Path(plan["store"]) / "labels/cells/0", mode="r")[:]


def relabel_all(folder: Path, plan: dict[str, Any]) -> None:
    """Every relabel job, each with the records of its segment jobs, as the rule gives them."""
    for label_job in range(label_job_count(plan["jobs"], plan["blocks_per_job"])):
        members = label_job_members(plan["jobs"], plan["blocks_per_job"], label_job)
        records = [folder / f"{job}.npz" for job in members]
        relabel_blocks(plan, folder / "ids.npz", records, label_job)


@pytest.mark.parametrize(
    ("method", "dtype", "side"),
    [
        ("threshold", "float32", 32),
        ("watershed", "uint8", 32),
        ("multicut", "uint8", 32),
        ("watershed", "uint8", 16),  # 112 blocks: 23 segment jobs, 2 relabel jobs
    ],
)
def test_blockwise_cells_equal_whole_slice_cells(
    tmp_path: Path, method: str, dtype: str, side: int
) -> None:
    prob = membrane_probability()
    plan = prepared_store(tmp_path, prob, dtype, side)
    assert label_job_count(plan["jobs"], plan["blocks_per_job"]) == (2 if side == 16 else 1)
    settings = SegmentSettings(method=method)
    cells = blockwise_cells(tmp_path, plan, settings)
    stored = zarr.open_array(Path(plan["store"]) / "0", mode="r")[:]
    whole = segment_stack(
        stored.astype(np.float32) / (255.0 if dtype == "uint8" else 1.0), settings
    )
    assert cells.dtype == np.uint32
    ids = [set(np.unique(plane)) - {0} for plane in cells]
    assert not ids[0] & ids[1], "ids are unique over the volume"
    assert sorted(ids[0] | ids[1]) == list(range(1, len(ids[0]) + len(ids[1]) + 1))
    for z in range(SHAPE[0]):
        assert len(ids[z]) > 20  # many cells, so many cross the 32 px block borders
        score = rand_info_scores(whole[z].astype(np.int64), cells[z].astype(np.int64))
        assert score.vrand > 0.999, (z, score)
    for axis, border in ((1, 32), (1, 64), (1, 96), (2, 32), (2, 64), (2, 96)):
        before = np.take(cells, border - 1, axis=axis)
        after = np.take(cells, border, axis=axis)
        touching = (before > 0) & (after > 0)
        assert touching.any()
        np.testing.assert_array_equal(before[touching], after[touching])  # no cell cut


def test_label_levels_take_every_second_pixel(tmp_path: Path) -> None:
    plan = prepared_store(tmp_path, membrane_probability(), "uint8")
    cells = blockwise_cells(tmp_path, plan, SegmentSettings(method="watershed"))
    level1 = zarr.open_array(Path(plan["store"]) / "labels/cells/1", mode="r")[:]
    np.testing.assert_array_equal(level1, cells[:, ::2, ::2])


def test_a_relabel_job_run_again_writes_the_same_cells(tmp_path: Path) -> None:
    """A relabel job killed and rerun (rerun-incomplete) must not relabel ids twice."""
    plan = prepared_store(tmp_path, membrane_probability(), "uint8")
    cells = blockwise_cells(tmp_path, plan, SegmentSettings(method="watershed"))
    relabel_all(tmp_path, plan)
    again = zarr.open_array(Path(plan["store"]) / "labels/cells/0", mode="r")[:]
    np.testing.assert_array_equal(again, cells)


def test_cells_are_listed_when_finished_and_forgotten_with_their_records(tmp_path: Path) -> None:
    plan = prepared_store(tmp_path, membrane_probability(), "uint8")
    store = Path(plan["store"])
    assert listed_labels(store) == [] and not (store / "labels").exists()
    blockwise_cells(tmp_path, plan, SegmentSettings(method="threshold"))
    assert listed_labels(store) == []  # napari sees no half-written cells
    finish_volume(plan, [], ["cells"])
    assert listed_labels(store) == ["cells"]
    (tmp_path / "0.json").write_text("{}")  # a relabel job's record
    forget_label_image(plan, "cells", [tmp_path / "ids.npz", *tmp_path.glob("*.json")])
    finish_volume(plan, [], [])
    assert not (store / "labels").exists() and not (tmp_path / "ids.npz").exists()
    assert not (tmp_path / "0.json").exists() and (tmp_path / "0.npz").exists()


def test_a_record_without_cell_ids_is_named(tmp_path: Path) -> None:
    """A segmentation record of an older emseg held no ids: relabel says which and what to do."""
    plan = prepared_store(tmp_path, membrane_probability(), "uint8")
    blockwise_cells(tmp_path, plan, SegmentSettings(method="threshold"))
    with np.load(tmp_path / "0.npz") as record:
        old = {key: record[key] for key in record.files if not key.endswith("_ids")}
    np.savez_compressed(tmp_path / "0.npz", **old)
    with pytest.raises(InputError, match=r"0\.npz: holds no cell ids of block 0 .* delete "):
        relabel_all(tmp_path, plan)
