"""Injected faults: a GPU out of memory, a full disk, a corrupted augmentation shard.

Each test causes the fault for real (a network that raises torch.OutOfMemoryError, a 300 KiB
tmpfs as the results folder, bytes flipped in a shard) and checks that the run either recovers
with the same result or stops with a message naming the file and what to do, leaving no
half-written file under a final name.
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from emseg.io import OutputError, read_stack, write_json, write_stack
from emseg.models.geometry import padded_geometry
from emseg.shards import write_shard
from emseg.tiling import TileOptions, predict_slice
from workflow_helpers import jobs_planned, snakemake, write_config

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# --- out of GPU memory in prediction ------------------------------------------------------------


class SmallNet(torch.nn.Module):
    """A padded two-layer network that runs out of memory above `max_batch` tiles at once."""

    def __init__(self, max_batch: int | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.geometry = padded_geometry(2)
        self.layers = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(4, 2, 3, padding=1),
        )
        self.max_batch = max_batch
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        if self.max_batch is not None and x.shape[0] > self.max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
        return self.layers(x)


@pytest.mark.parametrize("tta", [False, True])
def test_out_of_memory_halves_the_batch_and_gives_the_same_prediction(
    emseg_log: pytest.LogCaptureFixture, tta: bool
) -> None:
    image = np.random.default_rng(0).random((45, 70)).astype(np.float32)
    options = TileOptions(tile_size=16, batch_size=4, overlap=0.5, tta=tta)
    expected = predict_slice(SmallNet(max_batch=None), image, options, CPU)
    flaky = SmallNet(max_batch=1)
    prob = predict_slice(flaky, image, options, CPU)
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-6)
    assert flaky.batches[:3] == [4, 2, 1], "4 tiles fail, then 2, then one fits"
    assert set(flaky.batches[3:]) == {1}, "the size that fitted is kept for the whole slice"
    warnings = [r.getMessage() for r in emseg_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "retrying with batches of 2" in warnings[0] and "batch_size: 1" in warnings[1]


def test_a_single_tile_out_of_memory_names_the_keys_to_lower() -> None:
    image = np.random.default_rng(1).random((40, 40)).astype(np.float32)
    model = SmallNet(max_batch=0)
    with pytest.raises(ValueError, match=r"lower predict\.tile_size \(and predict\.batch_size\)"):
        predict_slice(model, image, TileOptions(tile_size=16, batch_size=3), CPU)
    assert model.batches == [3, 1], "3 fails, then 1: nothing smaller to try"
    assert model.training, "the model is put back into the mode it came in"


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB tmpfs (needs root to mount); skips the test where mounting is not allowed."""
    folder = tmp_path / "small disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_keeps_the_previous_file_and_names_the_output(small_disk: Path) -> None:
    final = small_disk / "stack.tif"
    small = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    write_stack(final, small)
    with pytest.raises(OutputError) as error:
        write_stack(final, np.ones((1, 400, 400), np.float32))  # 640 KB
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(final)
    assert str(error.value).startswith(f"{final}: No space left on device (ENOSPC)")
    np.testing.assert_array_equal(read_stack(final), small)
    _no_leftovers(small_disk)


@pytest.mark.parametrize("writer", ["shard", "json"])
def test_a_full_disk_stops_every_writer_with_the_file_name(small_disk: Path, writer: str) -> None:
    target = small_disk / ("slice0.npy" if writer == "shard" else "record.json")
    with pytest.raises(OutputError, match="No space left on device") as error:
        if writer == "shard":
            write_shard(target, np.ones((1, 3, 300, 300)), {}, small_disk / "slice0.json")
        else:
            write_json(target, {"values": list(range(100_000))})
    assert error.value.filename == str(target)
    assert not target.exists()
    _no_leftovers(small_disk)


def test_a_full_results_disk_stops_the_workflow_without_partial_outputs(
    tmp_path: Path, small_disk: Path
) -> None:
    results = small_disk / "results"
    synthetic = {"slices": 8, "test_slices": 0, "height": 128, "width": 128}
    config = write_config(tmp_path, {"results": str(results), "data": {"synthetic": synthetic}})
    result = snakemake(tmp_path, str(results / "preprocessed/normalization.json"), config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # 2 x 128 KiB of canonical uint8 stacks fit; the float32 normalised stack (512 KiB) does not
    final = results / "preprocessed" / "labelled_images.tif"
    assert f"{final}: No space left on device (ENOSPC)" in output, output[-3000:]
    _no_leftovers(results)
    assert not final.exists() and not (results / "preprocessed/normalization.json").exists()
    record = json.loads((results / "data/dataset.json").read_text())
    tiffs = sorted(results.rglob("*.tif"))
    assert [p.name for p in tiffs] == ["train_images.tif", "train_labels.tif"]
    for path in tiffs:  # read back whole: the stacks that are there are complete
        stack = tifffile.imread(path)
        assert list(stack.shape) == record["stacks"][path.stem]["shape"] == [8, 128, 128]


# --- a corrupted augmentation shard -------------------------------------------------------------


def test_a_corrupted_shard_names_the_file_and_how_to_rebuild_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    model = "results/runs/tiny/fold0/seed0/model.pt"
    built = snakemake(tmp_path, model, "--omit-from", "train", config=config)
    assert built.returncode == 0, built.stderr[-3000:]
    shard = tmp_path / "results/augment/slice0.npy"
    data = bytearray(shard.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])  # the shard's last samples, not its header
    shard.write_bytes(bytes(data))

    result = snakemake(tmp_path, model, "--forcerun", "train", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    message = (
        "results/augment/slice0.npy: augmentation shard is corrupted (checksum mismatch);"
        " delete it and rerun snakemake to rebuild it"
    )
    assert message in output, output[-3000:]
    assert message in (tmp_path / "results/logs/train_tiny_fold0_seed0.log").read_text()
    assert not (tmp_path / model).exists()

    shard.unlink()  # what the message says to do: only that shard and the training run again
    plan = snakemake(tmp_path, model, "--dry-run", config=config)
    assert jobs_planned(plan) == {"augment_slice": 1, "train": 1}, plan.stdout[-3000:]
