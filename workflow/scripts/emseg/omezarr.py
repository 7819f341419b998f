"""The OME-Zarr output of an applied volume: a multiscale image with label images beside it.

Layout (NGFF 0.4 on zarr v2 by default, the version Fiji, napari and BigDataViewer all read; 0.5 on
zarr v3 on request):

    <name>.ome.zarr/          multiscale image: the membrane probability, levels 0, 1, ...
        labels/mask/          multiscale label image: 1 = membrane (p >= predict.threshold)
        labels/cells/         multiscale label image: one id per cell (the segmentation stage)

Every level halves y and x and keeps z (serial sections are anisotropic). The image is created
empty, with all its metadata, before any job runs; each job then writes only its own chunks, and
the group metadata records which volume the store holds, so a store that holds another volume is
refused instead of overwritten. The label images are made from the stored probability and added
later (`add_label_image`), each by its own stage; apply_finish lists the ones asked for
(`list_label_images`), so a viewer sees them once they are whole. Metadata files are written
atomically. napari opens the store with the image and its labels as layers; napari-ome-zarr, Fiji
(N5/OME-Zarr) and BigDataViewer read it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emseg.blocks import BlockGrid, Bounds, Shape, level_bounds
from emseg.io import InputError, atomic_path
from emseg.progress import progress

NGFF_VERSIONS = ("0.4", "0.5")
MASK_COLOUR = [255, 0, 255, 255]  # magenta membrane, as in the report's overlays


@dataclass(frozen=True)
class Layout:
    """What the store holds: level shapes, chunks, pixel types, voxel size and the NGFF version."""

    path: Path
    levels: list[Shape]
    chunks: Shape
    dtype: str  # of the probability image: float32 or uint8 (p x 255)
    voxel_size: tuple[float, float, float]
    unit: str | None
    ngff: str = "0.4"

    @property
    def zarr_format(self) -> int:
        return 2 if self.ngff == "0.4" else 3


def store_layout(plan: Mapping[str, Any]) -> Layout:
    """The OME-Zarr a plan's block jobs write the probability into.

    The label images (mask, cells) are not part of the plan: their stages add them to the store,
    so that asking for them, or changing how they are made, leaves the prediction alone.
    """
    output = plan["output"]
    return Layout(
        path=Path(plan["store"]),
        levels=[tuple(level) for level in plan["levels"]],
        chunks=tuple(plan["chunks"]),
        dtype=output["dtype"],
        voxel_size=tuple(plan["voxel_size"]),
        unit=plan["unit"],
        ngff=plan["ngff"],
    )


def create_store(layout: Layout, record: Mapping[str, Any]) -> None:
    """Create the empty store (arrays and metadata), or refuse one that holds another volume.

    `record` says which volume the store is for (input, shape, pixel type). A store left by an
    earlier run of the same volume is reused: its chunks stay (the jobs overwrite them) unless the
    arrays themselves change (chunks, pixel type, levels), which empties it. One made for
    anything else is an InputError naming it.
    """
    path = layout.path
    arrays = _array_signature(layout)
    record = {**record, "arrays": arrays}
    if path.exists():
        held = stored_record(path)
        if held is None or _identity(held) != _identity(record):
            what = f"{held['input']} {held['shape']}" if held else "data emseg did not write"
            raise InputError(
                f"{path}: already holds a different volume ({what}); delete it or give this"
                " volume another name under apply.volumes"
            )
        if held.get("arrays") == arrays:
            _write_metadata(layout, record)
            return
        shutil.rmtree(path)
    _write_metadata(layout, record)
    for level, shape in enumerate(layout.levels):
        _create_array(path / str(level), shape, layout.chunks, layout.dtype, layout.zarr_format)


def add_label_image(layout: Layout, name: str, dtype: str) -> None:
    """Create label image `name` (every level, empty) in a store, unlisted until apply_finish.

    The mask and the cells are added this way once the probability is written, so asking for
    them later, or for other ones, needs neither a new store nor a new prediction. Only one job
    of a volume adds each label image, and none writes the labels group's list, so stages running
    side by side never overwrite each other's metadata.
    """
    folder = layout.path / "labels" / name
    for level, shape in enumerate(layout.levels):
        _create_array(folder / str(level), shape, layout.chunks, dtype, layout.zarr_format)
    _write_group(folder, layout, _label_image_metadata(layout, name), None)


def remove_label_image(layout: Layout, name: str) -> None:
    """Delete label image `name` from a store, if there (list_label_images then unlists it)."""
    if (layout.path / "labels" / name).exists():
        shutil.rmtree(layout.path / "labels" / name)


def listed_labels(path: Path) -> list[str]:
    """The label images a store's labels group lists (napari shows these)."""
    attributes = _read_attributes(path / "labels") or {}
    return list(attributes.get("ome", attributes).get("labels", []))


def list_label_images(layout: Layout, names: Sequence[str]) -> None:
    """Write the labels group's list; without any label image the group goes."""
    names = list(dict.fromkeys(names))
    if names:
        _write_group(layout.path / "labels", layout, _labels_metadata(layout, names), None)
    elif (layout.path / "labels").exists():
        shutil.rmtree(layout.path / "labels")


def _array_signature(layout: Layout) -> dict[str, Any]:
    return {
        "levels": [list(level) for level in layout.levels],
        "chunks": list(layout.chunks),
        "dtype": layout.dtype,
        "ngff": layout.ngff,
    }


def _write_metadata(layout: Layout, record: Mapping[str, Any]) -> None:
    """The metadata of the image group, with the emseg record."""
    _write_group(layout.path, layout, _image_metadata(layout, "membrane probability"), record)


def stored_record(path: Path) -> dict[str, Any] | None:
    """The emseg record in a store's group metadata (None when there is none)."""
    attrs = _read_attributes(path)
    return attrs.get("emseg") if attrs else None


def set_complete(path: Path, complete: bool, summary: Mapping[str, Any] | None = None) -> None:
    """Record in the group metadata whether every block and level is written (and a summary)."""
    for name in (".zattrs", "zarr.json"):
        metadata = path / name
        if metadata.is_file():
            content = json.loads(metadata.read_text())
            attributes = content if name == ".zattrs" else content["attributes"]
            record = {**attributes.get("emseg", {}), "complete": complete, **(summary or {})}
            attributes["emseg"] = record
            _write_json(metadata, content)


def open_level(path: Path, level: int, label: str | None = None, mode: str = "r+") -> Any:
    """Level `level` of the image (or of label image `label`) as a zarr array."""
    import zarr

    folder = path / "labels" / label if label else path
    return zarr.open_array(str(folder / str(level)), mode=mode)


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """Halve y and x by the mean of each 2 x 2 cell; cells cut by an odd border use what exists.

    Sums four strided views in float32: a writer thread runs this beside the network, and a
    reduction over reshaped axes in float64 took a third of its time (0.1 s per 2048^2 slice).
    """
    _, y, x = block.shape
    data = np.asarray(block, dtype=np.float32)
    odd = (0, y % 2), (0, x % 2)
    if odd == ((0, 0), (0, 0)):
        return _sum_2x2(data) * np.float32(0.25)
    counts = _sum_2x2(np.pad(np.ones((y, x), dtype=np.float32), odd))
    return _sum_2x2(np.pad(data, ((0, 0), *odd))) / counts


def _sum_2x2(array: np.ndarray) -> np.ndarray:
    """Sum of each 2 x 2 cell of the last two axes (both even)."""
    return (
        array[..., 0::2, 0::2]
        + array[..., 1::2, 0::2]
        + array[..., 0::2, 1::2]
        + array[..., 1::2, 1::2]
    )


def downsample_labels(block: np.ndarray) -> np.ndarray:
    """Halve y and x of a label image by taking every second pixel (labels must not be averaged)."""
    return block[:, ::2, ::2]


def write_label_levels(levels: Sequence[Any], bounds: Bounds, labels: np.ndarray) -> None:
    """A block's labels into `levels` (level 0 first): the pyramid levels inside the block."""
    for level, array in enumerate(levels):
        if level:
            labels = downsample_labels(labels)
        z0, z1, y0, y1, x0, x1 = level_bounds(bounds, level)
        array[z0:z1, y0:y1, x0:x1] = labels


def quantize(prob: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as stored: float32, or uint8 = round(p x 255)."""
    if dtype == "uint8":
        return np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
    return prob.astype(np.float32)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """Stored probabilities back as float32 in [0, 1] (uint8 steps divided by 255)."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255)
    return np.asarray(stored, dtype=np.float32)


def level_tile(chunks: Shape) -> Shape:
    """The target tile `build_level` works in: a few chunks, so memory stays small."""
    factor = max(1, math.ceil(2048 / max(chunks[1], chunks[2])))
    return chunks[0], chunks[1] * factor, chunks[2] * factor


def build_level(path: Path, level: int, label: str | None, tile: Shape) -> None:
    """Compute level `level` from level `level - 1`, one tile of `tile` target voxels at a time."""
    source, target = open_level(path, level - 1, label), open_level(path, level, label)
    grid = BlockGrid(tuple(target.shape), tile)
    name = f"{label} level {level}" if label else f"level {level}"
    for index in progress(range(len(grid)), desc=name, unit="tile"):
        z0, z1, y0, y1, x0, x1 = grid.bounds(index)
        block = source[z0:z1, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
        if label:
            target[z0:z1, y0:y1, x0:x1] = downsample_labels(block)
        else:
            mean = downsample_mean(block)
            stored = np.rint(mean) if target.dtype == np.uint8 else mean
            target[z0:z1, y0:y1, x0:x1] = stored.astype(target.dtype)


def _identity(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return record.get("input"), list(record.get("shape", [])), record.get("dtype")


def _create_array(folder: Path, shape: Shape, chunks: Shape, dtype: str, zarr_format: int) -> None:
    import zarr
    from zarr.codecs import BloscCodec

    options: dict[str, Any] = {"zarr_format": zarr_format, "fill_value": 0, "overwrite": True}
    if zarr_format == 2:
        from numcodecs import Blosc

        options |= {
            "compressors": Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE),
            "chunk_key_encoding": {"name": "v2", "separator": "/"},
        }
    else:
        options |= {
            "compressors": BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
            "dimension_names": ["z", "y", "x"],
        }
    chunk = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    zarr.create_array(str(folder), shape=shape, chunks=chunk, dtype=dtype, **options)


def _axes(layout: Layout) -> list[dict[str, str]]:
    axes = [{"name": name, "type": "space"} for name in "zyx"]
    if layout.unit:
        for axis in axes:
            axis["unit"] = layout.unit
    return axes


def _multiscale(layout: Layout, name: str, kind: str) -> dict[str, Any]:
    sz, sy, sx = layout.voxel_size
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [
                {"type": "scale", "scale": [sz, sy * 2**level, sx * 2**level]},
                *(_level_offset(layout, level) if kind == "mean" else []),
            ],
        }
        for level in range(len(layout.levels))
    ]
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": _axes(layout),
        "datasets": datasets,
        "type": kind,
        "metadata": {"description": f"{kind} of 2 x 2 pixels in y and x per level; z kept"},
    }
    if layout.ngff == "0.4":
        multiscale["version"] = "0.4"
    return multiscale


def _level_offset(layout: Layout, level: int) -> list[dict[str, Any]]:
    """A mean level's pixel centres lie between the pixels they average, so levels overlay exactly.

    Label levels take every second pixel, so their centres stay put and need no translation.
    """
    if level == 0:
        return []
    _, sy, sx = layout.voxel_size
    shift = (2**level - 1) / 2
    return [{"type": "translation", "translation": [0.0, sy * shift, sx * shift]}]


def _image_metadata(layout: Layout, name: str) -> dict[str, Any]:
    top = 255 if layout.dtype == "uint8" else 1
    omero = {
        "channels": [
            {
                "label": name,
                "color": "FFFFFF",
                "window": {"start": 0, "end": top, "min": 0, "max": top},
                "active": True,
                "coefficient": 1,
                "family": "linear",
                "inverted": False,
            }
        ],
        "rdefs": {"model": "greyscale", "defaultZ": layout.levels[0][0] // 2},
    }
    multiscales = {"multiscales": [_multiscale(layout, name, "mean")], "omero": omero}
    return _versioned(layout, multiscales)


def _labels_metadata(layout: Layout, names: list[str]) -> dict[str, Any]:
    return _versioned(layout, {"labels": names})


def _label_image_metadata(layout: Layout, name: str) -> dict[str, Any]:
    image_label: dict[str, Any] = {"source": {"image": "../../"}}
    if name == "mask":
        image_label["colors"] = [{"label-value": 1, "rgba": MASK_COLOUR}]
    if layout.ngff == "0.4":
        image_label["version"] = "0.4"
    content = {"multiscales": [_multiscale(layout, name, "nearest")], "image-label": image_label}
    return _versioned(layout, content)


def _versioned(layout: Layout, content: dict[str, Any]) -> dict[str, Any]:
    """NGFF 0.4 keeps the keys at the top of the attributes, 0.5 under `ome` with the version."""
    if layout.ngff == "0.4":
        return content
    return {"ome": {"version": "0.5", **content}}


def _write_group(
    folder: Path, layout: Layout, attributes: dict[str, Any], record: Mapping[str, Any] | None
) -> None:
    """Write a group's metadata file(s) atomically (zarr v2: .zgroup + .zattrs; v3: zarr.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    if record is not None:
        attributes = {**attributes, "emseg": dict(record)}
    if layout.zarr_format == 2:
        _write_json(folder / ".zgroup", {"zarr_format": 2})
        _write_json(folder / ".zattrs", attributes)
    else:
        _write_json(
            folder / "zarr.json",
            {"zarr_format": 3, "node_type": "group", "attributes": attributes},
        )


def _read_attributes(folder: Path) -> dict[str, Any] | None:
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        path = folder / name
        if path.is_file():
            try:
                content = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return content.get(key, {}) if key else content
    return None


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
