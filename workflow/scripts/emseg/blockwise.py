"""Block-wise prediction of a volume: read each block with its halo, predict it, write its chunks.

One job predicts a run of blocks (emseg.blocks). For every block it reads, in one call, the source
rectangle that the block's tiles need (the block plus the network's halo: real neighbour pixels
inside the volume, mirrored only at its true border), predicts each slice of the block with
`emseg.tiling.predict_region` (the whole slice's tile grid, so blocks meet without seams),
averages the models of an ensemble and writes the block's own chunks: the probability and the
pyramid levels whose chunks lie inside the block (the mask and the cells are later stages, made
from the stored probability). Reading the next block and writing the last one run in background
threads while the network computes, so the I/O costs little time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emseg.blocks import BlockGrid, Bounds, job_blocks, level_bounds
from emseg.io import InputError
from emseg.model_file import load_model_file
from emseg.omezarr import downsample_mean, open_level, quantize
from emseg.precision import Precision
from emseg.preprocess import Normalization
from emseg.progress import progress
from emseg.tiling import Region, SliceInput, TileOptions, predict_region, source_box
from emseg.volume import Volume, open_volume

LOG = logging.getLogger("emseg")


@dataclass(frozen=True)
class Member:
    """One network of the (ensemble) prediction, with its input scaling and tiles."""

    model: torch.nn.Module
    normalization: Normalization
    options: TileOptions


@dataclass(frozen=True)
class BlockInput:
    """The raw source rectangle of a block (all its slices) and where it starts."""

    raw: np.ndarray  # (z, rows, cols) in the volume's pixel type
    origin: tuple[int, int]  # (row, col) of raw[:, 0, 0] in the slice


def load_members(
    plan: Mapping[str, Any], device: torch.device, precision: Precision
) -> list[Member]:
    """The plan's models on `device` in `precision`, each with the normalisation and tiles the plan
    chose. The precision is the job's, not the plan's: nodes of one cluster may differ in bf16."""
    members = []
    for entry in plan["members"]:
        model = precision.prepare(load_model_file(Path(entry["model"])).build(device))
        options = TileOptions(
            tile_size=int(entry["tile_size"]),
            batch_size=int(plan["predict"]["batch_size"]),
            overlap=float(plan["predict"]["overlap"]),
            tta=bool(plan["predict"]["tta"]),
            autocast=precision.autocast,
            channels_last=precision.channels_last,
        )
        members.append(Member(model, Normalization.from_dict(entry["normalization"]), options))
    return members


def read_block(volume: Volume, members: Sequence[Member], bounds: Bounds) -> BlockInput:
    """Read the source rectangle every member needs for `bounds`, in one call."""
    z0, z1, y0, y1, x0, x1 = bounds
    shape = volume.shape[1:]
    boxes = [
        source_box(m.model.geometry, _box_probe(shape, m), (y0, y1, x0, x1), m.options)
        for m in members
    ]
    r0, r1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    c0, c1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    raw = volume.read(slice(z0, z1), slice(r0, r1), slice(c0, c1))
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError(
            f"{volume.name}: NaN or infinite values in slices {z0}-{z1 - 1},"
            f" rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}"
        )
    return BlockInput(raw, (r0, c0))


def predict_block(
    members: Sequence[Member],
    block: BlockInput,
    slice_shape: tuple[int, int],
    region: Region,
    device: torch.device,
) -> np.ndarray:
    """Membrane probability (z, y, x) float32 of `region` in every slice of the block."""
    y0, y1, x0, x1 = region
    total = np.zeros((block.raw.shape[0], y1 - y0, x1 - x0), dtype=np.float32)
    scaled: dict[tuple[float, float], np.ndarray] = {}
    for member in members:
        norm = member.normalization
        key = (norm.low, norm.high)
        if key not in scaled:
            scaled[key] = norm.apply(block.raw)
        for index, plane in enumerate(scaled[key]):
            source = SliceInput.mirrored(
                slice_shape, member.model.geometry.margin, _reader(plane, block.origin)
            )
            total[index] += predict_region(member.model, source, region, member.options, device)
    if len(members) > 1:
        total /= len(members)
    return total


class BlockWriter:
    """Writes a block's probability and its own pyramid levels into the store's arrays."""

    def __init__(self, plan: Mapping[str, Any]) -> None:
        store = Path(plan["store"])
        self.dtype = plan["output"]["dtype"]
        self.images = [open_level(store, level) for level in range(int(plan["job_levels"]))]

    def write(self, bounds: Bounds, prob: np.ndarray) -> None:
        image = prob
        for level, array in enumerate(self.images):
            if level:
                image = downsample_mean(image)
            z0, z1, y0, y1, x0, x1 = level_bounds(bounds, level)
            array[z0:z1, y0:y1, x0:x1] = quantize(image, self.dtype)


def run_job(
    plan: Mapping[str, Any], job: int, device: torch.device, precision: Precision
) -> dict[str, Any]:
    """Predict and write every block of job `job`; returns what it did, for the job's record."""
    started = time.perf_counter()
    volume = open_volume(plan["volume"])
    if list(volume.shape) != list(plan["shape"]):
        raise InputError(
            f"{plan['volume']}: shape {volume.shape} changed since it was planned as"
            f" {tuple(plan['shape'])}; rerun snakemake to plan it again"
        )
    members = load_members(plan, device, precision)
    grid = BlockGrid(tuple(plan["shape"]), tuple(plan["block"]))
    blocks = job_blocks(len(grid), int(plan["blocks_per_job"]), job)
    writer = BlockWriter(plan)
    timings = {"read_wait_s": 0.0, "predict_s": 0.0, "write_wait_s": 0.0}
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writing:
        pending: Future[None] | None = None
        upcoming = reader.submit(read_block, volume, members, grid.bounds(blocks[0]))
        bar = progress(total=len(blocks), desc=f"job {job}", unit="block")
        for position, index in enumerate(blocks):
            bounds = grid.bounds(index)
            block = _timed(timings, "read_wait_s", upcoming.result)
            if position + 1 < len(blocks):
                upcoming = reader.submit(
                    read_block, volume, members, grid.bounds(blocks[position + 1])
                )
            region = bounds[2:]
            prob = _timed(
                timings,
                "predict_s",
                lambda b=block, r=region: predict_block(members, b, volume.shape[1:], r, device),
            )
            if pending is not None:
                _timed(timings, "write_wait_s", pending.result)
            pending = writing.submit(writer.write, bounds, prob)
            bar.update(1)
        if pending is not None:
            _timed(timings, "write_wait_s", pending.result)
        bar.close()
    seconds = time.perf_counter() - started
    voxels = sum(_voxels(grid.bounds(index)) for index in blocks)
    return {
        "job": job,
        "blocks": [blocks.start, blocks.stop],
        "voxels": voxels,
        "seconds": seconds,
        "voxels_per_s": voxels / max(seconds, 1e-9),
        **timings,
        "device": str(device),
        **precision.as_dict(),
        "plan": plan["plan_hash"],
    }


def _timed(timings: dict[str, float], key: str, call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return call()
    finally:
        timings[key] += time.perf_counter() - started


def _voxels(bounds: Bounds) -> int:
    z0, z1, y0, y1, x0, x1 = bounds
    return (z1 - z0) * (y1 - y0) * (x1 - x0)


def _reader(plane: np.ndarray, origin: tuple[int, int]) -> Callable[[slice, slice], np.ndarray]:
    """Serve source rectangles from a plane read ahead, whose corner is at `origin`."""
    r0, c0 = origin

    def read(rows: slice, cols: slice) -> np.ndarray:
        return plane[rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]

    return read


def _box_probe(shape: tuple[int, int], member: Member) -> SliceInput:
    """A slice of `shape` with the member's mirror padding and no reader: for planning reads."""
    return SliceInput.mirrored(shape, member.model.geometry.margin, _no_read)


def _no_read(rows: slice, cols: slice) -> np.ndarray:
    raise RuntimeError("a planning probe does not read")
