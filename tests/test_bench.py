"""The benchmark harness: a quick run prints every table, and its counts agree with references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from emseg.blockwise import Member
from emseg.metrics import rand_info_scores
from emseg.models import build_model
from emseg.precision import native_bf16_feature
from emseg.preprocess import Normalization
from emseg.segment_settings import SegmentSettings
from emseg.tiling import TileOptions

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.apply_speed import _halo  # noqa: E402
from bench.metric_speed import (  # noqa: E402
    emseg_scores,
    segmentations,
    skimage_scores,
    skimage_table_rand,
)
from bench.precision_speed import (  # noqa: E402
    EMULATED_BF16_REPEATS,
    VARIANTS,
    _measure_by_precision,
)
from bench.predict_scale_quality import predict_at_scale  # noqa: E402
from bench.segmentation_zcontext import (  # noqa: E402
    merge_by_neighbours,
    segment_with_neighbours,
    watershed_floods,
)
from bench.torch_em_peer import import_predict_with_halo, run_predict_with_halo  # noqa: E402
from bench.train_speed import conv_flops  # noqa: E402

TITLES = [
    "### Machine",
    "### Device peak: measured dense matmul",
    "### Training throughput",
    "### Prediction throughput",
    "### Tiling overhead and MONAI sliding_window_inference",
    "### CPU matmul rates by precision",
    "### Training step by precision and memory format",
    "### Training step with torch.compile",
    "### Prediction by precision and memory format",
    "### Paper recipe: the loss along the gradient at initialisation",
    "### Paper recipe: 5 SGD steps at 4 channels",
    "### Augmentation of one",
    "### V_rand and V_info of one",
    "### V_rand / V_info agreement with scikit-image",
    "### Segmentation of one slice",
    "### Workflow overhead",
    "### Time to quality",
    "### Block-wise application throughput",
    "### Block-wise outputs against whole-slice predict_slice",
    "### Peak memory of one apply_blocks job",
    "### Planning (snakemake -n apply",
]


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--json", str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,  # every quick benchmark, on a loaded 2-core machine
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
        "precision",
        "recipe",
        "augmentation",
        "metrics",
        "segmentation",
        "workflow",
        "quality",
        "apply",
    }
    for name, bench in record["benchmarks"].items():
        assert bench["tables"] and all(table["rows"] for table in bench["tables"]), name
    agreement = record["benchmarks"]["apply"]["tables"][1]["rows"]
    emseg = [row for row in agreement if row["output"].startswith("emseg")]
    assert len(emseg) == 2 and all(row["max diff (uint8 levels)"] <= 1 for row in emseg)
    segmentation = record["benchmarks"]["segmentation"]["tables"][0]["rows"]
    assert [row["same labels"] for row in segmentation if row["implementation"] == "emseg"] == [
        True
    ]
    if not torch.cuda.is_available():
        assert "not measured: no GPU" in result.stdout


@pytest.mark.slow
def test_time_to_quality_runs_the_workflow_and_reads_its_scores(tmp_path: Path) -> None:
    _, record = run_bench(tmp_path, "--quick", "--only", "quality", "--time-to-quality")
    (table,) = record["benchmarks"]["quality"]["tables"]
    (row,) = table["rows"]
    assert 0.0 <= row["V_rand"] <= 1.0 and 0.0 <= row["V_info"] <= 1.0
    assert row["iterations"] == 6 and row["wall s"] > row["train s"] > 0


def test_emulated_bf16_variants_get_fewer_runs_than_fp32() -> None:
    """Without native bf16 the bench times bf16 a couple of times, fp32 at full count."""
    calls: dict[tuple[str, bool], int] = {}

    def count(key: tuple[str, bool]) -> Callable[[], None]:
        return lambda: calls.__setitem__(key, calls.get(key, 0) + 1)

    timings = _measure_by_precision({key: count(key) for key in VARIANTS}, 6, 1, "test")
    bf16_runs = 6 if native_bf16_feature() else EMULATED_BF16_REPEATS
    for key in VARIANTS:
        expected = 6 if key[0] == "fp32" else bf16_runs
        assert len(timings[key].runs) == expected and calls[key] == expected + 1, key


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


TINY_SAME = {"arch": "unet", "padding": "same", "base_channels": 3, "depth": 2, "norm": "batch"}


def _member(tile: int) -> Member:
    torch.manual_seed(0)
    model = build_model(TINY_SAME).eval()
    return Member(model, Normalization(10.0, 240.0, 1.0, 99.0), TileOptions(tile, 2, 0.25))


def test_torch_em_peer_predicts_each_block_plus_halo_in_one_pass() -> None:
    predict_with_halo, note = import_predict_with_halo()
    if predict_with_halo is None:
        pytest.skip(note)
    torch.set_num_threads(1)
    member = _member(32)
    volume = np.random.default_rng(1).integers(0, 256, (3, 64, 96), dtype=np.uint8)
    output = np.zeros(volume.shape, np.uint8)
    block, halo = (1, 32, 48), 16
    run_predict_with_halo(
        predict_with_halo, volume, output, member, block, (0, halo, halo), range(1, 3), CPU
    )
    assert not output[0].any()  # outside the slices asked for
    for z in (1, 2):
        padded = np.pad(member.normalization.apply(volume[z]), halo, mode="reflect")
        for y in (0, 32):
            for x in (0, 48):
                window = padded[y : y + 32 + 2 * halo, x : x + 48 + 2 * halo]
                with torch.no_grad():
                    logits = member.model(torch.from_numpy(window)[None, None])
                prob = torch.softmax(logits, dim=1)[0, 1, halo:-halo, halo:-halo].numpy()
                got = output[z, y : y + 32, x : x + 48].astype(int)
                assert np.abs(got - np.rint(prob * 255)).max() <= 1
    standin = sys.modules.get("torchvision")  # the stand-in (no file) is gone after the import
    assert standin is None or getattr(standin, "__file__", None)


def test_halo_is_the_context_emseg_reads_beyond_a_block() -> None:
    member = _member(512)
    # tiles of 512 every 384 px: a block edge at 1024 is straddled by the tile at 768 (or 1152)
    assert _halo(member, (1, 2048, 2048), (1, 1024, 1024)) == 256
    assert _halo(member, (1, 2048, 2048), (1, 2048, 2048)) == 0  # the whole slice: no neighbours


def test_predict_at_scale_maps_back_to_the_slice_and_is_the_plain_prediction_at_scale_1() -> None:
    model = build_model(TINY_SAME).eval()
    image = np.random.default_rng(3).random((40, 52)).astype(np.float32)
    options = TileOptions(tile_size=32, batch_size=2)
    plain = predict_at_scale(model, image, 1.0, options)
    magnified = predict_at_scale(model, image, 1.5, options)
    assert magnified.shape == plain.shape == image.shape
    assert np.all((magnified >= 0) & (magnified <= 1))
    assert not np.array_equal(magnified, plain)


def _split_square(wall: float) -> tuple[np.ndarray, np.ndarray]:
    """Cells 1 | 2 of a 12 x 12 slice, and a map with a 4 px wall of `wall` between them."""
    cells = np.ones((12, 12), np.int64)
    cells[:, 6:] = 2
    prob = np.full((12, 12), 0.05)
    prob[:, 4:8] = wall
    return cells, prob


def test_neighbour_slices_merge_a_faint_wall_but_never_a_sure_membrane() -> None:
    faint_cells, faint = _split_square(0.85)
    one_cell = np.ones_like(faint_cells)
    merged, merges = merge_by_neighbours(faint_cells, faint, [one_cell], 0.5, edge_max=0.9)
    assert merges == 1 and len(np.unique(merged)) == 1
    kept, merges = merge_by_neighbours(faint_cells, faint, [one_cell], 0.5, edge_max=0.8)
    assert merges == 0 and np.array_equal(kept == kept[0, 0], faint_cells == 1)
    # a neighbour that keeps the two apart, or covers one of them too little, merges nothing
    _, merges = merge_by_neighbours(faint_cells, faint, [faint_cells], 0.5, edge_max=0.9)
    assert merges == 0
    partial = np.where(faint_cells == 2, np.arange(12)[None, :] % 2 + 1, 1)
    _, merges = merge_by_neighbours(faint_cells, faint, [partial], 0.6, edge_max=0.9)
    assert merges == 0


def test_neighbour_slices_join_the_middle_slice_cut_by_a_wall_they_lack() -> None:
    background = np.full((48, 48), 0.02)
    background[[0, -1], :] = background[:, [0, -1]] = 0.99
    middle = background.copy()
    middle[:, 22:26] = 0.85  # a faint wall that only the middle slice draws
    prob = np.stack([background, middle, background])
    settings = SegmentSettings(sigma=2.0, seed_threshold=0.4, min_size=10)
    floods = watershed_floods(prob, settings)
    plain, _ = segment_with_neighbours(prob, floods, None, 1.0)
    assert [len(np.unique(s[s > 0])) for s in plain] == [1, 2, 1]
    joined, merges = segment_with_neighbours(prob, floods, 0.5, 0.9)
    assert merges == 1 and [len(np.unique(s[s > 0])) for s in joined] == [1, 1, 1]
    assert len(np.unique(joined[joined > 0])) == 3  # ids unique over the stack
