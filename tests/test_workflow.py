"""The real workflow, end to end on a tiny synthetic stack: outputs, reruns and what reruns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from workflow_helpers import jobs_planned, snakemake, write_config

RUN = Path("results/runs/tiny/fold0/seed0")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory in which the whole default target has run once."""
    folder = tmp_path_factory.mktemp("workflow")
    config = write_config(folder)
    result = snakemake(folder, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_whole_chain_writes_every_output(finished: Path) -> None:
    run = finished / RUN
    for name in ["model.pt", "train_log.csv", "learning_curve.png", "report.html"]:
        assert (run / name).stat().st_size > 0, name
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    assert 0.0 <= summary["vrand"] <= 1.0 and 0.0 <= summary["vinfo"] <= 1.0
    assert summary["n_slices"] == 2 and summary["arch"] == "unet"
    per_slice = pd.read_csv(run / "metrics" / "per_slice.csv")
    assert list(per_slice["slice"]) == [3, 4]
    assert {"pixel_error", "dice", "iou", "vrand_split", "vinfo_merge", "threshold"} <= set(
        per_slice
    )
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["step"]) == list(range(1, 7))
    assert log["val_dice"].notna().sum() == 2


def test_probability_maps_are_float32_stacks_of_the_input_size(finished: Path) -> None:
    for subset, count in [("val", 2), ("test", 2)]:
        prob = tifffile.imread(finished / RUN / "predict" / f"{subset}_membrane_prob.tif")
        assert prob.dtype == np.float32 and prob.shape == (count, 72, 72)
        assert prob.min() >= 0.0 and prob.max() <= 1.0
        mask = tifffile.imread(finished / RUN / "predict" / f"{subset}_mask.tif")
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, prob >= 0.5)


def test_canonical_dataset_and_split_are_recorded(finished: Path) -> None:
    record = json.loads((finished / "results/data/dataset.json").read_text())
    assert record["stacks"]["train_labels"]["shape"] == [5, 72, 72]
    assert record["source"]["name"] == "synthetic"
    labels = tifffile.imread(finished / "results/data/train_labels.tif")
    assert set(np.unique(labels)) == {0, 1}
    split = json.loads((finished / "results/data/split.json").read_text())
    assert split == {"folds": [{"training": [0, 1, 2], "validation": [3, 4]}]}
    assert not list((finished / "results").rglob("*.tmp")), "no temporary file is left behind"


def test_second_run_does_nothing(finished: Path) -> None:
    result = snakemake(finished, "-n", config=finished / "test_config.yaml")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_preprocessing_change_reruns_downstream_only(finished: Path) -> None:
    config = write_config(finished, {"preprocess": {"upper_percentile": 98.0}})
    planned = jobs_planned(snakemake(finished, "-n", config=config))
    assert planned.get("normalize") == 1
    assert planned.get("train") == 1 and planned.get("report") == 1
    assert "make_synthetic" not in planned and "split_slices" not in planned


def test_prediction_change_does_not_retrain(finished: Path) -> None:
    config = write_config(finished, {"predict": {"threshold": 0.6, "tta": True}})
    planned = jobs_planned(snakemake(finished, "-n", config=config))
    assert planned.get("predict") == 2 and planned.get("score") == 1 and planned.get("report") == 1
    assert "train" not in planned and "augment_slice" not in planned


def test_a_mask_threshold_predicts_nothing_again(finished: Path) -> None:
    """predict.threshold only draws the binary masks, from the stored probabilities."""
    config = write_config(finished, {"predict": {"threshold": 0.7}})
    planned = jobs_planned(snakemake(finished, "-n", config=config))
    assert planned.get("mask") == 2  # val and test
    assert not {"predict", "segment", "score", "train"} & set(planned), planned


def test_other_works_settings_rewrite_no_report(finished: Path) -> None:
    """An author for the export or a volume's setting belongs to no run's report."""
    config = write_config(
        finished, {"export": {"authors": [{"name": "Ada"}]}, "apply": {"threads": 2}}
    )
    result = snakemake(finished, "-n", config=config)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_training_change_retrains_but_keeps_the_cache(finished: Path) -> None:
    config = write_config(finished, {"train": {"lr": 0.01}})
    planned = jobs_planned(snakemake(finished, "-n", config=config))
    assert planned.get("train") == 1
    assert "augment_slice" not in planned and "normalize" not in planned


def test_a_removed_shard_is_rebuilt_alone(finished: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(finished, folder)
    (folder / "results/augment/slice1.npy").unlink()
    planned = jobs_planned(snakemake(folder, "-n", config=folder / "test_config.yaml"))
    assert planned.get("augment_slice") == 1


def test_isbi_submission_holds_cell_probability(finished: Path) -> None:
    target = RUN / "isbi2012_submission.tif"
    result = snakemake(finished, str(target), config=finished / "test_config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    submission = tifffile.imread(finished / target)
    prob = tifffile.imread(finished / RUN / "predict" / "test_membrane_prob.tif")
    assert submission.dtype == np.float32
    np.testing.assert_allclose(submission, 1.0 - prob, atol=1e-7)


def test_snakemake_report_gathers_the_run(finished: Path) -> None:
    """As the README types it: no --cores (a rule whose threads are all cores must not stop it)."""
    config = finished / "test_config.yaml"
    result = snakemake(finished, "--report", "gathered.zip", config=config, cores=None)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (finished / "gathered.zip").stat().st_size > 10_000
