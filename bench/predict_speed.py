"""Whole-slice prediction: slices/s, peak memory, tiling overhead and MONAI's sliding window.

The tiling overhead compares `emseg.tiling.predict_slice` with the bare forward passes of exactly
the batches it ran (copied by a hook on the model), ready on the device: everything else (cutting
tiles, copies, softmax, blending, stitching) is overhead. Every contender runs in the precision and
memory format that `predict.precision: auto` picks on the device (emseg.precision), as the
predict rule does: bf16 autocast and channels-last on a GPU or a CPU with native bf16.
"""

from __future__ import annotations

import contextlib
import functools
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.harness import (
    NO_GPU,
    NOT_INSTALLED,
    Settings,
    Table,
    em_slices,
    log,
    measure,
    measure_many,
    package_version,
    peak_rss,
    workflow_config,
)
from emseg.models import build_model
from emseg.models.geometry import Geometry
from emseg.precision import Precision, choose_precision
from emseg.preprocess import mirror_pad
from emseg.tiling import TileOptions, predict_slice

TARGET_OVERHEAD = 0.10


@dataclass(frozen=True)
class Case:
    name: str
    spec: Mapping[str, Any]
    options: TileOptions


def _cases(settings: Settings) -> list[Case]:
    """The default and the paper model with their config's predict settings, without TTA."""
    cases = []
    for name, extra in (("default", ()), ("paper", ("config/paper.yaml",))):
        config = workflow_config(*extra)
        spec, predict = dict(config["model"]), config["predict"]
        tile = int(predict["tile_size"])
        if settings.quick:
            spec["base_channels"], tile = 4, 64 if spec["padding"] == "same" else 204
        options = TileOptions(
            tile_size=tile,
            batch_size=int(predict["batch_size"]),
            overlap=float(predict["overlap"]),
            tta=False,
        )
        cases.append(Case(f"{name} ({spec['padding']}, {spec['base_channels']} ch)", spec, options))
    return cases


def _precision(device: torch.device) -> Precision:
    """What the predict rule runs in on `device` (predict.precision: auto)."""
    return choose_precision("auto", device, "predict.precision")


def _model(case: Case, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return _precision(device).prepare(build_model(case.spec).to(device).eval())


def _slice(image: np.ndarray, size: int, margin: int) -> np.ndarray:
    """A size x size slice grown from an EM slice by mirroring, then padded by the net's margin."""
    grow = max(0, size - image.shape[0])
    grown = np.pad(image, ((0, grow), (0, grow)), mode="symmetric")[:size, :size]
    return mirror_pad(np.ascontiguousarray(grown), margin)


def _options(case: Case, device: torch.device) -> TileOptions:
    """As the predict rule does, in the precision `auto` picks on `device`."""
    o, precision = case.options, _precision(device)
    return TileOptions(
        o.tile_size, o.batch_size, o.overlap, o.tta, precision.autocast, precision.channels_last
    )


def _throughput_row(
    case: Case, device: torch.device, size: int, padded: np.ndarray, repeats: int, warmup: int
) -> dict[str, Any]:
    model, options = _model(case, device), _options(case, device)

    def once() -> np.ndarray:
        return predict_slice(model, padded, options, device)

    for _ in range(warmup):
        once()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tracemalloc.start()
    with peak_rss() as rss:
        timing = measure(once, repeats=repeats, warmup=0, device=device)
    numpy_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    cells = {
        "model": case.name,
        "device": device.type,
        "slice": f"{size} x {size}",
        "tile/batch": f"{options.tile_size}/{options.batch_size}",
        "runs": len(timing.runs),
        **timing.columns(),
        "slices/s": 1 / timing.median,
        "Mpx/s": size * size / timing.median / 1e6,
        "peak RSS MiB": rss["peak_mib"],
        "numpy peak MiB": numpy_peak,
    }
    if device.type == "cuda":
        cells["GPU peak MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
    return cells


def _batches(model: nn.Module, run: Callable[[], object]) -> list[torch.Tensor]:
    """Copies of every batch the model sees while `run` runs (recorded by a forward pre-hook)."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen


class NullNet(nn.Module):
    """No network, a real one's geometry: predict_slice's cost is then all tiling.

    The logits are a view of the cropped input (both classes equal), so the stand-in costs
    nothing itself and softmax, copies and blending still run on real-sized tensors.
    """

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.geometry = geometry
        self.unused = nn.Parameter(torch.ones(()))  # predict_slice reads the parameters' dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.geometry.margin
        return x[:, :, m : x.shape[2] - m, m : x.shape[3] - m].expand(-1, 2, -1, -1)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    return _precision(device).autocast_context(device)


def _monai_fn(
    model: nn.Module, padded: np.ndarray, options: TileOptions, device: torch.device
) -> Callable[[], np.ndarray]:
    """MONAI's Gaussian-blended sliding window with emseg's tile, overlap and batch size."""
    from monai.inferers import sliding_window_inference

    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format

    def predictor(x: torch.Tensor) -> torch.Tensor:
        logits = model(x.contiguous(memory_format=memory_format))
        return torch.softmax(logits.float(), dim=1)[:, 1:]

    def once() -> np.ndarray:
        inputs = torch.from_numpy(padded)[None, None].to(device)
        with torch.inference_mode(), _autocast(device):
            prob = sliding_window_inference(
                inputs,
                roi_size=(options.tile_size, options.tile_size),
                sw_batch_size=options.batch_size,
                predictor=predictor,
                overlap=options.overlap,
                mode="gaussian",
                sigma_scale=0.125,
                padding_mode="reflect",
            )
        return prob[0, 0].float().cpu().numpy()

    return once


def _compare_row(
    case: Case, device: torch.device, size: int, padded: np.ndarray, settings: Settings
) -> dict[str, Any]:
    """emseg vs its bare forward passes vs MONAI on the same slice, timed round-robin."""
    model, options = _model(case, device), _options(case, device)
    ours = functools.partial(predict_slice, model, padded, options, device)
    inputs = _batches(model, ours)  # also the warm-up

    def bare() -> None:
        with torch.inference_mode(), _autocast(device):
            for x in inputs:
                model(x)

    fns: dict[str, Callable[[], object]] = {"emseg": ours, "bare": bare}
    notes = []
    if not model.geometry.padded:
        notes.append("MONAI: n/a (it blends padded nets; this is the overlap-tile valid net)")
    elif package_version("monai") is None:
        notes.append(f"MONAI: {NOT_INSTALLED}")
    else:
        fns["monai"] = _monai_fn(model, padded, options, device)
        fns["monai"]()  # warm-up: MONAI builds its importance map on first use
    rounds = 1 if settings.quick else max(settings.repeats, 5)
    timings = measure_many(fns, rounds, 0, device)
    null = NullNet(model.geometry).to(device).eval()
    null_time = measure(lambda: predict_slice(null, padded, options, device), rounds, 1, device)
    ours_t, bare_t = timings["emseg"], timings["bare"]
    overhead = ours_t.min / bare_t.min - 1
    tiles = sum(len(x) for x in inputs)
    cells = {
        "model": case.name,
        "device": device.type,
        "slice": f"{size} x {size}",
        "tiles": tiles,
        "rounds": rounds,
        "emseg min/median s": f"{ours_t.min:.3g} / {ours_t.median:.3g}",
        "bare min/median s": f"{bare_t.min:.3g} / {bare_t.median:.3g}",
        "overhead % (minima)": 100 * overhead,
        "overhead % (medians)": 100 * (ours_t.median / bare_t.median - 1),
        "tiling alone ms/tile": 1e3 * null_time.min / tiles,
    }
    if overhead >= TARGET_OVERHEAD:
        notes.append("overhead above target")
    if "monai" in timings:
        monai_t = timings["monai"]
        cells |= {
            "MONAI min/median s": f"{monai_t.min:.3g} / {monai_t.median:.3g}",
            "MONAI / emseg (minima)": monai_t.min / ours_t.min,
            "max abs diff": float(np.abs(fns["monai"]() - ours()).max()),
        }
    cells["note"] = "; ".join(notes)
    return cells


THROUGHPUT = [
    "model",
    "device",
    "slice",
    "tile/batch",
    "runs",
    "min s",
    "median s",
    "max s",
    "slices/s",
    "Mpx/s",
    "peak RSS MiB",
    "numpy peak MiB",
    "GPU peak MiB",
    "note",
]
COMPARE = [
    "model",
    "device",
    "slice",
    "tiles",
    "rounds",
    "emseg min/median s",
    "bare min/median s",
    "overhead % (minima)",
    "overhead % (medians)",
    "tiling alone ms/tile",
    "MONAI min/median s",
    "MONAI / emseg (minima)",
    "max abs diff",
    "note",
]


def run(settings: Settings) -> list[Table]:
    small, large = (64, 128) if settings.quick else (512, 4096)
    compare_cpu = 128 if settings.quick else 1024
    image = em_slices(1, small)[0][0]
    throughput = Table(
        "Prediction throughput (emseg.tiling.predict_slice, untrained weights, no TTA)",
        THROUGHPUT,
        notes=[
            "Tile, batch and overlap from each config's predict section; each device in the"
            " precision and memory format `predict.precision: auto` picks there, as the predict"
            f" rule does (this CPU: {_precision(torch.device('cpu')).label}). TTA would cost 8x.",
            f"On the CPU the {large} x {large} slice uses the default (small) model only: the"
            " paper's 64-channel net would take several minutes per slice there.",
            "peak RSS = resident memory above the level before the runs (sampled every 5 ms);"
            " numpy peak = tracemalloc's peak (numpy arrays; torch's CPU tensors are not traced).",
        ],
    )
    compare = Table(
        "Tiling overhead and MONAI sliding_window_inference (same network, tile, overlap)",
        COMPARE,
        notes=[
            f"Target: tiling overhead < {100 * TARGET_OVERHEAD:.0f} % over the bare forward"
            " passes of the same batches (recorded, ready on the device); MONAI / emseg >= 1"
            " means emseg is at least as fast. MONAI: mode 'gaussian', sigma_scale 0.125, reflect"
            " padding, same batch size, precision and memory format.",
            "emseg, bare and MONAI take turns, so load from other processes hits them alike; the"
            " verdicts use the minima (the least disturbed runs): on a shared machine the medians"
            " mostly measure the neighbours."
            f" CPU on a {compare_cpu} x {compare_cpu} slice to keep the run short; GPU on"
            f" {large} x {large}.",
            "tiling alone = predict_slice with a stand-in network that only has the geometry"
            " (its logits are a view of the input; minimum over the rounds): the host-side cost"
            " per tile (cutting, copies, softmax, blending) that a fast GPU cannot hide.",
            "max abs diff: emseg floors its Gaussian at 1e-3 and places the last window flush"
            " with the border, MONAI clamps its own minimum; differences stay at window seams.",
        ],
    )
    cpu, gpu = torch.device("cpu"), settings.gpu
    for case in _cases(settings):
        margin = build_model(case.spec).geometry.margin
        paper = case.name.startswith("paper")
        for device in (cpu, gpu):
            if device is None:
                throughput.add(model=case.name, device="cuda", note=NO_GPU)
                compare.add(model=case.name, device="cuda", note=NO_GPU)
                continue
            sizes = [small] if device.type == "cpu" and paper else [small, large]
            for size in sizes:
                log(f"predicting {size}^2 with {case.name} on {device.type}")
                warmup = settings.warmup if size == small else 0
                repeats = settings.repeats if size == small else max(1, settings.repeats - 1)
                padded = _slice(image, size, margin)
                row = _throughput_row(case, device, size, padded, repeats, warmup)
                throughput.add(**row, note="")
            if device.type == "cpu" and paper:
                throughput.add(
                    model=case.name,
                    device="cpu",
                    slice=f"{large} x {large}",
                    note="not measured on CPU (too slow); see the default model",
                )
                continue
            size = compare_cpu if device.type == "cpu" else large
            log(f"comparing tiling at {size}^2 with {case.name} on {device.type}")
            compare.add_row(_compare_row(case, device, size, _slice(image, size, margin), settings))
    return [throughput, compare]
