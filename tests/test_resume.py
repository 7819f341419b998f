"""Killed jobs: the workflow run again resumes training and trusts no half-written output."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import tifffile
import torch

from emseg.checkpoint import load_checkpoint
from emseg.shards import open_shards
from workflow_helpers import snakemake, start_snakemake, write_config

RUN = Path("results/runs/tiny/fold0/seed0")
LONGER = {
    "model": {"dropout": 0.2},
    "train": {"iterations": 60, "checkpoint_every": 4, "val_every": 30},
}


def _kill_when(process: subprocess.Popen[str], path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "the run ended before the moment to kill it"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_killed_training_resumes_and_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for folder in (reference, killed):
        folder.mkdir()
    model = str(RUN / "model.pt")

    done = snakemake(reference, model, "--cores", "1", config=write_config(reference, LONGER))
    assert done.returncode == 0, done.stderr[-3000:]

    config = write_config(killed, LONGER)
    _kill_when(start_snakemake(killed, config, model), killed / RUN / "checkpoints" / "last.pt")
    step = load_checkpoint(killed / RUN / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 60
    assert not (killed / RUN / "model.pt").exists()

    assert snakemake(killed, "--unlock", config=config).returncode == 0  # a kill leaves the lock
    again = snakemake(killed, model, "--cores", "1", "--rerun-incomplete", config=config)
    assert again.returncode == 0, again.stderr[-3000:]
    log = (killed / "results/logs/train_tiny_fold0_seed0.log").read_text()
    assert "resuming from" in log and "at step" in log

    expected = load_checkpoint(reference / RUN / "model.pt")["model"]
    resumed = load_checkpoint(killed / RUN / "model.pt")["model"]
    assert expected.keys() == resumed.keys()
    for key, tensor in expected.items():
        assert torch.equal(tensor, resumed[key]), key


def test_killed_augmentation_leaves_no_shard_that_passes_for_complete(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"augment": {"samples_per_slice": 40}})
    target = "results/augment/slice4.json"
    _kill_when(start_snakemake(tmp_path, config, target, "results/augment/slice0.json"),
               tmp_path / "results/augment/slice0.json")  # fmt: skip
    for record in (tmp_path / "results/augment").glob("*.json"):  # a record marks a whole shard
        open_shards([record.with_suffix(".npy")], [record])
    assert snakemake(tmp_path, "--unlock", config=config).returncode == 0
    again = snakemake(tmp_path, target, "results/augment/slice0.json", config=config)
    assert again.returncode == 0, again.stderr[-3000:]
    open_shards([tmp_path / "results/augment/slice4.npy"], [tmp_path / target])


def test_killed_prediction_leaves_no_stack_that_passes_for_complete(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"data": {"synthetic": {"test_slices": 40}}, "predict": {"tta": True, "batch_size": 1}},
    )
    prob = RUN / "predict" / "test_membrane_prob.tif"
    _kill_when(start_snakemake(tmp_path, config, str(prob)),
               tmp_path / "results/logs/predict_tiny_fold0_seed0_test.log")  # fmt: skip
    if (tmp_path / prob).exists():  # only a whole stack may stand under the final name
        assert tifffile.imread(tmp_path / prob).shape == (40, 72, 72)
    assert snakemake(tmp_path, "--unlock", config=config).returncode == 0
    again = snakemake(tmp_path, str(prob), config=config)
    assert again.returncode == 0, again.stderr[-3000:]
    stack = tifffile.imread(tmp_path / prob)
    assert stack.shape == (40, 72, 72) and stack.dtype == "float32"
