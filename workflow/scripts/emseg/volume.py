"""Lazy (z, y, x) volumes: read a user's stack one block at a time, whatever its format.

A volume is named by one string: a multi-page TIFF (also BigTIFF and big-endian), a folder of
numbered 2-D slices (PNG/TIFF), a zarr array or OME-Zarr image (`stack.zarr`, or
`store.zarr:/path/to/array`), or an HDF5 dataset (`file.h5:/path`). Opening reads the header
only: the shape, the pixel type and the voxel size where the file records one. `read` returns a
native-endian block in the file's own pixel type, so memory follows the block, never the volume
(a folder of PNGs, which cannot be read in part, holds one slice at a time).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile
from PIL import Image

from emseg.io import InputError, read_image, refuse_damage, slice_files, stack_series

# `file.h5:/dataset` and `store.zarr:/group/array`: a container file and the path inside it
INTERNAL_PATH = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|zarr))(?::(?P<key>.*))?$", re.I)
TIFF_SUFFIXES = (".tif", ".tiff")
VoxelSize = tuple[tuple[float, float, float] | None, str | None]  # (z, y, x), unit
# spellings of length units in TIFF, HDF5 and OME metadata -> the NGFF (UDUNITS-2) names
UNITS = {
    "nm": "nanometer",
    "nanometer": "nanometer",
    "um": "micrometer",
    "µm": "micrometer",
    "\\u00b5m": "micrometer",
    "micron": "micrometer",
    "micrometer": "micrometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "angstrom": "angstrom",
    "å": "angstrom",
}


class Volume(Protocol):
    """A (z, y, x) gray volume that reads blocks on demand."""

    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: tuple[float, float, float] | None  # z, y, x in `unit`, when the file says
    unit: str | None

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray: ...


@dataclass
class ArrayVolume:
    """A volume backed by anything numpy-sliceable: a memory map, a zarr or an HDF5 array."""

    name: str
    array: Any
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None
    squeeze: tuple[int, ...] = ()  # leading singleton axes (OME-Zarr t, c) to drop

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.array.shape)
        for axis in self.squeeze:
            if shape[axis] != 1:
                raise InputError(f"{self.name}: axis {axis} has {shape[axis]} entries, expected 1")
        kept = tuple(s for a, s in enumerate(shape) if a not in self.squeeze)
        self.shape = _as_zyx(self.name, kept)
        self.dtype = _check_dtype(self.name, np.dtype(self.array.dtype))
        self._prefix = len(shape) - len(kept) + (3 - len(kept))

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        index: tuple[Any, ...] = (0,) * len(self.squeeze)
        if len(self.array.shape) - len(self.squeeze) == 2:  # a single 2-D image
            block = np.asarray(self.array[(*index, y, x)])[np.newaxis][z]
        else:
            block = np.asarray(self.array[(*index, z, y, x)])
        return _native(block)


@dataclass
class SliceVolume:
    """Slices that can only be read whole (PNG files, TIFF pages); keeps the last one decoded."""

    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    load: Callable[[int], np.ndarray]  # slice index -> the whole 2-D slice
    voxel_size: tuple[float, float, float] | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        self._cached: tuple[int, np.ndarray] | None = None

    def read(self, z: slice, y: slice, x: slice) -> np.ndarray:
        planes = [self._slice(index)[y, x] for index in range(*z.indices(self.shape[0]))]
        return np.stack(planes) if planes else np.empty((0, 0, 0), self.dtype)

    def _slice(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self.load(index))
        return self._cached[1]


def open_volume(spec: str | Path) -> Volume:
    """Open the volume a config names, reading its header only; bad input names the file."""
    text = str(spec)
    match = INTERNAL_PATH.match(text)
    if match and match["file"].lower().endswith((".h5", ".hdf5", ".hdf")):
        return _open_hdf5(Path(match["file"]).expanduser(), match["key"] or "")
    if match and match["file"].lower().endswith(".zarr"):
        return _open_zarr(Path(match["file"]).expanduser(), match["key"] or "")
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if _is_zarr(path):
            return _open_zarr(path, "")
        return _open_folder(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(path)
    if path.suffix.lower() == ".png":
        return _open_folder_files(path, [path])
    raise InputError(
        f"{path}: unknown volume format; give a TIFF, a folder of slices, a .zarr or file.h5:/path"
    )


def volume_file(spec: str | Path) -> Path:
    """The file or folder on disk behind a volume name (the part before ':/' for HDF5/zarr)."""
    match = INTERNAL_PATH.match(str(spec))
    return Path(match["file"] if match else str(spec)).expanduser()


def _open_tiff(path: Path) -> Volume:
    try:
        with refuse_damage(path):
            tif = tifffile.TiffFile(path)
            series = stack_series(path, tif)
    except InputError:
        raise
    except Exception as error:  # tifffile raises many types for damaged files
        raise InputError(f"{path}: cannot read TIFF ({type(error).__name__}: {error})") from error
    voxel, unit = _tiff_voxel_size(tif)
    if len(series) > 1:  # written slice by slice: one 2-D series per page
        shape = _as_zyx(str(path), (len(series), *series[0].shape))
        dtype = _check_dtype(str(path), np.dtype(series[0].dtype))
        return SliceVolume(
            str(path), shape, dtype, lambda i: _native(series[i].asarray()), voxel, unit
        )
    try:
        array: Any = tifffile.memmap(path, series=0, mode="r")  # uncompressed: no copy at all
    except ValueError:  # compressed or scattered: chunked by strips or tiles
        import zarr

        array = zarr.open(tif.series[0].aszarr(), mode="r")
    return ArrayVolume(str(path), array, voxel, unit)


def _open_folder(path: Path) -> Volume:
    files = slice_files(path)
    if not files:
        raise InputError(f"{path}: folder holds no .png/.tif/.tiff slices")
    return _open_folder_files(path, files)


def _open_folder_files(path: Path, files: list[Path]) -> Volume:
    height, width, dtype = _plane_header(files[0])
    shape = _as_zyx(str(path), (len(files), height, width))
    dtype = _check_dtype(str(files[0]), dtype)

    def load(index: int) -> np.ndarray:
        array = _read_plane(files[index])
        if array.shape != shape[1:] or array.dtype != dtype:
            raise InputError(
                f"{files[index]}: slice of {array.shape} {array.dtype} differs from the first"
                f" slice ({shape[1:]} {dtype})"
            )
        return array

    return SliceVolume(str(path), shape, dtype, load)


def _plane_header(path: Path) -> tuple[int, int, np.dtype]:
    """Height, width and pixel type of a 2-D slice, from its header."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with refuse_damage(path), tifffile.TiffFile(path) as tif:
                series = stack_series(path, tif)[0]
                if len(series.shape) != 2:
                    raise InputError(f"{path}: expected a 2-D slice, got shape {series.shape}")
                return int(series.shape[0]), int(series.shape[1]), np.dtype(series.dtype)
        with Image.open(path) as image:
            return image.height, image.width, _read_plane(path).dtype
    except InputError:
        raise
    except Exception as error:  # Pillow and tifffile raise many types for damaged files
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def _read_plane(path: Path) -> np.ndarray:
    """One whole 2-D slice, native-endian; colour images are refused by name."""
    return _native(read_image(path))


def _open_hdf5(path: Path, key: str) -> Volume:
    import h5py

    if not path.is_file():
        raise InputError(f"{path}: no such HDF5 file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise InputError(f"{path}: cannot open HDF5 file ({error})") from error
    if not key:
        names = _hdf5_datasets(handle)
        raise InputError(f"{path}: name the dataset as {path}:/<path> (datasets: {names[:5]})")
    node = handle.get(key)
    if node is None or not isinstance(node, h5py.Dataset):
        names = _hdf5_datasets(handle)
        raise InputError(f"{path}:{key}: no such HDF5 dataset (datasets: {names[:5]})")
    voxel, unit = _hdf5_voxel_size(node.attrs)
    return ArrayVolume(f"{path}:{key}", node, voxel, unit)


def _hdf5_datasets(handle: Any) -> list[str]:
    import h5py

    names: list[str] = []
    handle.visititems(
        lambda name, node: names.append("/" + name) if isinstance(node, h5py.Dataset) else None
    )
    return names


def _is_zarr(path: Path) -> bool:
    return any((path / marker).exists() for marker in ("zarr.json", ".zarray", ".zgroup"))


def _open_zarr(path: Path, key: str) -> Volume:
    import zarr

    if not path.is_dir() or not _is_zarr(path):
        raise InputError(f"{path}: not a zarr store (no zarr.json, .zarray or .zgroup)")
    try:
        node = zarr.open(str(path), mode="r", path=key.strip("/") or None)
    except Exception as error:  # zarr raises KeyError, FileNotFoundError, NodeNotFound ...
        where = f"{path}:{key}" if key else str(path)
        raise InputError(f"{where}: no zarr array there ({type(error).__name__})") from error
    name = f"{path}:{key}" if key else str(path)
    if isinstance(node, zarr.Array):
        return ArrayVolume(name, node)
    return _open_ome_image(name, node)


def _open_ome_image(name: str, group: Any) -> Volume:
    """Level 0 of an OME-Zarr image group (NGFF 0.4 or 0.5), with its voxel size."""
    attrs = dict(group.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")
    if not multiscales:
        arrays = sorted(key for key, _ in group.arrays())
        raise InputError(f"{name}: a zarr group, not an array or OME-Zarr image (arrays: {arrays})")
    image = multiscales[0]
    axes = [axis["name"] if isinstance(axis, dict) else axis for axis in image.get("axes", [])]
    dataset = image["datasets"][0]
    array = group[dataset["path"]]
    if axes and "c" in axes and array.shape[axes.index("c")] > 1:
        raise InputError(f"{name}: {array.shape[axes.index('c')]} channels; give one channel")
    spatial = [a for a, axis in enumerate(axes) if axis in ("z", "y", "x")]
    squeeze = tuple(a for a in range(len(axes)) if a not in spatial)
    voxel, unit = _ome_voxel_size(image, dataset, axes, spatial)
    return ArrayVolume(name, array, voxel, unit, squeeze)


def _ome_voxel_size(
    image: dict[str, Any], dataset: dict[str, Any], axes: list[str], spatial: list[int]
) -> VoxelSize:
    scales = [t["scale"] for t in dataset.get("coordinateTransformations", []) if "scale" in t]
    if not scales:
        return None, None
    scale = [float(scales[0][a]) for a in spatial]
    described = image.get("axes", [])
    described = [described[a] for a in spatial if a < len(described)]  # not time's unit
    units = {axis.get("unit") for axis in described if isinstance(axis, dict)}
    units.discard(None)
    unit = UNITS.get(str(units.pop()).lower()) if len(units) == 1 else None
    return tuple(([1.0] * 3 + scale)[-3:]), unit  # type: ignore[return-value]


def _tiff_voxel_size(
    tif: tifffile.TiffFile,
) -> VoxelSize:
    """Voxel size from ImageJ metadata (spacing, unit, resolution) or OME-XML, else None."""
    page = tif.pages.first
    if tif.is_ome and tif.ome_metadata:
        found = _ome_xml_voxel_size(tif.ome_metadata)
        if found[0] is not None:
            return found
    meta = tif.imagej_metadata or {}
    try:
        x_res = page.tags["XResolution"].value
        y_res = page.tags["YResolution"].value
    except KeyError:
        return None, None
    if not meta or not x_res[0] or not y_res[0]:
        return None, None
    size_x, size_y = x_res[1] / x_res[0], y_res[1] / y_res[0]
    size_z = float(meta.get("spacing", 1.0))
    return (size_z, size_y, size_x), UNITS.get(str(meta.get("unit", "")).lower())


def _ome_xml_voxel_size(xml: str) -> VoxelSize:
    sizes = {}
    for axis in "ZYX":
        found = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
        if found:
            sizes[axis] = float(found.group(1))
    if "X" not in sizes or "Y" not in sizes:
        return None, None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    name = UNITS.get(unit.group(1).lower()) if unit else "micrometer"
    return (sizes.get("Z", 1.0), sizes["Y"], sizes["X"]), name


def _hdf5_voxel_size(attrs: Any) -> VoxelSize:
    """`element_size_um` (ilastik, Fiji's HDF5 plugin) or `resolution` (CREMI: nm), z y x."""
    for key, unit in (("element_size_um", "micrometer"), ("resolution", "nanometer")):
        if key in attrs:
            values = [float(v) for v in np.ravel(attrs[key])]
            if len(values) == 3:
                return (values[0], values[1], values[2]), unit
    return None, None


def _as_zyx(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A 2-D image becomes one slice; anything but 2-D or 3-D is refused by name."""
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise InputError(
            f"{name}: {len(shape)}-D volume of shape {shape}; give one gray channel as (z, y, x)"
        )
    if min(shape) < 1:
        raise InputError(f"{name}: volume of shape {shape} is empty")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_dtype(name: str, dtype: np.dtype) -> np.dtype:
    if dtype.kind not in "uifb" or dtype.itemsize > 8:
        raise InputError(f"{name}: unsupported pixel type {dtype}; give 8/16-bit or float gray")
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _native(block: np.ndarray) -> np.ndarray:
    """Native byte order (big-endian TIFFs), and bool as uint8."""
    if block.dtype == np.bool_:
        return block.astype(np.uint8)
    if block.dtype.byteorder not in ("=", "|"):
        return block.astype(block.dtype.newbyteorder("="))
    return block


def describe(volume: Volume) -> dict[str, Any]:
    """The header facts of a volume, for logs and records."""
    return {
        "volume": volume.name,
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "voxel_size": list(volume.voxel_size) if volume.voxel_size else None,
        "unit": volume.unit,
    }
