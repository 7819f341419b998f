"""Block and job planning from shapes alone, and the pyramid arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emseg.blocks import (
    BlockGrid,
    check_block_shape,
    halo_jobs,
    job_blocks,
    job_count,
    label_job_count,
    label_job_members,
    level_bounds,
    levels_per_job,
    pyramid_shapes,
)
from emseg.omezarr import downsample_labels, downsample_mean, quantize

sizes = st.integers(1, 90)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(sizes, sizes, sizes),
    block=st.tuples(st.integers(1, 9), st.integers(1, 40), st.integers(1, 40)),
    per_job=st.integers(1, 7),
)
def test_jobs_cover_every_voxel_exactly_once(
    shape: tuple[int, int, int], block: tuple[int, int, int], per_job: int
) -> None:
    grid = BlockGrid(shape, block)
    covered = np.zeros(shape, dtype=np.int32)
    blocks = [
        i
        for job in range(job_count(len(grid), per_job))
        for i in job_blocks(len(grid), per_job, job)
    ]
    assert blocks == list(range(len(grid)))
    for index in blocks:
        z0, z1, y0, y1, x0, x1 = grid.bounds(index)
        assert 0 < z1 - z0 <= block[0] and 0 < y1 - y0 <= block[1] and 0 < x1 - x0 <= block[2]
        covered[z0:z1, y0:y1, x0:x1] += 1
    assert (covered == 1).all()


def test_a_large_volume_plans_from_arithmetic() -> None:
    grid = BlockGrid((64, 16384, 16384), (1, 2048, 2048))
    assert len(grid) == 64 * 8 * 8
    assert job_count(len(grid), 8) == 512
    assert grid.bounds(len(grid) - 1) == (63, 64, 14336, 16384, 14336, 16384)
    with pytest.raises(IndexError):
        grid.bounds(len(grid))


@settings(max_examples=60, deadline=None)
@given(jobs=st.integers(1, 3000), per_job=st.integers(1, 200))
def test_mask_and_relabel_jobs_take_whole_prediction_jobs_of_64_blocks_or_more(
    jobs: int, per_job: int
) -> None:
    parts = [
        label_job_members(jobs, per_job, part) for part in range(label_job_count(jobs, per_job))
    ]
    assert [job for part in parts for job in part] == list(range(jobs))
    assert all(len(part) * per_job >= 64 for part in parts[:-1])  # the last may hold the rest
    assert all((len(part) - 1) * per_job < 64 for part in parts)  # and none holds more than needed
    with pytest.raises(IndexError):
        label_job_members(jobs, per_job, len(parts))


def test_a_large_volume_has_few_mask_jobs() -> None:
    """64 x 16384^2 in 2048^2 blocks, 8 per prediction job: 512 prediction jobs, 64 mask jobs."""
    assert label_job_count(512, 8) == 64
    assert label_job_members(512, 8, 63) == range(504, 512)


def test_blocks_must_be_whole_chunks() -> None:
    check_block_shape((2, 1024, 512), (1, 512, 512))
    with pytest.raises(ValueError, match=r"apply.block: \[1, 1000, 1024\] is not a multiple of"):
        check_block_shape((1, 1000, 1024), (1, 512, 512))


def test_pyramid_halves_y_and_x_until_one_chunk() -> None:
    levels = pyramid_shapes((7, 2049, 1000), (1, 512, 512))
    assert levels == [(7, 2049, 1000), (7, 1025, 500), (7, 513, 250), (7, 257, 125)]
    assert pyramid_shapes((3, 100, 80), (1, 512, 512)) == [(3, 100, 80)]


def test_jobs_write_the_levels_whose_chunks_lie_in_their_blocks() -> None:
    assert levels_per_job((1, 2048, 2048), (1, 512, 512), 6) == 3  # 2048, 1024, 512 px
    assert levels_per_job((1, 2048, 2048), (1, 512, 512), 2) == 2  # no more levels than exist
    assert levels_per_job((1, 512, 1024), (1, 512, 512), 6) == 1
    # each level of a block starts on a chunk border of that level
    for level in range(3):
        _, _, y0, _, x0, _ = level_bounds((3, 4, 2048, 4096, 4096, 5000), level)
        assert (y0 % 512, x0 % 512) == (0, 0)


def test_mean_downsampling_uses_only_pixels_that_exist() -> None:
    block = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    small = downsample_mean(block)
    assert small.shape == (2, 3, 2)
    for z, y, x in itertools.product(range(2), range(3), range(2)):
        assert small[z, y, x] == pytest.approx(
            block[z, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].mean()
        )
    labels = np.arange(30).reshape(2, 5, 3)
    np.testing.assert_array_equal(downsample_labels(labels), labels[:, ::2, ::2])


def test_uint8_storage_rounds_probability_times_255() -> None:
    prob = np.array([0.0, 0.5, 1 / 255, 0.998, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(quantize(prob, "uint8"), [0, 128, 1, 254, 255])
    assert quantize(prob, "float32").dtype == np.float32


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 90), st.integers(1, 90)),
    block=st.tuples(st.integers(1, 2), st.integers(8, 40), st.integers(8, 40)),
    per_job=st.integers(1, 7),
    halo=st.integers(0, 50),
)
def test_halo_jobs_are_exactly_the_jobs_a_grown_block_touches(
    shape: tuple[int, int, int], block: tuple[int, int, int], per_job: int, halo: int
) -> None:
    grid = BlockGrid(shape, block)
    for job in range(job_count(len(grid), per_job)):
        touched = set()
        for index in job_blocks(len(grid), per_job, job):
            z0, z1, y0, y1, x0, x1 = grid.bounds(index)
            for other in range(len(grid)):
                a0, a1, b0, b1, c0, c1 = grid.bounds(other)
                overlaps_z = a0 < z1 and z0 < a1
                overlaps_y = b0 < y1 + halo and y0 - halo < b1
                if overlaps_z and overlaps_y and c0 < x1 + halo and x0 - halo < c1:
                    touched.add(other // per_job)
        assert halo_jobs(grid, per_job, job, halo) == sorted(touched)
