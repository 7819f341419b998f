"""The model grid: three architectures x three contiguous folds, compared, ensembled and rerun."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from emseg.segment_settings import SegmentSettings
from emseg.segmentation import segment_stack
from workflow_helpers import jobs_planned, run_to_the_end, snakemake, write_config

GRID = {
    "cv": {"folds": 3, "seeds": [0], "ensemble": True},
    "models": {
        "unet": {},
        "fcn": {"model": {"arch": "fcn"}},
        "vnet": {
            "model": {"arch": "vnet"},
            "train": {"loss": "dice"},
            "segment": {"method": "threshold", "threshold": 0.5},  # its own cells setting
        },
    },
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_to_the_end(tmp_path_factory.mktemp("grid"), GRID)


def test_every_run_is_compared(grid: Path) -> None:
    table = pd.read_csv(grid / "results/comparison.csv")
    assert len(table) == 9
    assert sorted(set(table["name"])) == ["fcn", "unet", "vnet"]
    assert sorted(set(table["arch"])) == ["fcn", "unet", "vnet"]
    assert set(table["fold"]) == {0, 1, 2}
    assert table["vrand"].between(0, 1).all() and (table["train_seconds"] > 0).all()
    sizes = table.groupby("name")["parameters"].unique()  # one network size per model
    assert all(len(size) == 1 and size[0] > 0 for size in sizes)
    assert len({int(size[0]) for size in sizes}) == 3
    page = (grid / "results/comparison.html").read_text()
    assert "vnet" in page and "data:image/png;base64," in page and "<th>parameters</th>" in page


def test_folds_hold_out_contiguous_blocks(grid: Path) -> None:
    """Three folds over five slices: blocks of 2, 1 and 2 slices, every slice held out once."""
    for fold, block in enumerate([[0, 1], [2], [3, 4]]):
        per_slice = pd.read_csv(grid / f"results/runs/unet/fold{fold}/seed0/metrics/per_slice.csv")
        assert list(per_slice["slice"]) == block


def test_ensemble_is_the_mean_of_the_fold_models(grid: Path) -> None:
    run = grid / "results/runs/fcn"
    folds = [
        tifffile.imread(run / f"fold{k}/seed0/predict/test_membrane_prob.tif") for k in range(3)
    ]
    ensemble = tifffile.imread(run / "ensemble_test_membrane_prob.tif")
    np.testing.assert_allclose(ensemble, np.mean(folds, axis=0), atol=1e-6)


def test_removing_one_fold_model_retrains_that_job_only(grid: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(grid, folder)
    (folder / "results/runs/vnet/fold1/seed0/model.pt").unlink()
    planned = jobs_planned(snakemake(folder, "-n", config=folder / "test_config.yaml"))
    assert planned.get("train") == 1
    assert "augment_slice" not in planned and "normalize" not in planned
    assert planned.get("compare") == 1 and planned.get("ensemble") == 1


def test_a_run_segments_its_cells_with_its_own_settings(grid: Path) -> None:
    table = pd.read_csv(grid / "results/comparison.csv")
    assert dict(zip(table["name"], table["segment_method"], strict=True)) == {
        "unet": "watershed", "fcn": "watershed", "vnet": "threshold",
    }  # fmt: skip
    predicted = grid / "results/runs/vnet/fold0/seed0/predict"
    expected = segment_stack(
        tifffile.imread(predicted / "val_membrane_prob.tif"),
        SegmentSettings(method="threshold", threshold=0.5),
    )
    np.testing.assert_array_equal(tifffile.imread(predicted / "val_segmentation.tif"), expected)


def test_changing_a_runs_segment_settings_trains_and_predicts_nothing(
    grid: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(grid, folder)
    changed = copy.deepcopy(GRID)
    changed["models"]["vnet"]["segment"] = {"method": "threshold", "threshold": 0.4}
    planned = jobs_planned(snakemake(folder, "-n", config=write_config(folder, changed)))
    assert "train" not in planned and "predict" not in planned
    assert planned.get("segment") == 6  # vnet's val and test cells in each of its 3 folds
    assert planned.get("score") == 3 and planned.get("segment_ensemble") == 1
