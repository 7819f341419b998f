"""The membrane mask of an applied volume, thresholded from the probability the store holds.

It is made after the prediction, so asking for it, or for another `predict.threshold`, predicts
nothing again: `open_mask` (one job per volume) adds the empty `labels/mask` image to the store,
then `mask_blocks` (one job per `LABEL_JOB_BLOCKS` blocks or more, whole prediction jobs) writes
1 where the stored p >= the threshold, with the label pyramid levels inside its blocks;
apply_finish builds the coarser ones and lists the mask. A 2048^2 block's mask costs about
0.07 s (reading the uint8 block back included), beside about 3 s for its prediction on a 2-core
CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emseg.blocks import BlockGrid, job_blocks, label_job_members
from emseg.omezarr import (
    add_label_image,
    dequantize,
    open_level,
    set_complete,
    store_layout,
    write_label_levels,
)


def open_mask(plan: Mapping[str, Any]) -> None:
    """Add the empty mask to the store (replacing one made at another threshold)."""
    set_complete(Path(plan["store"]), False)
    add_label_image(store_layout(plan), "mask", "uint8")


def membrane_mask(stored: np.ndarray, threshold: float) -> np.ndarray:
    """1 where the stored probability is >= `threshold` (a uint8 store holds round(p x 255)).

    At threshold 0.5 this equals thresholding the float probability before it was rounded.
    """
    return (dequantize(stored) >= np.float32(threshold)).astype(np.uint8)


def mask_blocks(plan: Mapping[str, Any], label_job: int, threshold: float) -> dict[str, Any]:
    """Write the mask of the blocks of mask job `label_job`, and its levels inside them."""
    store = Path(plan["store"])
    image = open_level(store, 0, mode="r")
    levels = [open_level(store, level, "mask") for level in range(int(plan["job_levels"]))]
    grid = BlockGrid(tuple(plan["shape"]), tuple(plan["block"]))
    per_job = int(plan["blocks_per_job"])
    members = label_job_members(int(plan["jobs"]), per_job, label_job)
    blocks = range(
        job_blocks(len(grid), per_job, members[0]).start,
        job_blocks(len(grid), per_job, members[-1]).stop,
    )
    membrane = 0
    for index in blocks:
        bounds = grid.bounds(index)
        z0, z1, y0, y1, x0, x1 = bounds
        mask = membrane_mask(np.asarray(image[z0:z1, y0:y1, x0:x1]), threshold)
        write_label_levels(levels, bounds, mask)
        membrane += int(mask.sum(dtype=np.int64))
    return {
        "label_job": label_job,
        "jobs": [members.start, members.stop],
        "blocks": [blocks.start, blocks.stop],
        "threshold": threshold,
        "membrane_voxels": membrane,
    }
