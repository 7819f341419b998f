"""Cutting a volume into blocks and jobs, from its shape alone.

Blocks are aligned to the output chunks, so no two blocks (and so no two jobs) ever write the same
chunk. A job is a run of consecutive blocks in z-major order. The pyramid levels that a job can
write itself are those whose chunks still lie wholly inside its blocks; the rest are built once
every job is done. Everything here is arithmetic on shapes: planning a volume of any size reads
nothing but its header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Shape = tuple[int, int, int]
Bounds = tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1, half-open


@dataclass(frozen=True)
class BlockGrid:
    """A (z, y, x) volume cut into blocks of `block` voxels (smaller at the far borders)."""

    shape: Shape
    block: Shape

    @property
    def counts(self) -> Shape:
        nz, ny, nx = (math.ceil(s / b) for s, b in zip(self.shape, self.block, strict=True))
        return nz, ny, nx

    def __len__(self) -> int:
        return math.prod(self.counts)

    def bounds(self, index: int) -> Bounds:
        """The voxels of block `index` (z-major order)."""
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        _, ny, nx = self.counts
        iz, rest = divmod(index, ny * nx)
        iy, ix = divmod(rest, nx)
        corner = (iz * self.block[0], iy * self.block[1], ix * self.block[2])
        z0, y0, x0 = corner
        z1, y1, x1 = (min(c + b, s) for c, b, s in zip(corner, self.block, self.shape, strict=True))
        return z0, z1, y0, y1, x0, x1


def job_count(blocks: int, blocks_per_job: int) -> int:
    return math.ceil(blocks / blocks_per_job)


def job_blocks(blocks: int, blocks_per_job: int, job: int) -> range:
    """The block indices of job `job`."""
    if not 0 <= job < job_count(blocks, blocks_per_job):
        raise IndexError(f"job {job} of {job_count(blocks, blocks_per_job)}")
    start = job * blocks_per_job
    return range(start, min(start + blocks_per_job, blocks))


# The mask and relabel steps cost well under a second per block (about 0.07 s for a 2048^2 block's
# mask), so each of their jobs takes the blocks of several prediction jobs: one per prediction job
# would fill a cluster's queue with jobs that end before their scheduling does.
LABEL_JOB_BLOCKS = 64


def label_job_size(blocks_per_job: int) -> int:
    """Prediction jobs per mask or relabel job: the fewest whose blocks reach LABEL_JOB_BLOCKS."""
    return max(1, math.ceil(LABEL_JOB_BLOCKS / blocks_per_job))


def label_job_count(jobs: int, blocks_per_job: int) -> int:
    return math.ceil(jobs / label_job_size(blocks_per_job))


def label_job_members(jobs: int, blocks_per_job: int, label_job: int) -> range:
    """The prediction jobs whose blocks mask or relabel job `label_job` writes."""
    if not 0 <= label_job < label_job_count(jobs, blocks_per_job):
        raise IndexError(f"label job {label_job} of {label_job_count(jobs, blocks_per_job)}")
    size = label_job_size(blocks_per_job)
    return range(label_job * size, min((label_job + 1) * size, jobs))


def halo_jobs(grid: BlockGrid, blocks_per_job: int, job: int, halo: int) -> list[int]:
    """The jobs whose blocks a job reads when it grows each of its blocks by `halo` px in y and x.

    A job that reads its neighbours (segmentation with a halo) needs only these to have finished;
    naming them, not every job, keeps the DAG linear in the number of jobs.
    """
    _, ny, nx = grid.counts
    reach_y, reach_x = (math.ceil(halo / side) for side in grid.block[1:])
    jobs = set()
    for index in job_blocks(len(grid), blocks_per_job, job):
        iz, rest = divmod(index, ny * nx)
        iy, ix = divmod(rest, nx)
        for y in range(max(0, iy - reach_y), min(ny, iy + reach_y + 1)):
            for x in range(max(0, ix - reach_x), min(nx, ix + reach_x + 1)):
                jobs.add((iz * ny * nx + y * nx + x) // blocks_per_job)
    return sorted(jobs)


def check_block_shape(block: Shape, chunks: Shape, section: str = "apply") -> None:
    """Blocks must be whole numbers of chunks, so that jobs never share a chunk.

    `section` is the config section whose `block` and `chunks` are named in the error.
    """
    for axis, (b, c) in enumerate(zip(block, chunks, strict=True)):
        if b < 1 or c < 1:
            raise ValueError(
                f"{section}.block and {section}.chunks must be positive, got {block}, {chunks}"
            )
        if b % c:
            raise ValueError(
                f"{section}.block: {list(block)} is not a multiple of {section}.chunks"
                f" {list(chunks)} along {'zyx'[axis]}"
            )


def pyramid_shapes(shape: Shape, chunks: Shape) -> list[Shape]:
    """Level shapes, halving y and x (never z: serial sections are anisotropic) until one chunk."""
    levels = [shape]
    while max(levels[-1][1], levels[-1][2]) > max(chunks[1], chunks[2]):
        z, y, x = levels[-1]
        levels.append((z, math.ceil(y / 2), math.ceil(x / 2)))
    return levels


def levels_per_job(block: Shape, chunks: Shape, levels: int) -> int:
    """How many levels (from 0) a job writes itself: those whose chunks its blocks cover whole."""
    count = 1
    while count < levels and all(block[axis] % (chunks[axis] * 2**count) == 0 for axis in (1, 2)):
        count += 1
    return count


def level_bounds(bounds: Bounds, level: int) -> Bounds:
    """A block's voxels at pyramid level `level` (y and x halved per level, rounding up)."""
    z0, z1, y0, y1, x0, x1 = bounds
    f = 2**level
    return z0, z1, y0 // f, math.ceil(y1 / f), x0 // f, math.ceil(x1 / f)
