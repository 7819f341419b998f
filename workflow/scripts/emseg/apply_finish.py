"""Finishing an applied volume once every block job is done: upper pyramid levels, TIFF, record.

The jobs write the pyramid levels whose chunks lie inside their blocks; the coarser levels span
several jobs' blocks and are built here from the finest level the jobs wrote, a few chunks at a
time. Label images an earlier run made and the config no longer asks for are removed here, and the
ones asked for are listed, so napari shows exactly what the config asks for. The optional TIFF is
written slice by slice from the store, for Fiji users with volumes that fit in memory a slice at a
time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from emseg.io import atomic_path
from emseg.omezarr import (
    build_level,
    level_tile,
    list_label_images,
    open_level,
    remove_label_image,
    set_complete,
    store_layout,
)

LOG = logging.getLogger("emseg")
IMAGEJ_LIMIT = 4 * 1024**3  # ImageJ's own TIFF reader stops at 4 GiB; beyond, write a BigTIFF
# OME-Zarr's unit names as ImageJ's calibration spells them (others it shows as written)
IMAGEJ_UNITS = {"nanometer": "nm", "micrometer": "micron", "millimeter": "mm"}


def forget_label_image(plan: Mapping[str, Any], name: str, records: Iterable[Path]) -> None:
    """Remove label image `name` of an earlier run from the store, with the job records that
    made it: the config no longer asks for it, and asking again makes it anew."""
    remove_label_image(store_layout(plan), name)
    for path in records:
        path.unlink(missing_ok=True)


def finish_volume(
    plan: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], labels: Sequence[str]
) -> dict[str, Any]:
    """Build the remaining levels of the image and of the label images `labels` (written by
    their stages), list those label images, and mark the store complete."""
    store = Path(plan["store"])
    stale = sorted({job["job"] for job in jobs if job.get("plan") != plan["plan_hash"]})
    if stale:
        raise RuntimeError(f"jobs {stale} were made for another plan of {plan['name']}")
    tile = level_tile(tuple(plan["chunks"]))
    for level in range(int(plan["job_levels"]), len(plan["levels"])):
        for label in [None, *labels]:
            build_level(store, level, label, tile)
    list_label_images(store_layout(plan), labels)
    seconds = sum(job["seconds"] for job in jobs)
    voxels = sum(job["voxels"] for job in jobs)
    summary = {
        "jobs": len(jobs),
        "job_seconds": seconds,
        "voxels": voxels,
        "voxels_per_job_second": voxels / max(seconds, 1e-9),
    }
    set_complete(store, True, summary)
    return {"name": plan["name"], "store": str(store), "shape": plan["shape"], **summary}


def write_tiff(store: Path, tiff: Path, plan: Mapping[str, Any]) -> None:
    """Level 0 as a multi-page TIFF that Fiji opens as a stack (BigTIFF past 4 GiB)."""
    image = open_level(store, 0, mode="r")
    size = int(np.prod(image.shape)) * image.dtype.itemsize
    imagej = size < IMAGEJ_LIMIT
    sz, sy, sx = plan["voxel_size"]
    metadata: dict[str, Any] = {"axes": "ZYX", "spacing": sz}
    if plan.get("unit"):
        metadata["unit"] = IMAGEJ_UNITS.get(plan["unit"], plan["unit"])
    with atomic_path(tiff) as tmp:
        tifffile.imwrite(
            tmp,
            _slices(image),
            shape=image.shape,
            dtype=image.dtype,
            imagej=imagej,
            bigtiff=not imagej,
            photometric="minisblack",
            resolution=(1.0 / sx, 1.0 / sy),
            metadata=metadata if imagej else None,
        )
    LOG.info("wrote %s (%.1f MB)", tiff, size / 1e6)


def _slices(image: Any) -> Iterator[np.ndarray]:
    for z in range(image.shape[0]):
        yield np.asarray(image[z])
