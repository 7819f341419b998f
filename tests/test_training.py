"""Training loop: reproducible tiles, schedules, checkpoints, resume after a kill, divergence."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from emseg import precision as precision_module
from emseg import training
from emseg.checkpoint import load_checkpoint, save_checkpoint
from emseg.io import InputError
from emseg.models import build_model
from emseg.models.geometry import geometry_for
from emseg.precision import native_bf16_feature
from emseg.preprocess import mirror_pad
from emseg.shards import open_shards, write_shard
from emseg.synthetic import synthetic_stack
from emseg.tiling import TileOptions, predict_slice
from emseg.training import (
    TileSampler,
    TrainingDiverged,
    TrainSettings,
    ValidationSet,
    learning_rate_factor,
    select_device,
    train,
    validate,
)
from emseg.weightmap import unet_weight_map
from precision_helpers import assert_bf16_agrees

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"
SIZE = 32  # slice side of the synthetic shards
# Dropout and batch norm make a bit-exact resume depend on the restored RNG and running stats.
VALID_UNET = {
    "arch": "unet",
    "padding": "valid",
    "base_channels": 4,
    "depth": 2,
    "norm": "batch",
    "dropout": 0.3,
}
SAME_UNET = {**VALID_UNET, "padding": "same"}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _train_config(**overrides: Any) -> dict[str, Any]:
    config = {
        "seed": 3,
        "device": "cpu",
        "precision": "auto",
        "loss": "auto",
        "optimizer": "adam",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "schedule": "cosine",
        "batch_size": 2,
        "tile_size": 48,  # valid depth-2 U-Net: 48 -> 8 px output
        "iterations": 6,
        "val_every": 3,
        "checkpoint_every": 4,
    }
    return config | overrides


def _write_shards(folder: Path, samples: list[np.ndarray]) -> tuple[list[Path], list[Path]]:
    """One shard per (samples, 3, H, W) array, with its sidecar, as the augment rule writes them."""
    paths, records = [], []
    for index, array in enumerate(samples):
        path, record = folder / f"slice{index}.npy", folder / f"slice{index}.json"
        write_shard(path, array, {"slice": index, "seed": index}, record)
        paths.append(path)
        records.append(record)
    return paths, records


def _synthetic_data(
    folder: Path, model: dict[str, Any], nan_images: bool = False
) -> tuple[list[Path], list[Path], ValidationSet]:
    """Two training shards of two samples each and one held-out slice, padded for `model`."""
    images, labels = synthetic_stack(5, SIZE, SIZE, seed=7, cell_size=16.0)
    gray = images.astype(np.float32) / 255.0
    if nan_images:
        gray[:4] = np.nan
    samples = [
        np.stack([np.stack([gray[z], labels[z], unet_weight_map(labels[z])]) for z in pair])
        for pair in ((0, 1), (2, 3))
    ]
    paths, records = _write_shards(folder, samples)
    margin = geometry_for(model).margin
    validation = ValidationSet(padded_images=mirror_pad(gray[4:], margin), labels=labels[4:])
    return paths, records, validation


def _settings(
    model: dict[str, Any], config: dict[str, Any], folder: Path, config_hash: str = "hash-a"
) -> TrainSettings:
    return TrainSettings(model=model, train=config, config_hash=config_hash, checkpoint_dir=folder)


def _assert_same_weights(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def _without_time(log: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in log]


# --- TileSampler ---------------------------------------------------------------------------------


def _coordinate_shards(folder: Path, size: int = 16) -> list[np.ndarray]:
    """Shards whose image is each pixel's flat index, label its (y + x) parity, weight its sample.

    Every crop then says where it came from, so the crop geometry can be checked pixel by pixel.
    """
    yy, xx = np.mgrid[:size, :size]
    samples = [
        np.stack(
            [
                np.stack([yy * size + xx, (yy + xx) % 2, np.full((size, size), 2 * shard + k)])
                for k in range(2)
            ]
        ).astype(np.float32)
        for shard in range(2)
    ]
    return open_shards(*_write_shards(folder, samples))


@pytest.mark.parametrize(("model", "tile"), [(VALID_UNET, 48), (SAME_UNET, 8)])
def test_sampler_crops_match_their_source(tmp_path: Path, model: dict[str, Any], tile: int) -> None:
    size = 16
    shards = _coordinate_shards(tmp_path, size)
    geometry = geometry_for(model)
    margin, out = geometry.margin, geometry.output_size(tile)
    sampler = TileSampler(shards, geometry, tile, batch_size=2, seed=11)
    index = (np.arange(size)[:, None] * size + np.arange(size)).astype(np.float32)
    padded = mirror_pad(index, margin)
    parity = np.add.outer(np.arange(size), np.arange(size)) % 2
    corners, sample_ids = set(), set()
    for step in range(60):
        batch = sampler.batch(step)
        assert batch.images.shape == (2, 1, tile, tile) and batch.images.dtype == np.float32
        assert batch.labels.shape == (2, out, out) and batch.labels.dtype == np.int64
        assert batch.weights.shape == (2, out, out) and batch.weights.dtype == np.float32
        assert set(np.unique(batch.labels)) <= {0, 1}
        for image, label, weight in zip(
            batch.images[:, 0], batch.labels, batch.weights, strict=True
        ):
            y, x = divmod(int(image[margin, margin]), size)
            np.testing.assert_array_equal(image, padded[y : y + tile, x : x + tile])
            np.testing.assert_array_equal(
                image[margin : margin + out, margin : margin + out], index[y : y + out, x : x + out]
            )
            np.testing.assert_array_equal(label, parity[y : y + out, x : x + out])
            assert np.unique(weight).size == 1
            corners.add((y, x))
            sample_ids.add(int(weight[0, 0]))
    assert sample_ids == {0, 1, 2, 3}  # every sample of every shard is drawn
    ys, xs = zip(*corners, strict=True)
    assert (min(ys), max(ys), min(xs), max(xs)) == (0, size - out, 0, size - out)


def test_sampler_batch_is_a_pure_function_of_seed_and_step(tmp_path: Path) -> None:
    paths, records, _ = _synthetic_data(tmp_path, VALID_UNET)
    shards = open_shards(paths, records)
    geometry = geometry_for(VALID_UNET)
    sampler = TileSampler(shards, geometry, 48, batch_size=3, seed=5)
    again = TileSampler(open_shards(paths, records), geometry, 48, batch_size=3, seed=5)
    other_seed = TileSampler(shards, geometry, 48, batch_size=3, seed=6)
    first = sampler.batch(4)
    sampler.batch(9)  # other draws in between leave no hidden state behind
    for repeat in (sampler.batch(4), again.batch(4)):
        np.testing.assert_array_equal(repeat.images, first.images)
        np.testing.assert_array_equal(repeat.labels, first.labels)
        np.testing.assert_array_equal(repeat.weights, first.weights)
    assert not np.array_equal(sampler.batch(5).images, first.images)
    assert not np.array_equal(other_seed.batch(4).images, first.images)


@pytest.mark.parametrize(
    ("model", "tile", "message"),
    [
        (SAME_UNET, 64, "more than the 32x32 slices"),  # padded: output = tile = 64 px
        (VALID_UNET, 80, "more than the 32x32 slices"),  # valid: output 40 px
        (VALID_UNET, 50, "not a valid input size"),  # 50 % 4 != 0
    ],
)
def test_sampler_rejects_unusable_tiles(
    tmp_path: Path, model: dict[str, Any], tile: int, message: str
) -> None:
    paths, records, _ = _synthetic_data(tmp_path, model)
    with pytest.raises(ValueError, match=rf"train\.tile_size.*{message}"):
        TileSampler(open_shards(paths, records), geometry_for(model), tile, batch_size=1, seed=0)


# --- schedules and devices -----------------------------------------------------------------------


def test_constant_schedule() -> None:
    factor = learning_rate_factor("constant", 100)
    assert [factor(s) for s in (0, 50, 100)] == [1.0, 1.0, 1.0]


def test_cosine_schedule_decays_to_one_percent() -> None:
    factor = learning_rate_factor("cosine", 200)
    assert factor(0) == pytest.approx(1.0)
    assert factor(100) == pytest.approx(0.01 + 0.99 * 0.5)  # cos(pi/2) = 0
    assert factor(50) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert factor(200) == pytest.approx(0.01)
    values = [factor(s) for s in range(201)]
    assert all(a > b for a, b in itertools.pairwise(values))


def test_step_schedule_drops_tenfold_at_60_and_85_percent() -> None:
    factor = learning_rate_factor("step", 100)
    assert [factor(s) for s in (0, 59, 60, 84, 85, 100)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )


def test_unknown_schedule_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"train\.schedule"):
        learning_rate_factor("linear", 10)


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="an accelerator is present",
)
def test_auto_device_is_cpu_without_accelerator() -> None:
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"train\.device"):
        select_device("cuda")


# --- training end to end -------------------------------------------------------------------------


def test_train_logs_every_step_and_checkpoints(tmp_path: Path, emseg_log: Any) -> None:
    paths, records, validation = _synthetic_data(tmp_path / "cache", VALID_UNET)
    config = _train_config()
    settings = _settings(VALID_UNET, config, tmp_path / "checkpoints")
    model, log, summary = train(settings, open_shards(paths, records), validation, threads=1)

    assert [row["step"] for row in log] == list(range(1, 7))
    val_keys = {"val_loss", "val_pixel_accuracy", "val_dice"}
    for row in log:
        assert val_keys <= row.keys() if row["step"] in (3, 6) else not val_keys & row.keys()
        assert math.isfinite(row["train_loss"])
        factor = learning_rate_factor("cosine", 6)(row["step"] - 1)  # lr used for that step
        assert row["lr"] == pytest.approx(config["lr"] * factor)
    val_rows = [row for row in log if "val_dice" in row]
    assert all(
        0 <= row["val_dice"] <= 1 and 0 <= row["val_pixel_accuracy"] <= 1 for row in val_rows
    )
    assert summary["iterations"] == 6 and summary["device"] == "cpu"
    assert summary["config_hash"] == "hash-a"
    assert summary["best_val_dice"] == max(row["val_dice"] for row in val_rows)
    assert summary["final"] == {key: log[-1][key] for key in val_keys}

    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert last["step"] == 6 and last["config_hash"] == "hash-a"
    _assert_same_weights(last["model"], model.state_dict())
    assert last["log"] == log
    best_row = next(row for row in val_rows if row["val_dice"] == summary["best_val_dice"])
    assert best["step"] == best_row["step"] and best["log"][-1] == best_row

    # A finished run resumes at its end: nothing more is trained and the log comes back unchanged.
    again, log_again, _ = train(settings, open_shards(paths, records), validation, threads=1)
    assert "resuming from" in emseg_log.text and "at step 6 of 6" in emseg_log.text
    assert log_again == log
    _assert_same_weights(again.state_dict(), model.state_dict())


def test_checkpoint_of_another_config_is_not_resumed(tmp_path: Path, emseg_log: Any) -> None:
    paths, records, validation = _synthetic_data(tmp_path / "cache", SAME_UNET)
    config = _train_config(tile_size=16, iterations=4, val_every=2, checkpoint_every=2)
    reference, _, _ = train(
        _settings(SAME_UNET, config, tmp_path / "reference"),
        open_shards(paths, records),
        validation,
        threads=1,
    )
    shared = tmp_path / "shared"
    train(
        _settings(SAME_UNET, config | {"lr": 0.1}, shared, "hash-old"),
        open_shards(paths, records),
        validation,
        threads=1,
    )
    emseg_log.clear()
    model, log, _ = train(
        _settings(SAME_UNET, config, shared, "hash-a"), open_shards(paths, records), validation, 1
    )
    assert "belongs to another config; starting over" in emseg_log.text
    assert "resuming" not in emseg_log.text
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    _assert_same_weights(model.state_dict(), reference.state_dict())  # trained from step 0
    assert load_checkpoint(shared / "last.pt")["config_hash"] == "hash-a"


def test_nan_loss_raises_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    good_paths, good_records, validation = _synthetic_data(tmp_path / "good", SAME_UNET)
    bad_paths, bad_records, _ = _synthetic_data(tmp_path / "bad", SAME_UNET, nan_images=True)
    checkpoints = tmp_path / "checkpoints"
    config = _train_config(tile_size=16, iterations=2, val_every=2, checkpoint_every=2)
    train(
        _settings(SAME_UNET, config, checkpoints),
        open_shards(good_paths, good_records),
        validation,
        1,
    )
    last = checkpoints / "last.pt"
    before = last.read_bytes()

    # Same run, continued for longer on data that has gone bad: it resumes at step 2, fails at 3.
    longer = _settings(SAME_UNET, config | {"iterations": 4}, checkpoints)
    with pytest.raises(
        TrainingDiverged, match=r"at step 3.*last good checkpoint .*last\.pt is kept"
    ):
        train(longer, open_shards(bad_paths, bad_records), validation, threads=1)
    assert last.read_bytes() == before


def test_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path: Path) -> None:
    paths, records, validation = _synthetic_data(tmp_path / "bad", SAME_UNET, nan_images=True)
    settings = _settings(SAME_UNET, _train_config(tile_size=16), tmp_path / "checkpoints")
    with pytest.raises(TrainingDiverged, match=r"at step 1; no checkpoint had been written yet"):
        train(settings, open_shards(paths, records), validation, threads=1)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


# --- damaged inputs ------------------------------------------------------------------------------


def test_corrupted_shard_is_refused(tmp_path: Path) -> None:
    paths, records, _ = _synthetic_data(tmp_path, VALID_UNET)
    open_shards(paths, records)  # intact: accepted
    data = bytearray(paths[1].read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
    paths[1].write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"{paths[1]}.*corrupted.*rebuild"):
        open_shards(paths, records)


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(1000.0)}, "step": 3})
    assert load_checkpoint(path)["step"] == 3
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"{path}: cannot load checkpoint"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this calls os.mkdir: a stand-in for code smuggled into a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pt", tmp_path / "payload-ran"
    torch.save({"model": {}, "step": 1, "extra": _Payload(marker)}, path)
    with pytest.raises(InputError, match=rf"{path}: cannot load checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.is_dir()


# --- resume after a real kill --------------------------------------------------------------------

TRAIN_SCRIPT = """\
import json
import sys
from pathlib import Path

sys.path.insert(0, {scripts!r})
import numpy as np
import torch

from emseg.runner import setup_logging
from emseg.shards import open_shards
from emseg.training import TrainSettings, ValidationSet, train

job = json.loads(Path(sys.argv[1]).read_text())
setup_logging(None)
torch.set_num_threads(1)
shards = open_shards([Path(p) for p in job["shards"]], [Path(p) for p in job["records"]])
validation = np.load(job["validation"])
train(
    TrainSettings(job["model"], job["train"], job["hash"], Path(job["checkpoints"])),
    shards,
    ValidationSet(padded_images=validation["images"], labels=validation["labels"]),
    threads=1,
)
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16 is emulated where not native
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path, precision: str) -> None:
    paths, records, validation = _synthetic_data(tmp_path / "cache", VALID_UNET)
    np.savez(tmp_path / "validation.npz", images=validation.padded_images, labels=validation.labels)
    iterations = 80
    config = _train_config(
        iterations=iterations, val_every=10, checkpoint_every=5, precision=precision
    )
    checkpoints = tmp_path / "killed"
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "shards": [str(p) for p in paths],
                "records": [str(p) for p in records],
                "validation": str(tmp_path / "validation.npz"),
                "model": VALID_UNET,
                "train": config,
                "hash": "hash-a",
                "checkpoints": str(checkpoints),
            }
        )
    )
    script = tmp_path / "train_job.py"
    script.write_text(TRAIN_SCRIPT.format(scripts=str(SCRIPTS)))
    command = [sys.executable, str(script), str(job)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    last = checkpoints / "last.pt"

    with open(tmp_path / "first.log", "w") as first_log:
        process = subprocess.Popen(command, stdout=first_log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    killed_at = load_checkpoint(last)["step"]
    assert 1 <= killed_at < iterations and killed_at % 5 == 0

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {last} at step {killed_at} of {iterations}" in resumed.stderr
    final = load_checkpoint(last)
    assert final["step"] == iterations

    model, log, _ = train(
        _settings(VALID_UNET, config, tmp_path / "uninterrupted"),
        open_shards(paths, records),
        validation,
        threads=1,
    )
    _assert_same_weights(final["model"], model.state_dict())
    assert _without_time(final["log"]) == _without_time(log)


# --- precision and memory format -----------------------------------------------------------------

NATIVE_BF16 = native_bf16_feature()


def _conv_dtypes(monkeypatch: pytest.MonkeyPatch) -> set[tuple[torch.dtype, bool]]:
    """(dtype, channels-last) of the first convolution's output in every forward of train()."""
    seen: set[tuple[torch.dtype, bool]] = set()

    def build(spec: dict[str, Any]) -> torch.nn.Module:
        model = build_model(spec)
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_hook(
            lambda _m, _i, out: seen.add(
                (out.dtype, out.is_contiguous(memory_format=torch.channels_last))
            )
        )
        return model

    monkeypatch.setattr(training, "build_model", build)
    return seen


@pytest.mark.parametrize(
    "native",
    [
        pytest.param(True, marks=pytest.mark.skipif(not NATIVE_BF16, reason="no native bf16")),
        pytest.param(False, marks=pytest.mark.skipif(bool(NATIVE_BF16), reason="native bf16")),
    ],
)
def test_auto_precision_follows_the_cpu_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emseg_log: Any, native: bool
) -> None:
    """On this CPU, as detected: bf16 autocast where it is native, fp32 elsewhere; channels-last."""
    seen = _conv_dtypes(monkeypatch)
    paths, records, validation = _synthetic_data(tmp_path / "cache", SAME_UNET)
    config = _train_config(tile_size=16, iterations=2, val_every=2, checkpoint_every=2)
    _, _, summary = train(
        _settings(SAME_UNET, config, tmp_path / "ck"), open_shards(paths, records), validation, 1
    )
    expected = torch.bfloat16 if native else torch.float32
    assert seen == {(expected, True)}  # training steps and validation alike
    assert summary["precision"] == ("bf16" if native else "fp32")
    assert summary["channels_last"] is True
    reason = summary["precision_reason"]
    assert reason.startswith("auto: ")
    assert (f"natively ({NATIVE_BF16})" if native else "no native bf16") in reason
    assert reason in emseg_log.text


def test_auto_picks_bf16_where_the_cpu_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision itself, on any CPU: a CPU that reports AMX-BF16 trains in bf16 autocast."""
    monkeypatch.setattr(precision_module, "native_bf16_feature", lambda: "amx_bf16")
    seen = _conv_dtypes(monkeypatch)
    paths, records, validation = _synthetic_data(tmp_path / "cache", SAME_UNET)
    config = _train_config(tile_size=16, iterations=2, val_every=2, checkpoint_every=2)
    _, _, summary = train(
        _settings(SAME_UNET, config, tmp_path / "ck"), open_shards(paths, records), validation, 1
    )
    assert seen == {(torch.bfloat16, True)}
    assert summary["precision"] == "bf16"
    assert summary["precision_reason"] == "auto: this CPU computes bf16 natively (amx_bf16)"


@pytest.mark.parametrize(("model", "tile"), [(VALID_UNET, 48), (SAME_UNET, 16)])
def test_bf16_and_channels_last_agree_with_fp32(
    tmp_path: Path, model: dict[str, Any], tile: int
) -> None:
    """Prediction and validation of one trained model in fp32 and in bf16, both layouts."""
    paths, records, validation = _synthetic_data(tmp_path / "cache", model)
    config = _train_config(tile_size=tile, iterations=40, val_every=40, checkpoint_every=40)
    config["precision"] = "fp32"
    net, _, _ = train(
        _settings(model, config, tmp_path / "ck"), open_shards(paths, records), validation, 1
    )
    net = net.to(memory_format=torch.contiguous_format)
    padded = validation.padded_images[0]

    def run(autocast: torch.dtype | None, channels_last: bool) -> tuple[np.ndarray, dict]:
        options = TileOptions(tile, 2, autocast=autocast, channels_last=channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        net.to(memory_format=layout)
        return predict_slice(net, padded, options, CPU), validate(net, validation, options, CPU)

    reference, scores = run(None, False)
    assert reference.std() > 0.05  # trained: not a constant map, so agreement means something
    fp32_cl, scores_cl = run(None, True)
    np.testing.assert_allclose(fp32_cl, reference, atol=1e-5)
    assert scores_cl == pytest.approx(scores, abs=1e-5)
    for channels_last in (False, True):
        bf16, scores_bf16 = run(torch.bfloat16, channels_last)
        assert_bf16_agrees(bf16, reference)
        assert scores_bf16["val_dice"] == pytest.approx(scores["val_dice"], abs=0.01)
        assert scores_bf16["val_loss"] == pytest.approx(scores["val_loss"], rel=0.02)
