"""Lazy volume readers: every format reads the blocks numpy slicing gives; bad input is named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from emseg.io import InputError
from emseg.volume import open_volume, volume_file

BLOCKS = [
    (slice(0, 5), slice(0, 37), slice(0, 53)),
    (slice(1, 4), slice(3, 30), slice(10, 50)),
    (slice(4, 5), slice(36, 37), slice(0, 1)),
]


def _stack(dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 20, (5, 37, 53)).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, (5, 37, 53), endpoint=True).astype(dtype)


def _writers(folder: Path, stack: np.ndarray) -> dict[str, str]:
    """The same stack in every format a volume can come in; name -> volume spec."""
    gray = {"photometric": "minisblack"}
    tifffile.imwrite(folder / "plain.tif", stack, **gray)
    tifffile.imwrite(folder / "big_endian.tif", stack, bigtiff=True, byteorder=">", **gray)
    tifffile.imwrite(folder / "tiled.tif", stack, compression="zlib", tile=(16, 16), **gray)
    with tifffile.TiffWriter(folder / "pages.tif") as writer:
        for plane in stack:
            writer.write(plane, compression="zlib", **gray)
    (folder / "slices").mkdir()
    for index, plane in enumerate(stack):
        tifffile.imwrite(folder / "slices" / f"section_{index}.tif", plane, **gray)
    array = zarr.create_array(
        folder / "array.zarr", shape=stack.shape, dtype=stack.dtype, chunks=(1, 16, 16)
    )
    array[:] = stack
    group = zarr.open_group(folder / "nested.zarr", mode="w")
    group.create_array("raw/data", shape=stack.shape, dtype=stack.dtype, chunks=(2, 8, 8))[:] = (
        stack
    )
    with h5py.File(folder / "volume.h5", "w") as handle:
        handle.create_dataset("raw", data=stack, chunks=(1, 16, 16))
    return {
        "plain": str(folder / "plain.tif"),
        "big_endian": str(folder / "big_endian.tif"),
        "tiled": str(folder / "tiled.tif"),
        "pages": str(folder / "pages.tif"),
        "slices": str(folder / "slices"),
        "array": str(folder / "array.zarr"),
        "nested": f"{folder / 'nested.zarr'}:/raw/data",
        "hdf5": f"{folder / 'volume.h5'}:/raw",
    }


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_every_format_reads_the_blocks_of_the_stack(tmp_path: Path, dtype: type) -> None:
    stack = _stack(dtype)
    for name, spec in _writers(tmp_path, stack).items():
        volume = open_volume(spec)
        assert volume.shape == stack.shape, name
        assert volume.dtype == stack.dtype, name
        for block in BLOCKS:
            read = volume.read(*block)
            assert read.dtype.isnative, name
            np.testing.assert_array_equal(read, stack[block], err_msg=name)


# LZW and zstd need imagecodecs; these are what Fiji, QuPath and many microscopes write
ZSTD = pytest.mark.skipif(not imagecodecs.ZSTD.available, reason="no zstd in imagecodecs")
COMPRESSIONS = ["lzw", "zlib", "deflate", pytest.param("zstd", marks=ZSTD)]


def _compressed(folder: Path, stack: np.ndarray, compression: str) -> dict[str, str]:
    """The stack as compressed TIFFs: striped and tiled stacks, pages and a slice folder."""
    gray = {"photometric": "minisblack", "compression": compression}
    tifffile.imwrite(folder / "strips.tif", stack, rowsperstrip=8, **gray)
    tifffile.imwrite(folder / "tiles.tif", stack, tile=(16, 16), **gray)
    with tifffile.TiffWriter(folder / "pages.tif") as writer:
        for plane in stack:
            writer.write(plane, **gray)
    (folder / "slices").mkdir()
    for index, plane in enumerate(stack):
        tifffile.imwrite(folder / "slices" / f"{index}.tif", plane, **gray)
    names = ("strips.tif", "tiles.tif", "pages.tif", "slices")
    return {name: str(folder / name) for name in names}


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_compressed_tiffs_read_block_by_block(
    tmp_path: Path, compression: str, dtype: type
) -> None:
    stack = _stack(dtype)
    for name, spec in _compressed(tmp_path, stack, compression).items():
        volume = open_volume(spec)
        assert volume.shape == stack.shape and volume.dtype == stack.dtype, name
        for block in BLOCKS:
            np.testing.assert_array_equal(volume.read(*block), stack[block], err_msg=name)


def _palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> None:
    image = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    image.putpalette([channel for colour in palette for channel in colour])
    image.save(path)


def test_gray_palette_png_slices_read_as_gray_values(tmp_path: Path) -> None:
    indices = np.random.default_rng(4).integers(0, 50, (3, 37, 53)).astype(np.uint8)
    gray = np.asarray([250 - 5 * index for index in range(50)], np.uint8)
    for index, plane in enumerate(indices):
        _palette_png(tmp_path / f"{index}.png", plane, [(g, g, g) for g in gray.tolist()])
    volume = open_volume(tmp_path)
    assert volume.dtype == np.uint8
    block = (slice(1, 3), slice(5, 30), slice(2, 40))
    np.testing.assert_array_equal(volume.read(*block), gray[indices][block])


def test_a_coloured_palette_png_is_refused_by_name(tmp_path: Path) -> None:
    indices = np.tile(np.array([[0, 1]], np.uint8), (20, 10))
    _palette_png(tmp_path / "overlay.png", indices, [(0, 0, 0), (0, 255, 0)])
    with pytest.raises(InputError, match=r"overlay\.png: palette \(indexed-colour\) PNG with"):
        open_volume(tmp_path / "overlay.png")


def test_png_slices_are_read_in_numbered_order(tmp_path: Path) -> None:
    stack = _stack(np.uint8)
    for index in (2, 0, 10, 1, 3):  # 10 after 3: numbers, not text, order the sections
        Image.fromarray(stack[min(index, 4)]).save(tmp_path / f"z{index}.png")
    volume = open_volume(tmp_path)
    assert volume.shape == (5, 37, 53)
    expected = stack[[0, 1, 2, 3, 4]]
    np.testing.assert_array_equal(volume.read(slice(0, 5), slice(0, 37), slice(0, 53)), expected)


def test_a_single_image_is_a_one_slice_volume(tmp_path: Path) -> None:
    plane = _stack(np.uint16)[0]
    tifffile.imwrite(tmp_path / "one.tif", plane, photometric="minisblack")
    volume = open_volume(tmp_path / "one.tif")
    assert volume.shape == (1, 37, 53)
    np.testing.assert_array_equal(
        volume.read(slice(0, 1), slice(2, 9), slice(4, 8))[0], plane[2:9, 4:8]
    )


def test_voxel_sizes_come_from_the_file(tmp_path: Path) -> None:
    stack = _stack(np.uint8)
    tifffile.imwrite(
        tmp_path / "imagej.tif",
        stack,
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"},
    )
    volume = open_volume(tmp_path / "imagej.tif")
    assert volume.voxel_size == pytest.approx((0.05, 0.004, 0.004))
    assert volume.unit == "micrometer"
    with h5py.File(tmp_path / "cremi.h5", "w") as handle:
        handle.create_dataset("volumes/raw", data=stack).attrs["resolution"] = [40.0, 4.0, 4.0]
    volume = open_volume(f"{tmp_path / 'cremi.h5'}:/volumes/raw")
    assert volume.voxel_size == (40.0, 4.0, 4.0) and volume.unit == "nanometer"


@pytest.mark.parametrize(
    "leading",
    [{"name": "c", "type": "channel"}, {"name": "t", "type": "time", "unit": "second"}],
)
def test_an_ome_zarr_image_is_read_from_its_first_level(tmp_path: Path, leading: dict) -> None:
    """A time axis's own unit must not hide the spatial one."""
    stack = _stack(np.uint16)
    group = zarr.open_group(tmp_path / "image.ome.zarr", mode="w", zarr_format=2)
    group.create_array("0", shape=(1, *stack.shape), dtype=stack.dtype, chunks=(1, 1, 16, 16))[
        :
    ] = stack[None]
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                leading,
                *({"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"),
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 50, 4, 4]}],
                }
            ],
        }
    ]
    volume = open_volume(tmp_path / "image.ome.zarr")
    assert volume.shape == stack.shape
    assert volume.voxel_size == (50.0, 4.0, 4.0) and volume.unit == "nanometer"
    np.testing.assert_array_equal(volume.read(*BLOCKS[1]), stack[BLOCKS[1]])


def _rgb(folder: Path) -> None:
    tifffile.imwrite(folder / "rgb.tif", np.zeros((5, 20, 20, 3), np.uint8))


def _four_d(folder: Path) -> None:
    zarr.create_array(folder / "four.zarr", shape=(2, 3, 20, 20), dtype="u1")


def _hdf5(folder: Path) -> None:
    with h5py.File(folder / "v.h5", "w") as handle:
        handle.create_dataset("raw", (2, 20, 20), dtype="u1")


def _group(folder: Path) -> None:
    zarr.open_group(folder / "group.zarr", mode="w")


@pytest.mark.parametrize(
    ("spec", "make", "message"),
    [
        ("rgb.tif", _rgb, r"rgb\.tif: 3 samples per pixel"),
        ("four.zarr", _four_d, r"four\.zarr: 4-D volume of shape \(2, 3, 20, 20\)"),
        ("v.h5:/missing", _hdf5, r"v\.h5:/missing: no such HDF5 dataset"),
        ("v.h5", _hdf5, r"v\.h5: name the dataset as .*v\.h5:/<path> \(datasets: \['/raw'\]\)"),
        ("group.zarr:/missing", _group, r"group\.zarr:/missing: no zarr array there"),
        ("nothing.tif", _group, r"nothing\.tif: no such file or folder"),
    ],
)
def test_bad_volumes_are_refused_by_name(
    tmp_path: Path, spec: str, make: Callable[[Path], None], message: str
) -> None:
    make(tmp_path)
    with pytest.raises(InputError, match=message):
        open_volume(f"{tmp_path}/{spec}")


def test_a_slice_of_another_size_in_a_folder_is_named(tmp_path: Path) -> None:
    for index, size in enumerate((20, 20, 24)):
        tifffile.imwrite(
            tmp_path / f"{index}.tif", np.zeros((size, 20), np.uint8), photometric="minisblack"
        )
    volume = open_volume(tmp_path)
    volume.read(slice(0, 2), slice(0, 20), slice(0, 20))
    with pytest.raises(InputError, match=r"2\.tif: slice of \(24, 20\)"):
        volume.read(slice(2, 3), slice(0, 20), slice(0, 20))


def test_volume_file_is_the_container_on_disk() -> None:
    assert volume_file("/data/v.h5:/raw/data") == Path("/data/v.h5")
    assert volume_file("/data/stack.zarr:/a/b") == Path("/data/stack.zarr")
    assert volume_file("/data/stack.tif") == Path("/data/stack.tif")
