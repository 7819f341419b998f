"""The segment rule in a real (tiny) Snakemake run: label images, their scores, what reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emseg.io import read_stack
from workflow_helpers import jobs_planned, run_to_the_end, snakemake, write_config

GRID = {"cv": {"folds": 2, "seeds": [0], "ensemble": True}}
RUNS = Path("results/runs/tiny")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two folds of the tiny config with their ensemble, run to the end once."""
    return run_to_the_end(tmp_path_factory.mktemp("segment"), GRID)


def test_every_probability_stack_gets_a_label_image(finished: Path) -> None:
    stacks = [
        RUNS / f"fold{fold}/seed0/predict/{subset}" for fold in (0, 1) for subset in ("val", "test")
    ] + [RUNS / "ensemble_test"]
    for stem in stacks:
        prob = read_stack(finished / f"{stem}_membrane_prob.tif")
        labels = read_stack(finished / f"{stem}_segmentation.tif")
        assert labels.dtype == np.uint32 and labels.shape == prob.shape
        ids = [set(np.unique(z)) - {0} for z in labels]
        assert all(ids) and sum(map(len, ids)) == len(set().union(*ids))  # unique across slices
        assert set().union(*ids) == set(range(1, int(labels.max()) + 1))


def test_scores_of_the_label_image_are_reported(finished: Path) -> None:
    run = finished / RUNS / "fold0/seed0"
    summary = json.loads((run / "metrics/summary.json").read_text())
    assert summary["segment_method"] == "watershed"
    for key in ("seg_vrand", "seg_vinfo", "vinfo", "vinfo_at_vrand_threshold"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["vinfo"] >= summary["vinfo_at_vrand_threshold"]  # each at its own best
    per_slice = pd.read_csv(run / "metrics/per_slice.csv")
    assert {"seg_vrand_split", "seg_vinfo_merge", "vinfo_threshold"} <= set(per_slice)
    assert summary["seg_vrand"] == pytest.approx(per_slice["seg_vrand"].mean())
    report = (run / "report.html").read_text()
    assert "Scores of the segmentation" in report and "split / merge errors" in report
    page = (finished / "results/comparison.html").read_text()
    assert "V_rand, cells" in page and " ± " in page


def test_a_segment_key_reruns_segmentation_and_scores_only(finished: Path) -> None:
    config = write_config(finished, {**GRID, "segment": {"method": "threshold"}})
    planned = jobs_planned(snakemake(finished, "-n", config=config))
    assert planned.get("segment") == 4 and planned.get("segment_ensemble") == 1
    assert planned.get("score") == 2 and planned.get("report") == 2
    assert not {"train", "predict", "ensemble"} & set(planned)


def test_a_bad_segment_value_stops_before_any_job(finished: Path) -> None:
    config = write_config(finished, {**GRID, "segment": {"beta": 1.5}})
    result = snakemake(finished, "-n", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key segment.beta: 1.5 is greater than or equal to the maximum of 1" in output
