"""Planning the application of models to one volume: the record every block job works from.

The plan fixes, before any block is predicted, what each job needs and what must be the same for
all of them: the volume's shape, the blocks and chunks, the pyramid, each model's normalisation
and tile size, and the empty OME-Zarr store the jobs write into. Normalisation comes from the
model file (`model`: the gray-value scaling fitted on the training slices) or is fitted on the new
volume (`fit`: the same percentiles, on a fixed subsample read block by block).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg.blocks import BlockGrid, job_count, levels_per_job, pyramid_shapes
from emseg.dataset import MIN_SIDE
from emseg.io import InputError
from emseg.model_file import ModelFile, load_model_file
from emseg.models.geometry import Geometry
from emseg.omezarr import create_store, store_layout
from emseg.preprocess import Normalization, fit_normalization
from emseg.settings import config_hash
from emseg.tiling import TileOptions, tile_work
from emseg.volume import Volume, describe, open_volume

LOG = logging.getLogger("emseg")
SUBSAMPLE_SLICES = 16  # slices spread over the volume for `normalization: fit`
SUBSAMPLE_PATCHES = 4  # patches per axis in each of those slices
SUBSAMPLE_PATCH = 256  # patch side in pixels: at most 16 x 4 x 4 x 256 x 256 = 16.8 M values
TILE_WORK_WARNING = 1.25  # warn when blocks make the network compute each tile this often


def make_plan(
    name: str,
    settings: Mapping[str, Any],
    predict: Mapping[str, Any],
    store: Path,
) -> dict[str, Any]:
    """Check the volume and models, choose normalisations and tiles, create the store."""
    volume = open_volume(settings["input"])
    if list(volume.shape) != list(settings["shape"]):
        raise InputError(
            f"{volume.name}: shape {volume.shape} changed since snakemake planned"
            f" {tuple(settings['shape'])}; run snakemake again"
        )
    models = [load_model_file(path) for path in settings["models"]]
    fitted = _fit_if_asked(volume, settings, models)
    if fitted is None:
        _check_model_scaling(name, volume, models)
    members = [_member(model, volume, settings, predict, fitted) for model in models]
    _warn_of_repeated_tiles(volume, settings, predict, models, members)
    voxel_size, unit = _voxel_size(volume, settings)
    shape = tuple(volume.shape)
    chunks = tuple(int(c) for c in settings["chunks"])
    block = tuple(int(b) for b in settings["block"])
    levels = pyramid_shapes(shape, chunks)
    grid = BlockGrid(shape, block)
    output = {"dtype": settings["dtype"]}
    plan: dict[str, Any] = {
        "name": name,
        "volume": str(settings["input"]),
        "store": str(store),
        **describe(volume),
        "voxel_size": list(voxel_size),
        "unit": unit,
        "block": list(block),
        "chunks": list(chunks),
        "blocks": len(grid),
        "blocks_per_job": int(settings["blocks_per_job"]),
        "jobs": job_count(len(grid), int(settings["blocks_per_job"])),
        "levels": [list(level) for level in levels],
        "job_levels": levels_per_job(block, chunks, len(levels)),
        "halo_z": 0,  # 2-D networks; a volumetric network would read this many slices each side
        "members": members,
        "predict": {key: predict[key] for key in ("batch_size", "overlap", "tta")},
        "output": output,
        "ngff": str(settings["ngff"]),
    }
    plan["plan_hash"] = config_hash(plan)
    record = {"input": plan["volume"], "shape": list(shape), "dtype": plan["dtype"]}
    create_store(store_layout(plan), record | {"plan_hash": plan["plan_hash"], "complete": False})
    return plan


def fit_volume_normalization(volume: Volume, lower: float, upper: float) -> Normalization:
    """Percentile scaling fitted on a fixed subsample: evenly spread slices and patches.

    The same volume always gives the same sample, and memory stays at a few tens of MB whatever
    the volume's size.
    """
    depth, height, width = volume.shape
    slices = np.unique(np.linspace(0, depth - 1, min(depth, SUBSAMPLE_SLICES)).round().astype(int))
    rows = _patch_starts(height)
    cols = _patch_starts(width)
    values = [
        volume.read(
            slice(z, z + 1), slice(r, r + SUBSAMPLE_PATCH), slice(c, c + SUBSAMPLE_PATCH)
        ).ravel()
        for z in slices
        for r in rows
        for c in cols
    ]
    sample = np.concatenate(values)
    if sample.dtype.kind == "f" and not np.isfinite(sample).all():
        raise InputError(f"{volume.name}: image contains NaN or infinite values")
    return fit_normalization(sample, lower, upper)


def _patch_starts(size: int) -> list[int]:
    if size <= SUBSAMPLE_PATCH:
        return [0]
    count = min(SUBSAMPLE_PATCHES, size // SUBSAMPLE_PATCH)
    return [int(s) for s in np.linspace(0, size - SUBSAMPLE_PATCH, count).round()]


def _fit_if_asked(
    volume: Volume, settings: Mapping[str, Any], models: Sequence[ModelFile]
) -> Normalization | None:
    if settings["normalization"] != "fit":
        return None
    reference = next((m.normalization for m in models if m.normalization), None)
    lower = reference.lower_percentile if reference else 1.0
    upper = reference.upper_percentile if reference else 99.0
    fitted = fit_volume_normalization(volume, lower, upper)
    LOG.info(
        "fitted on %s: gray values %.1f -> 0 and %.1f -> 1 (percentiles %g, %g)",
        volume.name,
        fitted.low,
        fitted.high,
        lower,
        upper,
    )
    return fitted


def _check_model_scaling(name: str, volume: Volume, models: Sequence[ModelFile]) -> None:
    """Refuse a model's gray-value scaling that puts the volume's whole range outside 0-1.

    The network learnt on slices scaled to about 0-1; a volume whose 1-99 % range lands beyond
    (16-bit data with a model of 8-bit slices, or the reverse) gives a flat, meaningless map.
    """
    own_scalings: dict[tuple[float, float], Normalization] = {}  # an ensemble shares its sample
    for model in models:
        norm = model.normalization
        if norm is None:
            continue  # named by _member
        percentiles = (norm.lower_percentile, norm.upper_percentile)
        if percentiles not in own_scalings:
            own_scalings[percentiles] = fit_volume_normalization(volume, *percentiles)
        own = own_scalings[percentiles]
        low, high = norm.apply(np.array([own.low, own.high]))
        if low >= 1.0 or high <= 0.0:
            raise InputError(
                f"apply.volumes.{name}.normalization: {model.path.name} scales gray values"
                f" {norm.low:g}-{norm.high:g} to 0-1, which puts {volume.name}'s"
                f" ({volume.dtype}, {own.low:g}-{own.high:g}) at {low:.2f}-{high:.2f};"
                " set normalization: fit to scale the volume by its own percentiles"
            )


def _member(
    model: ModelFile,
    volume: Volume,
    settings: Mapping[str, Any],
    predict: Mapping[str, Any],
    fitted: Normalization | None,
) -> dict[str, Any]:
    """One model's entry in the plan: file, normalisation and tile size."""
    normalization = fitted or model.normalization
    if normalization is None:
        raise InputError(
            f"{model.path}: the model file holds no gray-value normalisation (written before"
            " emseg 0.2); retrain it or set apply.normalization: fit"
        )
    geometry = model.geometry
    minimum = max(MIN_SIDE, geometry.multiple)
    if min(volume.shape[1:]) < minimum:
        raise InputError(
            f"{volume.name}: slices of {volume.shape[1]} x {volume.shape[2]} px are smaller than"
            f" the network's minimum of {minimum} x {minimum} px"
        )
    return {
        "model": str(model.path),
        "normalization": normalization.to_dict(),
        "tile_size": _tile_size(geometry, int(predict["tile_size"]), model),
        "margin": geometry.margin,
    }


def _warn_of_repeated_tiles(
    volume: Volume,
    settings: Mapping[str, Any],
    predict: Mapping[str, Any],
    models: Sequence[ModelFile],
    members: Sequence[Mapping[str, Any]],
) -> None:
    """Say so when blocks smaller than a slice make the network compute its tiles many times.

    Each block predicts every tile of the slice's grid that reaches into it (so blocks meet
    without seams); with blocks no larger than a tile that costs several times the whole slice.
    """
    shape = (volume.shape[1], volume.shape[2])
    block = (int(settings["block"][1]), int(settings["block"][2]))
    works: dict[int, float] = {}  # one line per tile size: an ensemble's models mostly share it
    for model, member in zip(models, members, strict=True):
        tile = int(member["tile_size"])
        options = TileOptions(tile_size=tile, overlap=float(predict["overlap"]))
        works[tile] = max(works.get(tile, 0.0), tile_work(model.geometry, shape, block, options))
    for tile, work in works.items():
        if work > TILE_WORK_WARNING:
            LOG.warning(
                "apply.block: blocks of %d x %d px compute each %d px tile of %s's %d x %d px"
                " slices %.1f times on average (blocks of whole slices: once each); larger"
                " blocks predict faster",
                *block,
                tile,
                volume.name,
                *shape,
                work,
            )


def _tile_size(geometry: Geometry, wanted: int, model: ModelFile) -> int:
    """predict.tile_size when the network accepts it, else the nearest size it does."""
    if geometry.is_valid(wanted):
        return wanted
    below, above = geometry.nearest_valid_sizes(wanted)
    chosen = below or above
    LOG.info("%s: predict.tile_size %d is not valid for it; using %d", model.path, wanted, chosen)
    return chosen


def _voxel_size(
    volume: Volume, settings: Mapping[str, Any]
) -> tuple[tuple[float, float, float], str | None]:
    """The config's voxel size and unit where given, else the file's, else 1 and no unit."""
    given = [float(v) for v in settings.get("voxel_size") or []]
    if given:
        return (given[0], given[1], given[2]), settings.get("unit") or None
    if volume.voxel_size is not None:
        return volume.voxel_size, settings.get("unit") or volume.unit
    LOG.warning(
        "%s records no voxel size; writing 1 x 1 x 1 (set apply.voxel_size: [z, y, x])",
        volume.name,
    )
    return (1.0, 1.0, 1.0), settings.get("unit") or None
