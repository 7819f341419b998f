"""Block-wise application of a model to a volume: throughput, peer, memory per job, planning.

The volume is a 64 x 2048 x 2048 uint8 zarr of real EM texture (each slice a mirrored mosaic of
ISBI 2012 slices; synthetic EM without a local copy), the network config.yaml's default padded
U-Net with untrained weights (speed does not depend on them), prediction config.yaml's predict
section without test-time augmentation. Methods, timed round-robin one job's slices at a time
(the default job: 8 blocks of one slice each), so that load from other processes hits all alike:

- bare: `emseg.tiling.predict_slice` on the whole slices, read and scaled beforehand (untimed);
- emseg block-wise: `emseg.blockwise.run_job` as the apply_blocks rule runs it (read with halo,
  predict, write the uint8 probability and its pyramid levels into the OME-Zarr), with the
  default block (here a whole slice) and a smaller one whose halo shows;
- torch-em's `predict_with_halo` (bench/torch_em_peer.py) with the same blocks, a halo equal to
  the one emseg reads around an interior block, the same network, scaling and threads.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from bench.apply_scaling import memory_table, plan_table
from bench.harness import NO_GPU, Settings, Table, isbi_folder, log, workflow_config
from bench.torch_em_peer import import_predict_with_halo, run_predict_with_halo
from emseg.apply_plan import make_plan
from emseg.blockwise import Member, load_members, run_job
from emseg.model_file import save_model_file
from emseg.models import build_model
from emseg.omezarr import quantize
from emseg.precision import Precision, choose_precision
from emseg.preprocess import Normalization, mirror_pad
from emseg.tiling import SliceInput, predict_slice, source_box

Shape = tuple[int, int, int]
TARGET_RATIO = 0.95  # block-wise throughput / bare predict_slice throughput
NORMALIZATION = Normalization(low=29.0, high=214.0, lower_percentile=1.0, upper_percentile=99.0)


@dataclass(frozen=True)
class Sizes:
    """Volumes, blocks and network of one run (the issue's sizes, or tiny ones with --quick)."""

    volume: Shape
    larger: Shape  # for the memory comparison: 4x the voxels
    huge: Shape  # for the planning time
    block: Shape
    small_block: Shape
    chunks: Shape
    blocks_per_job: int
    tile: int
    base_channels: int


def _sizes(settings: Settings, apply: dict[str, Any], predict: dict[str, Any]) -> Sizes:
    block, chunks = tuple(apply["block"]), tuple(apply["chunks"])
    full = Sizes(
        volume=(64, 2048, 2048),
        larger=(64, 4096, 4096),
        huge=(64, 16384, 16384),
        block=block,  # type: ignore[arg-type]
        small_block=(block[0], block[1] // 2, block[2] // 2),
        chunks=chunks,  # type: ignore[arg-type]
        blocks_per_job=int(apply["blocks_per_job"]),
        tile=int(predict["tile_size"]),
        base_channels=int(workflow_config()["model"]["base_channels"]),
    )
    if not settings.quick:
        return full
    tiny = (1, 128, 128)
    return Sizes(
        (4, *tiny[1:]),
        (4, 256, 256),
        (4, 512, 512),
        tiny,
        (1, 64, 64),
        (1, 32, 32),
        blocks_per_job=2,
        tile=64,
        base_channels=4,
    )


def run(settings: Settings) -> list[Table]:
    config = workflow_config()
    predict = {**config["predict"], "tta": False}
    sizes = _sizes(settings, config["apply"], predict)
    predict["tile_size"] = sizes.tile
    with tempfile.TemporaryDirectory(prefix="emseg-bench-apply-") as tmp:
        folder = Path(tmp)
        model = _model_file(folder / "model.pt", config["model"], sizes)
        volume = folder / "volume.zarr"
        log(f"apply: writing the {sizes.volume} test volume")
        source = _write_volume(volume, sizes.volume, sizes.chunks)
        throughput, agreement = _throughput(settings, sizes, volume, model, predict, folder)
        throughput.notes.insert(0, f"Volume: {' x '.join(map(str, sizes.volume))} uint8, {source}.")
        larger = folder / "larger.zarr"
        log(f"apply: writing the {sizes.larger} volume for the memory comparison")
        _write_volume(larger, sizes.larger, sizes.chunks)
        plans = []
        for name, path, shape in (("v1", volume, sizes.volume), ("v4", larger, sizes.larger)):
            plan = _plan(folder / f"mem-{name}", path, model, sizes.block, sizes, predict)
            plan_file = folder / f"mem-{name}.json"
            plan_file.write_text(json.dumps(plan))
            plans.append((name, shape, plan_file))
        memory = memory_table(plans, settings.threads)
        huge = folder / "huge.zarr"
        zarr.create_array(str(huge), shape=sizes.huge, dtype="uint8", chunks=sizes.chunks)
        apply = {**config["apply"], **_apply_keys(sizes, sizes.block)}
        planning = plan_table([("v1", volume), ("huge", huge)], model, apply, settings, folder)
    return [throughput, agreement, memory, planning]


def _model_file(path: Path, spec: dict[str, Any], sizes: Sizes) -> Path:
    """The default network, untrained (seed 0), saved as a self-contained model file."""
    spec = {**spec, "base_channels": sizes.base_channels}
    torch.manual_seed(0)
    save_model_file(path, build_model(spec).eval(), spec, NORMALIZATION, 256, "bench")
    return path


def _write_volume(path: Path, shape: Shape, chunks: Shape) -> str:
    """A uint8 zarr volume of EM texture, written slice by slice; returns where it came from."""
    tiles, source = _em_tiles()
    array = zarr.create_array(str(path), shape=shape, dtype="uint8", chunks=chunks)
    side = tiles.shape[1]
    rows, cols = math.ceil(shape[1] / side), math.ceil(shape[2] / side)
    for z in range(shape[0]):
        mosaic = np.empty((rows * side, cols * side), dtype=np.uint8)
        for r in range(rows):
            for c in range(cols):
                tile = tiles[(z * rows * cols + r * cols + c) % len(tiles)]
                tile = tile[::-1] if r % 2 else tile  # mirrored neighbours: no seams
                mosaic[r * side : (r + 1) * side, c * side : (c + 1) * side] = (
                    tile[:, ::-1] if c % 2 else tile
                )
        array[z] = mosaic[: shape[1], : shape[2]]
    return source


def _em_tiles() -> tuple[np.ndarray, str]:
    """The 60 ISBI 2012 slices (train and test), else a synthetic EM stack, as uint8."""
    from emseg.io import read_stack

    folder = isbi_folder()
    if folder is not None:
        files = [folder / f"train/image/{i}.png" for i in range(30)]
        files += [folder / f"test/{i}.png" for i in range(30)]
        tiles = np.stack([read_stack(f)[0] for f in files]).astype(np.uint8)
        return tiles, f"mosaics of the 60 ISBI 2012 slices ({folder}), mirrored at the seams"
    from emseg.synthetic import synthetic_stack

    images, _ = synthetic_stack(8, 512, 512, seed=0)
    low, high = np.percentile(images, [0.5, 99.5])
    scaled = np.clip((images - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    return scaled, "mosaics of a synthetic EM stack (no ISBI copy found)"


def _apply_keys(sizes: Sizes, block: Shape) -> dict[str, Any]:
    """apply: keys for `block`, with jobs that cover the slices of one default job."""
    per_job = sizes.blocks_per_job * _blocks_per_slice(block, sizes.volume)
    per_job //= _blocks_per_slice(sizes.block, sizes.volume)
    return {"block": list(block), "chunks": list(sizes.chunks), "blocks_per_job": per_job}


def _blocks_per_slice(block: Shape, volume: Shape) -> int:
    return math.ceil(volume[1] / block[1]) * math.ceil(volume[2] / block[2])


def _plan(
    store: Path, volume: Path, model: Path, block: Shape, sizes: Sizes, predict: dict[str, Any]
) -> dict[str, Any]:
    """make_plan as apply_prepare runs it: config.yaml's apply keys with `block`."""
    apply = {**workflow_config()["apply"], **_apply_keys(sizes, block)}
    apply |= {"input": str(volume), "models": [str(model)], "normalization": "model"}
    apply["voxel_size"] = [1.0, 1.0, 1.0]  # a zarr array records none; this keeps the log quiet
    apply["shape"] = list(zarr.open_array(str(volume), mode="r").shape)
    return json.loads(json.dumps(make_plan("bench", apply, predict, store)))


def _halo(member: Member, volume: Shape, block: Shape) -> int:
    """The widest context emseg reads beyond a block of `block` (its tiles reach past it)."""
    probe = SliceInput.mirrored(volume[1:], member.model.geometry.margin, lambda r, c: None)
    widest = 0
    for y0 in range(0, volume[1], block[1]):
        for x0 in range(0, volume[2], block[2]):
            y1, x1 = min(y0 + block[1], volume[1]), min(x0 + block[2], volume[2])
            region = (y0, y1, x0, x1)
            r0, r1, c0, c1 = source_box(member.model.geometry, probe, region, member.options)
            widest = max(widest, y0 - r0, r1 - y1, x0 - c0, c1 - x1)
    multiple = member.model.geometry.multiple  # torch-em's block + 2 halo must suit the net
    while any((side + 2 * widest) % multiple for side in block[1:]):
        widest += 1
    return widest


@dataclass
class Method:
    """One way of predicting a job's slices, with what it took."""

    name: str
    block: Shape
    halo: int | None
    run: Callable[[int, range, list[np.ndarray]], Any]  # (job, its slices, their planes)
    store: Path | None = None  # where its uint8 probability lands (level 0), for agreement
    any_slices: bool = True  # runs on any slices (a warm-up slice); False: whole jobs only
    seconds: list[float] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    passes: int = 0  # forward-pass inputs (tiles or blocks)
    pixels: int = 0  # pixels fed to the network


@dataclass
class Agreement:
    """Differences of a stored uint8 probability from the bare float prediction."""

    levels: int = 0
    max_abs: float = 0.0
    total_abs: float = 0.0
    voxels: int = 0

    def add(self, stored: np.ndarray, reference: np.ndarray) -> None:
        diff = np.abs(stored.astype(np.int16) - quantize(reference, "uint8").astype(np.int16))
        prob = np.abs(stored.astype(np.float32) / 255.0 - reference)
        self.levels = max(self.levels, int(diff.max()))
        self.max_abs = max(self.max_abs, float(prob.max()))
        self.total_abs += float(prob.sum(dtype=np.float64))
        self.voxels += prob.size


def _throughput(
    settings: Settings,
    sizes: Sizes,
    volume: Path,
    model: Path,
    predict: dict[str, Any],
    folder: Path,
) -> tuple[Table, Table]:
    throughput = Table(
        "Block-wise application throughput (default network, no TTA)", THROUGHPUT, notes=[]
    )
    agreement = Table("Block-wise outputs against whole-slice predict_slice", AGREEMENT, notes=[])
    for device in (torch.device("cpu"), settings.gpu):
        if device is None:
            throughput.add(method="all", device="cuda", note=NO_GPU)
            continue
        precision = choose_precision("auto", device, "predict.precision")  # as apply_blocks
        methods, note, network = _methods(
            settings, sizes, volume, model, predict, folder, device, precision
        )
        slices_per_job = sizes.blocks_per_job // _blocks_per_slice(sizes.block, sizes.volume)
        jobs = _timed_jobs(settings, math.ceil(sizes.volume[0] / slices_per_job), slices_per_job)
        scores = _rounds(settings, methods, jobs, slices_per_job, sizes, volume, device, network)
        _fill(throughput, agreement, methods, scores, (device, precision), slices_per_job)
        throughput.notes.append(note)
    throughput.notes += THROUGHPUT_NOTES
    agreement.notes += AGREEMENT_NOTES
    return throughput, agreement


def _timed_jobs(settings: Settings, jobs: int, slices_per_job: int) -> list[int]:
    """Every job, or with --apply-slices as many jobs as cover that many slices, spread evenly."""
    count = jobs
    if settings.apply_slices is not None:
        count = max(1, min(jobs, math.ceil(settings.apply_slices / slices_per_job)))
    return sorted({round(float(x)) for x in np.linspace(0, jobs - 1, count)})


def _methods(
    settings: Settings,
    sizes: Sizes,
    volume: Path,
    model: Path,
    predict: dict[str, Any],
    folder: Path,
    device: torch.device,
    precision: Precision,
) -> tuple[list[Method], str, type[torch.nn.Module]]:
    """bare, emseg block-wise (default and small block) and torch-em (both blocks), planned;
    all in the precision `auto` picks for `device` (torch-em with the same model and autocast)."""
    plans = {}
    for block in (sizes.block, sizes.small_block):
        store = folder / f"out-{device.type}-{block[1]}.ome.zarr"
        plans[block] = _plan(store, volume, model, block, sizes, predict)
    (member,) = load_members(plans[sizes.block], device, precision)
    margin = member.model.geometry.margin

    def bare(_job: int, _slices: range, planes: list[np.ndarray]) -> list[np.ndarray]:
        padded = (mirror_pad(plane, margin) for plane in planes)
        return [predict_slice(member.model, x, member.options, device) for x in padded]

    methods = [Method("bare predict_slice (whole slices in memory)", sizes.volume, None, bare)]
    for block, plan in plans.items():
        methods.append(
            Method(
                "emseg block-wise (run_job)",
                block,
                _halo(member, sizes.volume, block),
                lambda job, _s, _p, plan=plan: run_job(plan, job, device, precision),
                store=Path(plan["store"]) / "0",
                any_slices=False,
            )
        )
    predict_with_halo, note = import_predict_with_halo()
    if predict_with_halo is None:
        return methods, f"torch-em: {note} (pip install -e '.[bench]')", type(member.model)
    halo = _halo(member, sizes.volume, sizes.small_block)
    source = zarr.open_array(str(volume), mode="r")
    for block in (sizes.block, sizes.small_block):
        store = folder / f"torch-em-{device.type}-{block[1]}.zarr"
        output = _output_array(store, sizes.volume, sizes.chunks)

        def peer(
            _job: int, slices: range, _p: Any, block: Shape = block, out: Any = output
        ) -> None:
            run_predict_with_halo(
                predict_with_halo,
                source,
                out,
                member,
                block,
                (0, halo, halo),
                slices,
                device,
            )

        methods.append(Method("torch-em predict_with_halo", block, halo, peer, store=store))
    return methods, f"Peer: {note}.", type(member.model)


def _output_array(path: Path, shape: Shape, chunks: Shape) -> Any:
    """A uint8 zarr like emseg's level 0 (zarr v2, Blosc zstd level 3, the same chunks)."""
    from numcodecs import Blosc

    return zarr.create_array(
        str(path),
        shape=shape,
        chunks=chunks,
        dtype="uint8",
        zarr_format=2,
        compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
        fill_value=0,
    )


def _rounds(
    settings: Settings,
    methods: list[Method],
    jobs: list[int],
    slices_per_job: int,
    sizes: Sizes,
    volume: Path,
    device: torch.device,
    network: type[torch.nn.Module],
) -> dict[str, Agreement]:
    """Each timed job's slices by every method in turn; agreement with bare, untimed."""
    source = zarr.open_array(str(volume), mode="r")
    scores = {_key(m): Agreement() for m in methods[1:]}
    first = range(jobs[0] * slices_per_job, jobs[0] * slices_per_job + 1)
    log("apply: warm-up, one slice per method that can take one")
    for method in methods[: 0 if settings.quick else None]:  # warm-up: one slice (untimed)
        if method.any_slices:
            method.run(jobs[0], first, [NORMALIZATION.apply(source[first.start])])
    started = time.perf_counter()
    for done, job in enumerate(jobs, 1):
        slices = range(job * slices_per_job, min((job + 1) * slices_per_job, sizes.volume[0]))
        planes = [NORMALIZATION.apply(source[z]) for z in slices]
        reference: list[np.ndarray] = []
        for method in methods:
            with _forward_passes(network) as counts:
                began = time.perf_counter()
                result = method.run(job, slices, planes)
                _sync(device)
                method.seconds.append(time.perf_counter() - began)
            log(f"apply: {method.name}, block {method.block}: {method.seconds[-1]:.1f} s")
            method.passes += counts["passes"]
            method.pixels += counts["pixels"]
            if isinstance(result, dict):
                method.records.append(result)
            elif isinstance(result, list):
                reference = result
        for method in methods[1:]:
            stored = zarr.open_array(str(method.store), mode="r")[slices.start : slices.stop]
            scores[_key(method)].add(stored, np.stack(reference))
        spent = time.perf_counter() - started
        left = spent / done * (len(jobs) - done)
        log(f"apply: job {job} ({done}/{len(jobs)}) done, {spent:.0f} s so far, ~{left:.0f} s left")
    return scores


@contextmanager
def _forward_passes(network: type[torch.nn.Module]) -> Iterator[dict[str, int]]:
    """Count the inputs (tiles, blocks) and pixels that reach any `network` while inside."""
    counts = {"passes": 0, "pixels": 0}

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if isinstance(module, network):
            batch = args[0]
            counts["passes"] += batch.shape[0]
            counts["pixels"] += batch.shape[0] * batch.shape[-2] * batch.shape[-1]

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _key(method: Method) -> str:
    return f"{method.name} {method.block}"


def _fill(
    throughput: Table,
    agreement: Table,
    methods: list[Method],
    scores: dict[str, Agreement],
    arithmetic: tuple[torch.device, Precision],
    slices_per_job: int,
) -> None:
    """One throughput row per method, one agreement row per stored output."""
    device, precision = arithmetic
    bare = np.asarray(methods[0].seconds)
    slice_voxels = methods[0].block[1] * methods[0].block[2]  # bare's block: the whole slice
    for method in methods:
        seconds = np.asarray(method.seconds)
        slices = len(seconds) * slices_per_job
        ratios = 100 * bare / seconds
        ratio = 100 * bare.sum() / seconds.sum()
        cells: dict[str, Any] = {
            "halo px": method.halo,
            "slices": slices,
            "net input Mpx/slice": method.pixels / slices / 1e6,
            "passes/slice": method.passes / slices,
            "total s": float(seconds.sum()),
            "s/slice": float(seconds.sum()) / slices,
            "Mvoxel/s": slices * slice_voxels / float(seconds.sum()) / 1e6,
            "vs bare % (total)": ratio,
            "vs bare % per job (min/median/max)": "/".join(
                f"{v:.0f}" for v in (ratios.min(), np.median(ratios), ratios.max())
            ),
        }
        if method.records:
            job_s = sum(r["seconds"] for r in method.records)
            for key in ("read_wait_s", "write_wait_s"):
                wait = sum(r[key] for r in method.records)
                cells[key.replace("_s", " %").replace("_", " ")] = 100 * wait / job_s
            outside = job_s - sum(r["predict_s"] for r in method.records)
            cells["outside prediction %"] = 100 * outside / job_s
        note = ""
        if method is methods[1]:  # emseg with the default block: the target
            note = "target met" if ratio >= 100 * TARGET_RATIO else "below the 95 % target"
        if method.name.startswith("torch-em"):
            ours = next(m for m in methods[1:3] if m.block == method.block)
            speed = seconds.sum() / np.sum(ours.seconds)
            verdict = "at least as fast" if speed >= 1 else "slower"
            note = f"emseg (same block) is {speed:.2f}x its speed: {verdict}"
        throughput.add(
            method=method.name,
            device=device.type,
            precision=precision.label,
            block=" x ".join(map(str, method.block)),
            **cells,
            note=note,
        )
    for method in methods[1:]:
        score = scores[_key(method)]
        agreement.add(
            output=f"{method.name}, block {' x '.join(map(str, method.block))}",
            device=device.type,
            voxels=score.voxels,
            **{
                "max diff (uint8 levels)": score.levels,
                "max abs diff p": score.max_abs,
                "mean abs diff p": score.total_abs / max(score.voxels, 1),
            },
        )


THROUGHPUT = [
    "method",
    "device",
    "precision",
    "block",
    "halo px",
    "slices",
    "net input Mpx/slice",
    "passes/slice",
    "total s",
    "s/slice",
    "Mvoxel/s",
    "vs bare % (total)",
    "vs bare % per job (min/median/max)",
    "read wait %",
    "write wait %",
    "outside prediction %",
    "note",
]
AGREEMENT = [
    "output",
    "device",
    "voxels",
    "max diff (uint8 levels)",
    "max abs diff p",
    "mean abs diff p",
    "note",
]
THROUGHPUT_NOTES = [
    f"Target: emseg block-wise with the default block at >= {100 * TARGET_RATIO:.0f} % of the"
    " bare predict_slice throughput on the same voxels (vs bare % = bare seconds / method"
    " seconds), and at least as fast as torch-em. The methods take turns job by job (one job's"
    " slices each, in the order of the rows), so that load from other processes hits them alike.",
    "bare = predict_slice on whole slices already read and scaled to float32 (reading and scaling"
    " untimed); emseg block-wise = run_job (apply_blocks): reading ahead with the halo, scaling,"
    " prediction, writing the uint8 probability and the pyramid levels of its blocks.",
    "halo px = the widest context read beyond a block: emseg reads what the tiles overlapping the"
    " block need (for a padded net the Gaussian-blended windows that straddle a block border are"
    " computed by both blocks: the passes/slice column counts them); torch-em gets emseg's halo of"
    " the smaller block, so both see the same context, and predicts block + halo in one pass.",
    "net input Mpx/slice = pixels fed to the network per slice (tiles x tile area, or blocks x"
    " (block + 2 halo) area), counted by a forward hook: the compute each method pays.",
    "read wait % / write wait % = time run_job waited for its background reader / writer, as a"
    " share of the job: the I/O that prediction did not hide. outside prediction % = the job's"
    " time outside predict_block (loading the model, those waits, the loop): by the job's own"
    " clock, so less swayed by other processes than the comparison with bare; it cannot see the"
    " background threads slowing the forward passes down, which the comparison does.",
]
AGREEMENT_NOTES = [
    "Stored uint8 probability (p x 255) of each method against bare predict_slice (float32) on"
    " the timed slices: max diff in uint8 levels against the rounded bare value, abs diffs in"
    " probability units. emseg's block-wise output must equal bare up to rounding (<= 1 level).",
    "torch-em runs each block + halo through the network in one pass; a padded network then sees"
    " zero padding only at the halo's outer edge, where emseg blends tile-sized windows that each"
    " have their own zero-padded borders: the difference is what tiling does to a padded"
    " network (untrained weights here), not an error of either.",
]
