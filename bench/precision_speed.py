"""Precision and memory format on the CPU: fp32 / bf16 autocast x contiguous / channels-last.

The numbers `train.precision: auto` rests on (emseg.precision): the CPU's measured dense matmul
rate in fp32 and in bf16 (without AVX512-BF16 or AMX, bf16 is emulated), one training step
(emseg.training.StepRunner, the loop's own step, on a fixed batch) and one 512 x 512 slice of
prediction (emseg.tiling.predict_slice), each in the four combinations. The combinations take
turns, so load from other processes hits them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch._inductor.utils import fresh_cache

from bench.harness import Settings, Table, Timing, em_slices, log, measure_many, workflow_config
from bench.train_speed import matmul_rate
from emseg.losses import build_loss
from emseg.models import build_model
from emseg.precision import Precision, choose_precision, native_bf16_feature
from emseg.preprocess import mirror_pad
from emseg.tiling import TileOptions, predict_slice
from emseg.training import Batch, StepRunner, make_optimizer
from emseg.weightmap import unet_weight_map

CPU = torch.device("cpu")
VARIANTS = [(name, layout) for name in ("fp32", "bf16") for layout in (False, True)]
EMULATED_BF16_REPEATS = 2  # runs of each bf16 variant on a CPU that emulates bf16
COMPILE_MODES = ("eager", "torch.compile")


@dataclass(frozen=True)
class Case:
    """A network with its config's training tile and batch; `bf16` False: fp32 layouts only."""

    name: str
    spec: Mapping[str, Any]
    train: Mapping[str, Any]
    bf16: bool


def _cases(settings: Settings) -> list[Case]:
    default = workflow_config()
    paper = workflow_config("config/paper.yaml")
    cases = [Case("default (config.yaml)", default["model"], default["train"], True)]
    others_in_bf16 = native_bf16_feature() is not None  # emulated bf16: the default's rows only
    for name, spec, train in (
        ("paper U-Net, 16 ch", {**paper["model"], "base_channels": 16}, paper["train"]),
        ("FCN", {**default["model"], "arch": "fcn"}, default["train"]),
        ("V-Net", {**default["model"], "arch": "vnet"}, default["train"]),
    ):
        cases.append(Case(name, spec, train, others_in_bf16))
    if settings.quick:  # the two U-Nets, shrunk so a step takes milliseconds
        return [
            Case(
                c.name,
                {**c.spec, "base_channels": 4},
                {**c.train, "tile_size": 204 if c.spec["padding"] == "valid" else 64},
                c.bf16,
            )
            for c in cases[:2]
        ]
    return cases


def _precision(name: str, channels_last: bool) -> Precision:
    chosen = choose_precision(name, CPU, "bench")
    return Precision(chosen.autocast, channels_last, chosen.reason)


def _measure_by_precision(
    fns: Mapping[Any, Callable[[], object]], repeats: int, warmup: int, what: str
) -> dict[Any, Timing]:
    """Round-robin timings; emulated bf16 (~1 % of the fp32 rate) gets 2 runs after 1 warm-up.

    Keys end in (precision, channels_last). With native bf16 every variant takes turns with
    every other; without it the fp32 variants take turns among themselves at full count, so the
    bench ends in minutes instead of an hour of emulated bf16 repeats.
    """
    if native_bf16_feature() or repeats <= EMULATED_BF16_REPEATS:
        log(f"{what}: {len(fns)} variants x {repeats}, taking turns")
        return measure_many(fns, repeats, warmup)
    fp32 = {key: fn for key, fn in fns.items() if key[-2] == "fp32"}
    bf16 = {key: fn for key, fn in fns.items() if key[-2] == "bf16"}
    log(f"{what}: {len(fp32)} fp32 variants x {repeats}, taking turns")
    timings = measure_many(fp32, repeats, warmup)
    log(f"{what}: {len(bf16)} emulated bf16 variants x {EMULATED_BF16_REPEATS}, taking turns")
    return timings | measure_many(bf16, EMULATED_BF16_REPEATS, 1)


def _batch(case: Case, geometry: Any) -> Batch:
    """A fixed batch of real (or synthetic) EM tiles with their labels and weight maps."""
    tile, size = int(case.train["tile_size"]), int(case.train["batch_size"])
    out = geometry.output_size(tile)
    images, labels, _ = em_slices(size, out)
    padded = [mirror_pad(image, geometry.margin) for image in images]
    return Batch(
        images=np.stack(padded)[:, np.newaxis].astype(np.float32),
        labels=labels.astype(np.int64),
        weights=np.stack([unet_weight_map(label) for label in labels]).astype(np.float32),
    )


def _step_fn(
    case: Case, precision: Precision, batch: Batch, compiled: bool = False
) -> Callable[[], object]:
    torch.manual_seed(0)
    model = precision.prepare(build_model(case.spec))
    model.train()
    optimizer = make_optimizer(model, case.train)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = build_loss(case.train["loss"], case.spec["arch"])
    network = torch.compile(model) if compiled else model
    runner = StepRunner(network, optimizer, scaler, loss, precision, CPU)
    return lambda: runner(batch)


def _training(settings: Settings, table: Table) -> None:
    """Every network and variant in one round-robin, so their ratios share the same load."""
    warmup, repeats = (0, 1) if settings.quick else (2, max(10, settings.repeats))
    cases = _cases(settings)
    fns: dict[tuple[int, str, bool], Callable[[], object]] = {}
    batches = [_batch(case, build_model(case.spec).geometry) for case in cases]
    for index, (case, batch) in enumerate(zip(cases, batches, strict=True)):
        for name, layout in VARIANTS:
            if case.bf16 or name == "fp32":
                fns[(index, name, layout)] = _step_fn(case, _precision(name, layout), batch)
    timings = _measure_by_precision(fns, repeats, warmup, "training steps")
    auto = choose_precision("auto", CPU, "train.precision")
    for (index, name, layout), timing in timings.items():
        case, batch = cases[index], batches[index]
        table.add(
            model=case.name,
            batch=f"{len(batch.images)} x {batch.images.shape[-1]}",
            precision=name,
            layout="channels-last" if layout else "contiguous",
            steps=len(timing.runs),
            **timing.columns(),
            **{"vs fp32 contiguous": timing.median / timings[(index, "fp32", False)].median},
            auto=(auto.name, auto.channels_last) == (name, layout),
        )


def _compiled_training(settings: Settings, table: Table) -> None:
    """The default network's step as `auto` trains it, eager and under torch.compile, taking
    turns; the compiled one's first step (the compilation, from an empty inductor cache as on a
    user's first run) is timed on its own."""
    case, auto = _cases(settings)[0], choose_precision("auto", CPU, "train.precision")
    batch = _batch(case, build_model(case.spec).geometry)
    with fresh_cache():
        fns = {mode: _step_fn(case, auto, batch, mode == "torch.compile") for mode in COMPILE_MODES}
        first: dict[str, float] = {}
        for mode, fn in fns.items():
            started = time.perf_counter()
            try:
                fn()
            except Exception as error:  # inductor needs a working C++ compiler, for one
                table.add(model=case.name, mode=mode, note=f"not measured: {_first_line(error)}")
                return
            first[mode] = time.perf_counter() - started
        warmup, repeats = (0, 2) if settings.quick else (2, max(20, settings.repeats))
        log(f"training steps: eager and torch.compile x {repeats}, taking turns")
        timings = measure_many(fns, repeats, warmup)
    layout = "channels-last" if auto.channels_last else "contiguous"
    for mode, timing in timings.items():
        table.add(
            model=case.name,
            precision=f"{auto.name}, {layout}",
            mode=mode,
            **{"first step s": first[mode]},
            steps=len(timing.runs),
            **timing.columns(),
            **{"vs eager": timing.median / timings["eager"].median},
        )


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def _prediction(settings: Settings, table: Table) -> None:
    config = workflow_config()
    spec, predict = dict(config["model"]), config["predict"]
    tile, size = int(predict["tile_size"]), 512
    if settings.quick:
        spec["base_channels"], tile, size = 4, 64, 64
    torch.manual_seed(0)
    model = build_model(spec).eval()
    padded = mirror_pad(em_slices(1, size)[0][0], model.geometry.margin)
    results: dict[tuple[str, bool], np.ndarray] = {}

    def fn(name: str, layout: bool) -> Callable[[], object]:
        precision = _precision(name, layout)
        options = TileOptions(
            tile, int(predict["batch_size"]), float(predict["overlap"]), False,
            precision.autocast, precision.channels_last,
        )  # fmt: skip
        net = precision.prepare(build_model(spec).eval())
        net.load_state_dict(model.state_dict())

        def once() -> None:
            results[(name, layout)] = predict_slice(net, padded, options, CPU)

        return once

    warmup, repeats = (0, 1) if settings.quick else (1, max(5, settings.repeats))
    fns = {variant: fn(*variant) for variant in VARIANTS}
    timings = _measure_by_precision(fns, repeats, warmup, f"prediction of a {size}^2 slice")
    base, reference = timings[("fp32", False)].median, results[("fp32", False)]
    auto = choose_precision("auto", CPU, "predict.precision")
    for (name, layout), timing in timings.items():
        table.add(
            model="default (config.yaml)",
            slice=f"{size} x {size}",
            precision=name,
            layout="channels-last" if layout else "contiguous",
            runs=len(timing.runs),
            **timing.columns(),
            **{"vs fp32 contiguous": timing.median / base},
            **{"max abs diff": float(np.abs(results[(name, layout)] - reference).max())},
            auto=(auto.name, auto.channels_last) == (name, layout),
        )


def run(settings: Settings) -> list[Table]:
    feature = native_bf16_feature()
    capability = torch.backends.cpu.get_cpu_capability()
    native = f"native bf16: {feature}" if feature else "no native bf16 (bf16 is emulated)"
    emulated = (
        []
        if feature
        else [
            f"Emulated bf16 rows: {EMULATED_BF16_REPEATS} runs after 1 warm-up, taking turns among"
            " themselves after the fp32 rows (their full count would take an hour)."
        ]
    )
    peak = Table(
        "CPU matmul rates by precision",
        ["dtype", "size", "TFLOP/s", "vs fp32"],
        notes=[
            f"This CPU: {native}; torch's kernel level {capability}.",
            "Median of 10 products after 3 warm-up ones (--quick: 1 after 1).",
        ],
    )
    size = 256 if settings.quick else 1024  # emulated bf16 runs at ~1 % of fp32: keep it short
    rates = {
        name: matmul_rate(CPU, dtype, size, settings)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    for name, rate in rates.items():
        peak.add(dtype=name, size=size, **{"TFLOP/s": rate / 1e12, "vs fp32": rate / rates["fp32"]})
    common = ["precision", "layout"]
    tail = ["min s", "median s", "max s", "vs fp32 contiguous"]
    training = Table(
        "Training step by precision and memory format (CPU)",
        ["model", "batch", *common, "steps", *tail, "auto"],
        notes=[
            "One StepRunner call (forward in autocast, loss, backward, optimiser step) on a fixed"
            " batch of EM tiles, each config's tile, batch, optimiser and loss; the variants take"
            " turns, median of 10 after 2 warm-up steps. Without native bf16, bf16 rows for the"
            " default network only (emulated bf16 is slow). auto = what train.precision: auto"
            " picks on this CPU.",
            *emulated,
        ],
    )
    prediction = Table(
        "Prediction by precision and memory format (CPU, untrained weights, no TTA)",
        ["model", "slice", *common, "runs", *tail, "max abs diff", "auto"],
        notes=[
            "predict_slice with the predict section's tile, batch and overlap; median of 5 after"
            " a warm-up run, variants taking turns. max abs diff = largest difference of the"
            " membrane probability from fp32 contiguous (untrained weights: probabilities near"
            " 0.5; for a trained model see the README).",
            *emulated,
        ],
    )
    compiled = Table(
        "Training step with torch.compile (CPU, default network)",
        ["model", "precision", "mode", "first step s", "steps", *tail[:-1], "vs eager", "note"],
        notes=[
            "The default network's StepRunner call in what train.precision: auto picks on this"
            " CPU, eager and with the network wrapped in torch.compile (inductor, default mode),"
            " each from the same weights; first step s = its first call, which for torch.compile"
            " is the compilation, from an empty inductor cache; then the two take turns, median"
            " of 20 after 2 warm-up steps.",
        ],
    )
    _training(settings, training)
    _compiled_training(settings, compiled)
    _prediction(settings, prediction)
    return [peak, training, compiled, prediction]
