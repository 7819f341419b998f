"""Several seeds of one fold share its held-out slices: their average is scored like a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emseg.io import read_stack
from emseg.metrics import label_scores
from emseg.segment_settings import SegmentSettings
from emseg.segmentation import segment_stack
from workflow_helpers import jobs_planned, run_to_the_end, snakemake, write_config

GRID = {"cv": {"folds": 1, "seeds": [0, 1], "ensemble": True}}
RUNS = Path("results/runs/tiny/fold0")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config trained with two seeds, their ensemble scored, run to the end once."""
    return run_to_the_end(tmp_path_factory.mktemp("seeds"), GRID)


def test_the_held_out_ensemble_is_the_mean_of_the_seeds(finished: Path) -> None:
    runs = finished / RUNS
    seeds = [read_stack(runs / f"seed{s}/predict/val_membrane_prob.tif") for s in (0, 1)]
    assert not np.array_equal(seeds[0], seeds[1])  # two seeds, two different networks
    ensemble = read_stack(runs / "ensemble/predict/val_membrane_prob.tif")
    np.testing.assert_allclose(ensemble, np.mean(seeds, axis=0), atol=1e-6)
    cells = read_stack(runs / "ensemble/predict/val_segmentation.tif")
    assert cells.dtype == np.uint32
    np.testing.assert_array_equal(cells, segment_stack(ensemble, SegmentSettings()))


def test_the_ensemble_is_scored_and_compared(finished: Path) -> None:
    summary = json.loads((finished / RUNS / "ensemble/metrics/summary.json").read_text())
    assert summary["ensemble_seeds"] == [0, 1] and "seed" not in summary
    cells = read_stack(finished / RUNS / "ensemble/predict/val_segmentation.tif")
    labels = read_stack(finished / "results/preprocessed/labels.tif")[summary_slices(finished)]
    assert summary["seg_vrand"] == pytest.approx(label_scores(cells, labels)["seg_vrand"].mean())
    table = pd.read_csv(finished / "results/comparison.csv")
    assert list(table["name"]) == ["tiny", "tiny", "tiny ensemble"]
    ensemble = table[table["name"] == "tiny ensemble"].iloc[0]
    assert pd.isna(ensemble["seed"]) and ensemble["vrand"] == pytest.approx(summary["vrand"])
    runs = table[table["name"] == "tiny"]
    assert ensemble["train_seconds"] == pytest.approx(runs["train_seconds"].sum())
    page = (finished / "results/comparison.html").read_text()
    assert "tiny ensemble" in page and "runs: <b>2</b>" in page and "<NA>" not in page


def summary_slices(finished: Path) -> list[int]:
    per_slice = pd.read_csv(finished / RUNS / "ensemble/metrics/per_slice.csv")
    return [int(index) for index in per_slice["slice"]]


def test_a_segment_key_rescores_the_ensemble_without_averaging_again(finished: Path) -> None:
    config = write_config(finished, {**GRID, "segment": {"method": "threshold"}})
    planned = jobs_planned(snakemake(finished, "-n", config=config))
    assert planned.get("segment_held_out_ensemble") == 1 and planned.get("score_ensemble") == 1
    assert not {"train", "predict", "ensemble_held_out"} & set(planned)


def test_one_seed_has_no_seed_ensemble(finished: Path) -> None:
    config = write_config(finished, {"cv": {"folds": 1, "seeds": [0], "ensemble": True}})
    planned = jobs_planned(snakemake(finished, "-n", "--forceall", config=config))
    assert "ensemble_held_out" not in planned and "score_ensemble" not in planned
    assert planned.get("ensemble") == 1  # the test stack's ensemble is made as before
