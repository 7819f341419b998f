"""The benchmark harness: a quick run prints every table, and its counts agree with references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from emseg.metrics import rand_info_scores
from emseg.models import build_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.metric_speed import (  # noqa: E402
    emseg_scores,
    segmentations,
    skimage_scores,
    skimage_table_rand,
)
from bench.train_speed import conv_flops  # noqa: E402

TITLES = [
    "### Machine",
    "### Device peak: measured dense matmul",
    "### Training throughput",
    "### Prediction throughput",
    "### Tiling overhead and MONAI sliding_window_inference",
    "### Augmentation of one",
    "### V_rand and V_info of one",
    "### V_rand / V_info agreement with scikit-image",
    "### Workflow overhead",
    "### Time to quality",
]


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--json", str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_quick_run_prints_every_table_and_records_the_machine(tmp_path: Path) -> None:
    result, record = run_bench(tmp_path, "--quick", "--threads", "1")
    for title in TITLES:
        assert title in result.stdout, title
    assert "FAILED" not in result.stdout
    machine = record["machine"]
    for key in ("date", "cpu_model", "logical_cores", "gpu", "torch", "numpy"):
        assert key in machine, key
    assert machine["torch"] == torch.__version__
    assert machine["logical_cores"] == os.cpu_count()
    assert set(record["benchmarks"]) == {
        "training",
        "prediction",
        "augmentation",
        "metrics",
        "workflow",
        "quality",
    }
    for name, bench in record["benchmarks"].items():
        assert bench["tables"] and all(table["rows"] for table in bench["tables"]), name
    if not torch.cuda.is_available():
        assert "not measured: no GPU" in result.stdout


@pytest.mark.slow
def test_time_to_quality_runs_the_workflow_and_reads_its_scores(tmp_path: Path) -> None:
    _, record = run_bench(tmp_path, "--quick", "--only", "quality", "--time-to-quality")
    (table,) = record["benchmarks"]["quality"]["tables"]
    (row,) = table["rows"]
    assert 0.0 <= row["V_rand"] <= 1.0 and 0.0 <= row["V_info"] <= 1.0
    assert row["iterations"] == 6 and row["wall s"] > row["train s"] > 0


@pytest.mark.parametrize(
    "spec, size",
    [
        ({"arch": "unet", "padding": "valid", "base_channels": 4, "depth": 2}, 76),
        ({"arch": "unet", "padding": "same", "base_channels": 3, "depth": 3, "norm": "batch"}, 48),
    ],
)
def test_conv_flops_equal_torch_flop_counter(spec: dict, size: int) -> None:
    torch.set_num_threads(1)
    model = build_model(spec).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    assert conv_flops(model, size, size) == counter.get_total_flops() > 0


def test_rand_and_information_scores_match_skimage_where_definitions_agree() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((2, 64, 64), np.uint8)
    for z in range(2):  # a grid of cells with walls at slightly different places per slice
        for cut in rng.choice(np.arange(4, 60), size=5, replace=False):
            labels[z, cut, :] = labels[z, :, cut] = 1
    gt, proposal = segmentations(labels)
    assert (proposal > 0).all(), "the proposal must have no boundary pixels"
    ours = emseg_scores(gt, proposal, rand_info_scores(gt, proposal))
    theirs, squared = skimage_scores(gt, proposal), skimage_table_rand(gt, proposal)
    for name in ("vrand", "vrand_split", "vrand_merge"):
        assert ours[name] == pytest.approx(squared[name], abs=1e-12)
        assert ours[name] == pytest.approx(theirs[name], abs=1e-2)
    for name in ("H(T|S) bits", "H(S|T) bits"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12)
