"""Block-wise prediction equals the whole-slice prediction, and reads only what a block needs.

The volumes here have odd sizes and blocks far smaller than a slice, so every block border lies
inside the network's halo of its neighbours; the stitched result must still match a
single-process `predict_slice` of each whole slice, for valid and padded networks, with test-time
augmentation and with an ensemble. The plan, the jobs and the finishing step run in-process; the
Snakemake rules around them are tested in test_apply.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from emseg.apply_finish import finish_volume
from emseg.apply_plan import fit_volume_normalization, make_plan
from emseg.blocks import label_job_count
from emseg.blockwise import run_job
from emseg.io import InputError
from emseg.membrane_mask import mask_blocks, membrane_mask, open_mask
from emseg.model_file import load_model_file
from emseg.omezarr import quantize
from emseg.precision import Precision
from emseg.preprocess import fit_normalization
from emseg.tiling import TileOptions, tile_work
from emseg.volume import open_volume
from precision_helpers import assert_bf16_agrees
from volume_helpers import (
    AUTO,
    FP32,
    options_in,
    random_stack,
    reference,
    write_model,
    write_zarr,
)

CPU = torch.device("cpu")
SHAPE = (3, 77, 101)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def write_volume(path: Path, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return write_zarr(path, random_stack(shape))


def settings_for(volume: Path, models: list[Path], **overrides: Any) -> dict[str, Any]:
    settings = {
        "input": str(volume),
        "shape": list(open_volume(volume).shape),
        "models": [str(m) for m in models],
        "normalization": "model",
        "block": [1, 32, 32],
        "chunks": [1, 16, 16],
        "blocks_per_job": 5,
        "dtype": "float32",
        "mask": True,
        "segment": False,
        "ngff": "0.4",
        "voxel_size": [],
        "unit": "",
    }
    return settings | overrides


def apply_in_process(
    folder: Path, settings: dict[str, Any], predict: dict[str, Any], precision: Precision = FP32
) -> tuple[dict[str, Any], Path]:
    """Plan, run every job (and the mask's) and finish, as the rules do, without Snakemake."""
    plan, store, _ = apply_with_records(folder, settings, predict, precision)
    return plan, store


def apply_with_records(
    folder: Path, settings: dict[str, Any], predict: dict[str, Any], precision: Precision
) -> tuple[dict[str, Any], Path, list[dict[str, Any]]]:
    """apply_in_process, also returning each job's record."""
    store = folder / "out.ome.zarr"
    plan = json.loads(json.dumps(make_plan("test", settings, predict, store)))
    jobs = [run_job(plan, job, CPU, precision) for job in range(plan["jobs"])]
    if settings["mask"]:
        open_mask(plan)
        for label_job in range(label_job_count(plan["jobs"], plan["blocks_per_job"])):
            mask_blocks(plan, label_job, predict["threshold"])
    finish_volume(plan, jobs, ["mask"] if settings["mask"] else [])
    return plan, store, jobs


PREDICT = {"tile_size": 32, "batch_size": 4, "overlap": 0.25, "tta": False, "threshold": 0.5}


@pytest.mark.parametrize(("padding", "tta"), [("same", False), ("valid", False), ("same", True)])
def test_blockwise_equals_whole_slices(tmp_path: Path, padding: str, tta: bool) -> None:
    model = write_model(tmp_path / "model.pt", padding)
    stack = write_volume(tmp_path / "volume.zarr")
    predict = PREDICT | {"tta": tta}
    plan, store = apply_in_process(
        tmp_path, settings_for(tmp_path / "volume.zarr", [model]), predict
    )
    tile = plan["members"][0]["tile_size"]
    expected = reference(stack, [model], TileOptions(tile_size=tile, batch_size=4, tta=tta))
    result = zarr.open_array(store / "0", mode="r")[:]
    assert plan["blocks"] == 3 * 3 * 4 and plan["jobs"] == 8  # blocks far smaller than a slice
    np.testing.assert_allclose(result, expected, atol=2e-6)
    mask = zarr.open_array(store / "labels" / "mask" / "0", mode="r")[:]
    np.testing.assert_array_equal(mask, (result >= 0.5).astype(np.uint8))


def forward_passes(run: Any) -> int:
    """Tiles (batch items) that reach any U-Net while `run()` runs."""
    count = 0

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        nonlocal count
        if type(module).__name__ == "UNet":
            count += args[0].shape[0]

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return count


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_tile_work_counts_the_tiles_that_blocks_compute(tmp_path: Path, padding: str) -> None:
    """The planner's estimate is exact: block-wise passes / whole-slice passes."""
    model = write_model(tmp_path / "model.pt", padding)
    stack = write_volume(tmp_path / "volume.zarr")
    settings = settings_for(tmp_path / "volume.zarr", [model])
    plans: list[dict[str, Any]] = []
    blocks = forward_passes(lambda: plans.append(apply_in_process(tmp_path, settings, PREDICT)[0]))
    tile = plans[0]["members"][0]["tile_size"]
    options = TileOptions(tile_size=tile, batch_size=4)
    whole = forward_passes(lambda: reference(stack, [model], options))
    geometry = load_model_file(model).build(CPU).geometry
    estimate = tile_work(geometry, SHAPE[1:], (32, 32), options)
    assert blocks / whole == pytest.approx(estimate)
    if padding == "same":  # blocks of one window: overlapping windows are computed repeatedly
        assert estimate > 2.5
    else:  # its tiles' 4 px output stride divides the 32 px blocks: each tile computed once
        assert estimate == 1.0


def test_small_blocks_are_named_in_a_warning(tmp_path: Path, emseg_log: Any) -> None:
    model = write_model(tmp_path / "model.pt", "same")
    write_volume(tmp_path / "volume.zarr")
    other = write_model(tmp_path / "other.pt", "same", seed=1)  # an ensemble: one warning
    small = settings_for(tmp_path / "volume.zarr", [model, other])
    make_plan("small", small, PREDICT, tmp_path / "small.ome.zarr")
    whole = small | {"block": [1, 80, 112]}  # one block per slice
    make_plan("whole", whole, PREDICT, tmp_path / "whole.ome.zarr")
    warnings = [r.getMessage() for r in emseg_log.records if r.levelno == logging.WARNING]
    named = [w for w in warnings if w.startswith("apply.block:")]
    assert len(named) == 1 and named[0].startswith("apply.block: blocks of 32 x 32 px")
    assert "volume.zarr's 77 x 101 px slices 2.9 times" in named[0]


def test_blocks_predict_in_the_precision_auto_picks(tmp_path: Path) -> None:
    """bf16 channels-last where the CPU has native bf16 (fp32 channels-last elsewhere), as the
    predict rule does: blocks still meet the whole-slice prediction in that arithmetic."""
    model = write_model(tmp_path / "model.pt", "same")
    stack = write_volume(tmp_path / "volume.zarr")
    settings = settings_for(tmp_path / "volume.zarr", [model])
    plan, store, records = apply_with_records(tmp_path, settings, PREDICT, AUTO)
    result = zarr.open_array(store / "0", mode="r")[:]
    tile = plan["members"][0]["tile_size"]
    same_arithmetic = reference(stack, [model], options_in(AUTO, tile_size=tile, batch_size=4))
    np.testing.assert_allclose(result, same_arithmetic, atol=1e-5)
    assert {(r["precision"], r["channels_last"]) for r in records} == {(AUTO.name, True)}
    assert_bf16_agrees(result, reference(stack, [model], TileOptions(tile_size=tile, batch_size=4)))


def test_an_ensemble_averages_its_models_with_their_own_normalisation(tmp_path: Path) -> None:
    models = [
        write_model(tmp_path / "a.pt", "same", seed=1, low=10.0),
        write_model(tmp_path / "b.pt", "same", seed=2, low=40.0),
    ]
    stack = write_volume(tmp_path / "volume.zarr")
    settings = settings_for(tmp_path / "volume.zarr", models, block=[2, 48, 32])
    _, store = apply_in_process(tmp_path, settings, PREDICT)
    expected = reference(stack, models, TileOptions(tile_size=32, batch_size=4))
    np.testing.assert_allclose(zarr.open_array(store / "0", mode="r")[:], expected, atol=2e-6)


def test_uint8_levels_match_the_float_prediction(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model.pt", "same")
    stack = write_volume(tmp_path / "volume.zarr", (2, 70, 90))
    settings = settings_for(tmp_path / "volume.zarr", [model], dtype="uint8", chunks=[1, 8, 8])
    plan, store = apply_in_process(tmp_path, settings, PREDICT)
    expected = reference(stack, [model], TileOptions(tile_size=32, batch_size=4))
    stored = zarr.open_array(store / "0", mode="r")[:]
    assert stored.dtype == np.uint8
    assert np.abs(stored.astype(int) - np.rint(expected * 255)).max() <= 1
    # levels written by the jobs (1, 2) and by the finishing step (3, 4) all follow the 2x2 mean
    assert plan["job_levels"] == 3 and len(plan["levels"]) == 5
    for level in range(1, 5):
        coarse = zarr.open_array(store / str(level), mode="r")[:].astype(float)
        assert coarse.shape == tuple(plan["levels"][level])
        assert abs(coarse.mean() - stored.astype(float).mean()) < 2.0
    mask = zarr.open_array(store / "labels/mask/0", mode="r")[:]
    np.testing.assert_array_equal(mask, stored >= 128)  # p >= 0.5 from the uint8 store
    for level in range(1, 5):  # label levels take every second pixel, in the jobs and in finish
        step = 2**level
        level_mask = zarr.open_array(store / f"labels/mask/{level}", mode="r")[:]
        np.testing.assert_array_equal(level_mask, mask[:, ::step, ::step])


def test_the_mask_of_a_uint8_store_equals_the_float_threshold_at_one_half() -> None:
    rng = np.random.default_rng(0)
    near = 0.5 + np.arange(-4000, 4000, dtype=np.float32) * np.float32(1e-6)
    prob = np.concatenate([rng.random(10_000, dtype=np.float32), near]).reshape(1, 2, -1)
    float_mask = membrane_mask(prob, 0.5)
    np.testing.assert_array_equal(float_mask, prob >= 0.5)
    np.testing.assert_array_equal(membrane_mask(quantize(prob, "uint8"), 0.5), float_mask)
    assert 0 < float_mask.mean() < 1


class CountingVolume:
    """A volume that records the size of every read."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.name, self.shape = array, "counting", array.shape
        self.dtype, self.voxel_size, self.unit = array.dtype, None, None
        self.reads: list[tuple[int, int, int]] = []

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        block = self.array[z, y, x]
        self.reads.append(block.shape)
        return block


def test_a_job_reads_each_block_once_with_a_bounded_halo(tmp_path: Path, monkeypatch) -> None:
    model = write_model(tmp_path / "model.pt", "same")
    stack = write_volume(tmp_path / "volume.zarr", (2, 300, 260))
    counting = CountingVolume(stack)
    monkeypatch.setattr("emseg.blockwise.open_volume", lambda spec: counting)
    settings = settings_for(tmp_path / "volume.zarr", [model], blocks_per_job=200)
    apply_in_process(tmp_path, settings, PREDICT)
    assert len(counting.reads) == 2 * 10 * 9  # one read per block
    tile = PREDICT["tile_size"]
    assert max(r[1] for r in counting.reads) <= 32 + 2 * tile  # block + halo, never the slice
    assert max(r[2] for r in counting.reads) <= 32 + 2 * tile


def test_fitted_normalisation_reads_a_fixed_subsample(tmp_path: Path) -> None:
    stack = write_volume(tmp_path / "volume.zarr", (40, 700, 650))
    counting = CountingVolume(stack)
    fitted = fit_volume_normalization(counting, 1.0, 99.0)
    whole = fit_normalization(stack, 1.0, 99.0)
    assert fitted.low == pytest.approx(whole.low, abs=2) and fitted.high == pytest.approx(
        whole.high, abs=2
    )
    assert sum(np.prod(r) for r in counting.reads) <= 16 * 4 * 4 * 256 * 256
    assert fit_volume_normalization(counting, 1.0, 99.0) == fitted  # the same sample every time


def test_a_model_file_without_normalisation_is_named(tmp_path: Path) -> None:
    path = write_model(tmp_path / "old.pt", "same")
    state = torch.load(path, weights_only=True)
    del state["normalization"]
    torch.save(state, path)
    write_volume(tmp_path / "volume.zarr")
    with pytest.raises(InputError, match=r"old\.pt: the model file holds no gray-value normal"):
        make_plan("test", settings_for(tmp_path / "volume.zarr", [path]), PREDICT, tmp_path / "o")
    fitted = settings_for(tmp_path / "volume.zarr", [path], normalization="fit")
    assert make_plan("test", fitted, PREDICT, tmp_path / "o")["members"][0]["normalization"]


def test_a_store_that_holds_another_volume_is_refused(tmp_path: Path) -> None:
    model = write_model(tmp_path / "model.pt", "same")
    write_volume(tmp_path / "a.zarr")
    write_volume(tmp_path / "b.zarr", (3, 60, 60))
    store = tmp_path / "out.ome.zarr"
    make_plan("test", settings_for(tmp_path / "a.zarr", [model]), PREDICT, store)
    make_plan("test", settings_for(tmp_path / "a.zarr", [model], blocks_per_job=2), PREDICT, store)
    with pytest.raises(InputError, match=r"out\.ome\.zarr: already holds a different volume"):
        make_plan("test", settings_for(tmp_path / "b.zarr", [model]), PREDICT, store)
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    with pytest.raises(InputError, match=r"foreign\.zarr: already holds a different volume"):
        make_plan("test", settings_for(tmp_path / "a.zarr", [model]), PREDICT, foreign)


def test_a_model_scaling_that_misses_the_volume_is_refused(tmp_path: Path) -> None:
    """A 16-bit volume with a model of 8-bit slices (20-230 -> 0-1) would predict a flat map."""
    model = write_model(tmp_path / "model.pt", "same")
    stack = random_stack((3, 60, 60)).astype(np.uint16) * 200 + 1000
    write_zarr(tmp_path / "volume.zarr", stack)
    settings = settings_for(tmp_path / "volume.zarr", [model])
    message = r"apply\.volumes\.test\.normalization: model\.pt scales gray values 20-230 to 0-1"
    with pytest.raises(InputError, match=message) as refused:
        make_plan("test", settings, PREDICT, tmp_path / "out.ome.zarr")
    assert "uint16" in str(refused.value) and "set normalization: fit" in str(refused.value)
    assert not (tmp_path / "out.ome.zarr").exists()
    fitted = settings | {"normalization": "fit"}
    assert make_plan("test", fitted, PREDICT, tmp_path / "out.ome.zarr")["members"]
