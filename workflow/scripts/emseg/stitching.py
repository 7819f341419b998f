"""Cells of an applied volume, segmented block by block and stitched across block borders.

1. `segment_blocks` (one job per group of blocks): each block's membrane probability is read with a
   halo of `segment_halo` px (real neighbour pixels; none beyond the volume), each slice is
   segmented on its own (emseg.segmentation, 2-D as everywhere in emseg), and the block's own
   pixels go, with block-local ids 1..n, into the job's record (a compressed .npz: about 0.3 MB
   per 2048^2 block), with each block's cell count and four border lines (first and last row and
   column of every slice).
2. `stitch` (one job): segmentation draws a line of 0 between any two cells, and the halo makes
   neighbouring blocks agree on where those lines run, so two adjacent pixels on either side of a
   border that are both non-zero belong to one cell. The connected components of these pairs give
   every cell one id, numbered 1..N over the whole volume in the order of the blocks. It then adds
   the empty `labels/cells` image to the store (apply_finish lists it once it is written).
3. `relabel_blocks` (one job per `LABEL_JOB_BLOCKS` blocks or more, the blocks of whole segment
   jobs): each block's local ids, read from its record, become the global ones in `labels/cells`,
   with the label pyramid levels inside the block. The store only ever receives global ids, so a
   relabel job killed and run again writes the same.

Memory follows the block (and, for the stitch, the number of cells), never the volume.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from emseg.blocks import BlockGrid, job_blocks, label_job_members
from emseg.io import InputError, atomic_path
from emseg.omezarr import (
    add_label_image,
    dequantize,
    open_level,
    set_complete,
    store_layout,
    write_label_levels,
)
from emseg.progress import progress
from emseg.segment_settings import SegmentSettings
from emseg.segmentation import segment_slice

EDGES = ("top", "bottom", "left", "right")


def segment_blocks(
    plan: Mapping[str, Any], settings: SegmentSettings, halo: int, job: int, out: Path
) -> dict[str, Any]:
    """Pass 1: segment the job's blocks with a halo; record local ids, counts and borders."""
    prob = open_level(Path(plan["store"]), 0, mode="r")
    grid = BlockGrid(tuple(plan["shape"]), tuple(plan["block"]))
    total = 0
    with _npz_writer(out) as record:
        for index in progress(
            job_blocks(len(grid), int(plan["blocks_per_job"]), job), unit="block"
        ):
            z0, z1, y0, y1, x0, x1 = grid.bounds(index)
            r0, c0 = max(0, y0 - halo), max(0, x0 - halo)
            r1, c1 = min(grid.shape[1], y1 + halo), min(grid.shape[2], x1 + halo)
            block = dequantize(np.asarray(prob[z0:z1, r0:r1, c0:c1]))
            local = _segment_interior(block, settings, (y0 - r0, y1 - r0, x0 - c0, x1 - c0))
            count = int(local.max())
            record(f"{index}_ids", local)
            record(f"{index}_count", np.array(count))
            for edge, line in zip(EDGES, _borders(local), strict=True):
                record(f"{index}_{edge}", line)
            total += count
    return {"job": job, "cells_before_stitching": total}


@contextmanager
def _npz_writer(path: Path) -> Iterator[Callable[[str, np.ndarray], None]]:
    """A compressed .npz (np.load reads it) written an array at a time: a job holds one block.

    Renamed onto `path` only when complete.
    """
    with (
        atomic_path(path) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):

        def add(name: str, array: np.ndarray) -> None:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asanyarray(array), allow_pickle=False)

        yield add


def _segment_interior(
    block: np.ndarray, settings: SegmentSettings, inner: tuple[int, int, int, int]
) -> np.ndarray:
    """Segment each slice of `block`; keep the interior, ids 1..n over the block's slices."""
    y0, y1, x0, x1 = inner[:4]
    out = np.zeros((block.shape[0], y1 - y0, x1 - x0), dtype=np.uint32)
    offset = 0
    for z, plane in enumerate(block):
        labels = segment_slice(np.clip(plane, 0.0, 1.0), settings)[y0:y1, x0:x1]
        present = np.unique(labels[labels > 0])
        compact = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
        compact[present] = np.arange(1, len(present) + 1, dtype=np.uint32) + offset
        out[z] = compact[labels]
        offset += len(present)
    return out


def _borders(local: np.ndarray) -> tuple[np.ndarray, ...]:
    """The first and last row and column of every slice: what a neighbour's border touches."""
    return (
        local[:, 0, :].copy(),
        local[:, -1, :].copy(),
        local[:, :, 0].copy(),
        local[:, :, -1].copy(),
    )


def stitch(plan: Mapping[str, Any], records: Sequence[Path], out: Path) -> dict[str, Any]:
    """Pass 2: one id per cell over the volume; writes the lookup table of every block and adds
    the empty label image of the cells to the store (marked incomplete until apply_finish)."""
    grid = BlockGrid(tuple(plan["shape"]), tuple(plan["block"]))
    counts = np.zeros(len(grid), dtype=np.int64)
    borders: dict[tuple[int, str], np.ndarray] = {}
    for path in records:
        with np.load(path) as record:
            for key in record.files:
                index, what = key.split("_", 1)
                if what == "count":
                    counts[int(index)] = int(record[key])
                elif what in EDGES:
                    borders[(int(index), what)] = record[key]
    offsets = np.concatenate([[0], np.cumsum(counts)])  # block b's id i is node offsets[b] + i
    pairs = _border_pairs(grid, borders, offsets)
    nodes = int(offsets[-1]) + 1
    graph = sparse.coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(nodes, nodes)
    )
    _, component = csgraph.connected_components(graph, directed=False)
    lut = _number_in_order(component)
    if lut.max() > np.iinfo(np.uint32).max:
        raise ValueError(f"{plan['name']}: more cells than a uint32 label image can number")
    set_complete(Path(plan["store"]), False)
    add_label_image(store_layout(plan), "cells", "uint32")
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, lut=lut.astype(np.uint32), offsets=offsets)
    return {"cells": int(lut.max()), "cells_before_stitching": int(offsets[-1])}


def _border_pairs(
    grid: BlockGrid, borders: Mapping[tuple[int, str], np.ndarray], offsets: np.ndarray
) -> np.ndarray:
    """(node, node) pairs of non-zero pixels facing each other across every block border."""
    _, ny, nx = grid.counts
    found = [np.zeros((0, 2), dtype=np.int64)]
    for index in range(len(grid)):
        iy, ix = divmod(index % (ny * nx), nx)
        for step, (mine, theirs), inside in (
            (nx, ("bottom", "top"), iy + 1 < ny),
            (1, ("right", "left"), ix + 1 < nx),
        ):
            if not inside:
                continue
            a = borders[(index, mine)].ravel().astype(np.int64)
            b = borders[(index + step, theirs)].ravel().astype(np.int64)
            touch = (a > 0) & (b > 0)
            pair = np.stack([a[touch] + offsets[index], b[touch] + offsets[index + step]], 1)
            found.append(np.unique(pair, axis=0))
    return np.concatenate(found)


def _number_in_order(component: np.ndarray) -> np.ndarray:
    """Component ids renumbered 1..N by first appearance; node 0 (the boundary) stays 0."""
    _, first = np.unique(component[1:], return_index=True)
    order = np.zeros(component.max() + 1, dtype=np.int64)
    order[component[1:][np.sort(first)]] = np.arange(1, len(first) + 1)
    lut = order[component]
    lut[0] = 0
    return lut


def relabel_blocks(
    plan: Mapping[str, Any], lut_file: Path, record_files: Sequence[Path], label_job: int
) -> dict[str, Any]:
    """Pass 3: the block-local ids of relabel job `label_job`'s segment jobs (their records, in
    job order) as the volume's, with their levels."""
    store = Path(plan["store"])
    with np.load(lut_file) as table:
        lut, offsets = table["lut"], table["offsets"]
    levels = [open_level(store, level, "cells") for level in range(int(plan["job_levels"]))]
    grid = BlockGrid(tuple(plan["shape"]), tuple(plan["block"]))
    per_job = int(plan["blocks_per_job"])
    members = label_job_members(int(plan["jobs"]), per_job, label_job)
    if len(record_files) != len(members):
        raise ValueError(f"relabel job {label_job}: {len(record_files)} records for {members}")
    for job, record_file in zip(members, record_files, strict=True):
        _relabel_job(levels, grid, job_blocks(len(grid), per_job, job), record_file, lut, offsets)
    return {"label_job": label_job, "jobs": [members.start, members.stop]}


def _relabel_job(
    levels: list[Any],
    grid: BlockGrid,
    blocks: range,
    record_file: Path,
    lut: np.ndarray,
    offsets: np.ndarray,
) -> None:
    """Write one segment job's blocks with the volume's ids."""
    with np.load(record_file) as record:
        for index in blocks:
            if f"{index}_ids" not in record.files:
                raise InputError(
                    f"{record_file}: holds no cell ids of block {index} (an older emseg's"
                    f" record); delete {record_file.parent} and run again"
                )
            local = record[f"{index}_ids"].astype(np.int64)
            labels = np.where(local > 0, lut[np.where(local > 0, local + offsets[index], 0)], 0)
            write_label_levels(levels, grid.bounds(index), labels.astype(np.uint32))
