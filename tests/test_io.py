"""Tests of emseg.io: atomic writes, stack reading and writing, JSON records and checksums."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from emseg.io import (
    InputError,
    atomic_path,
    count_slices,
    read_json,
    read_stack,
    sha256_file,
    slice_size,
    write_json,
    write_stack,
)

SHAPE = (6, 8)


def leftovers(folder: Path) -> list[str]:
    """Temporary files atomic_path may have left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def ramp_stack(depth: int, dtype: type, rng: np.random.Generator) -> np.ndarray:
    """A stack whose slices differ, so any reordering or dropped slice shows."""
    high = 2.0 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    return (rng.random((depth, *SHAPE)) * high).astype(dtype)


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask a test changes."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- atomic_path ---------------------------------------------------------------------------------


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "result.txt"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent
        assert not final.exists()
        tmp.write_text("done")
    assert final.read_text() == "done"
    assert leftovers(final.parent) == []


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    final = tmp_path / "result.txt"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_previous_file_on_error(tmp_path: Path) -> None:
    final = tmp_path / "result.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("new")
        raise RuntimeError("killed")
    assert final.read_text() == "old"
    assert leftovers(tmp_path) == []


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_path_mode_follows_umask(tmp_path: Path, mask: int) -> None:
    os.umask(mask)
    final = tmp_path / "result.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("x")
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~mask


def test_atomic_path_temp_names_are_unique(tmp_path: Path) -> None:
    final = tmp_path / "result.txt"
    with atomic_path(final) as first, atomic_path(final) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert final.read_text() == "1"  # the outer block finishes last and wins
    assert leftovers(tmp_path) == []


# --- write_stack / read_stack round trips --------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_write_read_round_trip(tmp_path: Path, dtype: type, depth: int) -> None:
    stack = ramp_stack(depth, dtype, np.random.default_rng(depth))
    path = tmp_path / "stack.tif"
    write_stack(path, stack)
    back = read_stack(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, stack)
    assert count_slices(path) == depth
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_written_stack_is_an_imagej_stack(tmp_path: Path, dtype: type) -> None:
    stack = ramp_stack(4, dtype, np.random.default_rng(0))
    path = tmp_path / "stack.tif"
    write_stack(path, stack)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["images"] == 4
        assert tif.pages.first.samplesperpixel == 1
        series = tif.series[0]
        assert series.shape == stack.shape
        assert series.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(series.asarray(), stack)


@pytest.mark.parametrize(
    ("stack", "fragment"),
    [
        (np.zeros(SHAPE, np.uint8), "(Z,H,W)"),
        (np.zeros((2, *SHAPE), np.int64), "int64"),
        (np.zeros((2, *SHAPE), np.float64), "float64"),
    ],
)
def test_write_stack_refuses_bad_input(tmp_path: Path, stack: np.ndarray, fragment: str) -> None:
    path = tmp_path / "bad.tif"
    with pytest.raises(ValueError, match=r"bad\.tif") as caught:
        write_stack(path, stack)
    assert fragment in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_single_2d_tiff_becomes_one_slice(tmp_path: Path) -> None:
    image = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, image)
    back = read_stack(path)
    assert back.shape == (1, *SHAPE)
    np.testing.assert_array_equal(back[0], image)
    assert count_slices(path) == 1


def test_tiff_written_slice_by_slice_reads_every_slice(tmp_path: Path) -> None:
    stack = ramp_stack(4, np.uint16, np.random.default_rng(1))
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as writer:
        for plane in stack:
            writer.write(plane)  # one series per call
    np.testing.assert_array_equal(read_stack(path), stack)
    assert count_slices(path) == 4


def test_plain_multipage_tiff_is_a_stack(tmp_path: Path) -> None:
    stack = ramp_stack(5, np.uint8, np.random.default_rng(2))
    path = tmp_path / "plain.tiff"
    tifffile.imwrite(path, stack, photometric="minisblack")
    np.testing.assert_array_equal(read_stack(path), stack)
    assert count_slices(path) == 5


# --- folders of slices ---------------------------------------------------------------------------


def test_folder_of_pngs_is_read_in_numeric_order(tmp_path: Path) -> None:
    for index in range(12):
        Image.fromarray(np.full(SHAPE, index * 10, np.uint8)).save(tmp_path / f"{index}.png")
    stack = read_stack(tmp_path)
    assert stack.shape == (12, *SHAPE)
    assert stack.dtype == np.uint8
    np.testing.assert_array_equal(stack[:, 0, 0], np.arange(12) * 10)  # 10.png after 9.png
    assert count_slices(tmp_path) == 12


def test_folder_ignores_other_and_hidden_files(tmp_path: Path) -> None:
    for index in range(3):
        Image.fromarray(np.full(SHAPE, index, np.uint8)).save(tmp_path / f"s{index}.png")
    (tmp_path / "notes.txt").write_text("not a slice")
    (tmp_path / "._1.png").write_bytes(b"macOS resource fork, not an image")
    np.testing.assert_array_equal(read_stack(tmp_path)[:, 0, 0], [0, 1, 2])
    assert count_slices(tmp_path) == 3


def test_folder_of_2d_tiffs(tmp_path: Path) -> None:
    stack = ramp_stack(3, np.float32, np.random.default_rng(3))
    for index, plane in enumerate(stack):
        tifffile.imwrite(tmp_path / f"z{index:02d}.tif", plane)
    np.testing.assert_array_equal(read_stack(tmp_path), stack)


def test_16bit_png_is_accepted(tmp_path: Path) -> None:
    image = (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 1000).astype(np.uint16)
    assert image.max() > 255
    path = tmp_path / "deep.png"
    Image.fromarray(image).save(path)
    back = read_stack(path)
    assert back.shape == (1, *SHAPE)
    np.testing.assert_array_equal(back[0].astype(np.int64), image)


# --- compressed TIFFs (what Fiji, QuPath and microscopes write) ---------------------------------

# LZW and zstd need imagecodecs (tifffile has no codec of its own); deflate is zlib under two tags
COMPRESSIONS = [
    "lzw",
    "zlib",
    "deflate",
    pytest.param(
        "zstd",
        marks=pytest.mark.skipif(not imagecodecs.ZSTD.available, reason="no zstd in imagecodecs"),
    ),
]


def write_compressed(path: Path, stack: np.ndarray, compression: str, layout: str) -> Path:
    """`stack` as one compressed multi-page TIFF, one written page by page, or a slice folder."""
    gray = {"photometric": "minisblack", "compression": compression}
    if layout == "stack":
        tifffile.imwrite(path, stack, rowsperstrip=3, **gray)  # several strips per page
    elif layout == "pages":
        with tifffile.TiffWriter(path) as writer:
            for plane in stack:
                writer.write(plane, **gray)
    else:
        path.mkdir()
        for index, plane in enumerate(stack):
            tifffile.imwrite(path / f"{index}.tif", plane, **gray)
    return path


def test_imagecodecs_is_a_dependency() -> None:
    """Here it may come with an extra (bioimageio.core); a plain install must bring it too."""
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert any(d.startswith("imagecodecs") for d in dependencies)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("layout", ["stack", "pages", "folder"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_compressed_tiffs_read_their_pixels(
    tmp_path: Path, compression: str, layout: str, dtype: type
) -> None:
    stack = ramp_stack(4, dtype, np.random.default_rng(5))
    path = write_compressed(tmp_path / "compressed.tif", stack, compression, layout)
    first = path / "0.tif" if layout == "folder" else path
    with tifffile.TiffFile(first) as tif:
        assert tif.pages.first.compression.name.lower() in (compression, "adobe_deflate")
    back = read_stack(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, stack)
    assert count_slices(path) == 4
    assert slice_size(path) == SHAPE


# --- palette (indexed-colour) PNGs ---------------------------------------------------------------


def write_palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> Path:
    """A real palette ('P') PNG: `indices` are the pixels, `palette` the colour of each index."""
    image = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    image.putpalette([channel for colour in palette for channel in colour])
    image.save(path)
    with Image.open(path) as saved:
        assert saved.mode == "P"
    return path


def palette_indices(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, count, SHAPE).astype(np.uint8)


def test_palette_png_labels_are_their_indices(tmp_path: Path) -> None:
    """Luminance would turn the label indices 0 and 1 of black and red into 0 and 76."""
    for index in range(3):
        indices = palette_indices(np.random.default_rng(index), 2)
        write_palette_png(tmp_path / f"{index}.png", indices, [(0, 0, 0), (255, 0, 0)])
    labels = read_stack(tmp_path, labels=True)
    assert labels.dtype == np.uint8
    expected = [palette_indices(np.random.default_rng(index), 2) for index in range(3)]
    np.testing.assert_array_equal(labels, np.stack(expected))


def test_gray_palette_png_image_reads_as_its_gray_values(tmp_path: Path) -> None:
    indices = palette_indices(np.random.default_rng(7), 40)
    gray = [255 - 3 * index for index in range(40)]  # not the identity: the mapping must happen
    path = write_palette_png(tmp_path / "gray.png", indices, [(g, g, g) for g in gray])
    back = read_stack(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back[0], np.asarray(gray, np.uint8)[indices])


def test_unused_coloured_palette_entries_do_not_refuse_a_gray_image(tmp_path: Path) -> None:
    indices = palette_indices(np.random.default_rng(8), 2)
    palette = [(0, 0, 0), (200, 200, 200), (255, 0, 0)]  # the red entry colours no pixel
    path = write_palette_png(tmp_path / "gray.png", indices, palette)
    np.testing.assert_array_equal(read_stack(path)[0], np.where(indices == 1, 200, 0))


# --- refusals ------------------------------------------------------------------------------------


def assert_refused(path: Path, *fragments: str) -> None:
    """read_stack raises InputError on one line naming the file and saying what is wrong."""
    with pytest.raises(InputError) as caught:
        read_stack(path)
    message = str(caught.value)
    assert path.name in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_rgb_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "colour.png"
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(path)
    assert_refused(path, "RGB")


def test_rgb_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "colour.tif"
    tifffile.imwrite(path, np.zeros((*SHAPE, 3), np.uint8), photometric="rgb")
    assert_refused(path, "3 samples per pixel")


def test_multichannel_imagej_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "channels.tif"
    data = np.zeros((2, 3, *SHAPE), np.uint8)
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX"})
    assert_refused(path, "multi-channel")
    with pytest.raises(InputError, match=r"channels\.tif"):
        count_slices(path)


def test_rgb_slice_in_a_folder_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((*SHAPE, 3), np.uint8)).save(tmp_path / "1.png")
    with pytest.raises(InputError, match=r"1\.png"):
        read_stack(tmp_path)


def test_coloured_palette_png_image_is_refused(tmp_path: Path) -> None:
    indices = palette_indices(np.random.default_rng(9), 2)
    path = write_palette_png(tmp_path / "overlay.png", indices, [(0, 0, 0), (255, 0, 0)])
    assert_refused(path, "palette (indexed-colour) PNG with colours", "8- or 16-bit grayscale")
    np.testing.assert_array_equal(read_stack(path, labels=True)[0], indices)  # fine as labels


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_tiff_is_refused(tmp_path: Path, keep: float) -> None:
    whole = tmp_path / "whole.tif"
    write_stack(whole, ramp_stack(4, np.uint16, np.random.default_rng(4)))
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert_refused(cut)
    with pytest.raises(InputError, match=r"cut\.tif"):
        count_slices(cut)


def test_garbage_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 20)
    assert_refused(path)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    assert_refused(tmp_path, "no .png")


def test_missing_path_is_refused(tmp_path: Path) -> None:
    assert_refused(tmp_path / "absent.tif", "no such file")


def test_slices_of_different_sizes_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((7, 8), np.uint8)).save(tmp_path / "1.png")
    assert_refused(tmp_path, "differ in size")


@pytest.mark.parametrize("odd", [(20, 30), (12, 24)])
def test_a_page_of_another_size_is_refused_not_dropped(tmp_path: Path, odd: tuple) -> None:
    """tifffile splits such a file into runs of equal pages; every slice after page 2 was lost."""
    from emseg.volume import open_volume

    path = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(path) as writer:
        for shape in [(20, 24), (20, 24), odd, (20, 24)]:
            writer.write(np.zeros(shape, np.uint8))
    message = f"{path}: page 2 is {odd[0]} x {odd[1]} px uint8, page 0 is 20 x 24 px uint8"
    for read in (read_stack, count_slices, open_volume):
        with pytest.raises(InputError, match=message):
            read(path)


def test_a_thumbnail_page_is_not_a_slice(tmp_path: Path) -> None:
    stack = ramp_stack(3, np.uint8, np.random.default_rng(3))
    path = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(path) as writer:
        for plane in stack:
            writer.write(plane)
        writer.write(np.zeros((5, 6), np.uint8), subfiletype=1)  # reduced-resolution preview
    np.testing.assert_array_equal(read_stack(path), stack)
    assert count_slices(path) == 3


def test_empty_folders_and_other_formats_are_named_when_counting(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: folder holds no \.png/\.tif/\.tiff slices"):
        count_slices(tmp_path / "empty")
    (tmp_path / "labels.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(InputError, match=r"labels\.h5: a stack is a TIFF, a PNG or a folder"):
        count_slices(tmp_path / "labels.h5")


def test_slices_of_different_bit_depth_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros(SHAPE, np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.full(SHAPE, 300, np.uint16)).save(tmp_path / "1.png")
    assert_refused(tmp_path, "bit depth")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_tiff_is_refused(tmp_path: Path, bad: float) -> None:
    stack = np.zeros((2, *SHAPE), np.float32)
    stack[1, 2, 3] = bad
    path = tmp_path / "float.tif"
    write_stack(path, stack)
    assert_refused(path, "NaN or infinite")


# --- JSON records and checksums ------------------------------------------------------------------


def test_json_round_trip_with_numpy_values(tmp_path: Path) -> None:
    record = {
        "dice": np.float32(0.75),
        "count": np.int64(3),
        "ok": np.bool_(True),
        "edges": np.array([1, 2, 3], dtype=np.uint16),
        "where": tmp_path / "x.tif",
        "nested": {"lr": np.float64(1e-3), "names": ["a", "b"]},
    }
    path = tmp_path / "out" / "record.json"
    write_json(path, record)
    back = read_json(path)
    assert back == {
        "dice": 0.75,
        "count": 3,
        "ok": True,
        "edges": [1, 2, 3],
        "where": str(tmp_path / "x.tif"),
        "nested": {"lr": 1e-3, "names": ["a", "b"]},
    }
    assert type(back["count"]) is int
    assert type(back["ok"]) is bool
    assert json.loads(path.read_text()) == back
    assert leftovers(path.parent) == []


def test_write_json_refuses_unknown_types_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    with pytest.raises(TypeError, match="set"):
        write_json(path, {"bad": {1, 2}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [None, "{not json"])
def test_read_json_refuses_missing_or_broken_files(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=r"record\.json"):
        read_json(path)


@pytest.mark.parametrize("size", [0, 1, 1000, 4096])
def test_sha256_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=7) == expected  # many partial reads
