"""Reading and writing image stacks and small JSON records, always atomically.

Every output goes to a temporary name in its final folder and is renamed when complete, so a killed
job or a full disk never leaves a file that a later run would take for finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import logging.handlers
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

SLICE_SUFFIXES = (".png", ".tif", ".tiff")
# tifffile logs, rather than raises, when a damaged file cuts its page chain or metadata short
_TIFF_DAMAGE = ("invalid page offset", "corrupted", "invalid value offset")
# a full disk or an exhausted quota: the user can act on these, unlike on other I/O errors
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class InputError(ValueError):
    """Bad user input: the message names the file or config key and what is wrong."""


class OutputError(OSError):
    """An output could not be written for lack of space; the message names the file."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds.

    A full disk becomes an OutputError naming `final` (the OSError from the writer names only
    the temporary file, or nothing), and the partial temporary file is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        tmp = _create_temp(final)
        yield tmp
        os.replace(tmp, final)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        code = error.errno if error.errno is not None else _write_errno(tmp)
        if code in _NO_SPACE:
            raise _no_space(final, code) from error
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _write_errno(tmp: Path | None) -> int | None:
    """Why writing to `tmp` fails, asked of the OS by writing to it again.

    numpy's `tofile` (used by tifffile and `np.save`) reports a short write as an OSError with
    no errno ("131072 requested and 6056 written"); a direct write gets the real one.
    """
    if tmp is None:
        return None
    data = bytes(1 << 16)
    try:
        with open(tmp, "ab", buffering=0) as handle:
            while data:
                data = data[handle.write(data) :]
    except OSError as error:
        return error.errno
    return None


def _no_space(final: Path, code: int) -> OutputError:
    return OutputError(
        code,
        f"{os.strerror(code)} ({errno.errorcode[code]}) while writing it; free space on that disk"
        " or set the config key `results` to a folder on a larger one, then rerun",
        str(final),
    )


def _create_temp(final: Path) -> Path:
    """Create a unique empty file beside `final` whose mode follows the current umask.

    mkstemp's fixed 0600 would hide results from colleagues sharing the results folder.
    """
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def write_json(path: str | os.PathLike[str], record: Any) -> None:
    """Write `record` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read JSON ({error})") from error


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_stack(path: str | os.PathLike[str], stack: np.ndarray) -> None:
    """Write a (Z,H,W) stack as an ImageJ-compatible multi-page TIFF that Fiji opens as a stack."""
    stack = np.ascontiguousarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"{path}: expected a (Z,H,W) stack, got shape {stack.shape}")
    if stack.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"{path}: ImageJ TIFF needs uint8, uint16 or float32, got {stack.dtype}")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, stack, imagej=True, metadata={"axes": "ZYX"})


def read_stack(path: str | os.PathLike[str], labels: bool = False) -> np.ndarray:
    """Read a grayscale stack (Z,H,W) from a multi-page TIFF, a single image or a folder of slices.

    Folder slices are ordered by the number in their names (0.png, 1.png, ..., 10.png), so stacks
    named the way microscopes and the ISBI data name them come out in section order. `labels`
    reads palette PNGs as their indices (the label values) rather than as gray values.
    """
    path = Path(path)
    if path.is_dir():
        files = slice_files(path)
        if not files:
            raise InputError(f"{path}: folder holds no .png/.tif/.tiff slices")
        slices = [read_image(f, labels=labels) for f in files]
        shapes = {s.shape for s in slices}
        if len(shapes) > 1:
            raise InputError(f"{path}: slices differ in size {sorted(shapes)}")
        dtypes = {s.dtype for s in slices}
        if len(dtypes) > 1:
            raise InputError(f"{path}: slices differ in bit depth {sorted(map(str, dtypes))}")
        return np.stack(slices)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    stack = read_image(path, allow_stack=True, labels=labels)
    return stack if stack.ndim == 3 else stack[np.newaxis]


def slice_files(folder: Path) -> list[Path]:
    """The slice images of a folder in section order, skipping hidden files (macOS '._0.png')."""
    files = (
        f
        for f in folder.iterdir()
        if f.suffix.lower() in SLICE_SUFFIXES and not f.name.startswith(".") and f.is_file()
    )
    return sorted(files, key=_natural_key)


def count_slices(path: str | os.PathLike[str]) -> int:
    """How many slices `read_stack(path)` returns, read from names and TIFF headers only."""
    path = Path(path)
    if path.is_dir():
        if not (files := slice_files(path)):
            raise InputError(f"{path}: folder holds no .png/.tif/.tiff slices")
        return len(files)
    if path.suffix.lower() not in SLICE_SUFFIXES:
        raise InputError(
            f"{path}: a stack is a TIFF, a PNG or a folder of them, not a {path.suffix or 'plain'}"
            " file (HDF5 and zarr volumes are read by apply, not for training)"
        )
    if path.suffix.lower() == ".png":
        return 1
    try:
        with refuse_damage(path), tifffile.TiffFile(path) as tif:
            series = stack_series(path, tif)
    except InputError:
        raise
    except Exception as error:  # tifffile raises many types for damaged files
        raise InputError(f"{path}: cannot read TIFF ({type(error).__name__}: {error})") from error
    if len(series) > 1:
        return len(series)
    return series[0].shape[0] if len(series[0].shape) == 3 else 1


def slice_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Height and width of a stack's slices, from the header of its (first) file."""
    path = Path(path)
    if path.is_dir():
        count_slices(path)  # names an empty folder
        path = slice_files(path)[0]
    try:
        if path.suffix.lower() == ".png":
            with Image.open(path) as image:
                return image.height, image.width
        with refuse_damage(path), tifffile.TiffFile(path) as tif:
            height, width = stack_series(path, tif)[0].shape[-2:]
            return int(height), int(width)
    except InputError:
        raise
    except Exception as error:  # tifffile and Pillow raise many types for damaged files
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error


def read_image(path: Path, allow_stack: bool = False, labels: bool = False) -> np.ndarray:
    """One image file as an array; `labels` keeps a palette PNG's indices (see _read_png)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path)
        else:
            array = _read_png(path, labels)
    except InputError:
        raise
    except Exception as error:  # tifffile and Pillow raise many types for damaged files
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error})") from error
    return _check_gray(path, np.asarray(array), allow_stack)


def _read_png(path: Path, labels: bool) -> np.ndarray:
    """A gray PNG's values; a palette ('P') PNG's indices, which for labels are the label values.

    Converting a palette image to luminance would turn label indices 0 and 1 into gray values
    such as 0 and 38, which match no data.membrane_value.
    """
    with Image.open(path) as image:
        if image.mode == "P":
            indices = np.asarray(image)
            return indices if labels else _palette_gray(path, image, indices)
        if image.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "1"):
            raise InputError(f"{path}: image mode {image.mode} is not grayscale")
        return np.asarray(image.convert("L") if image.mode == "1" else image)


def _palette_gray(path: Path, image: Image.Image, indices: np.ndarray) -> np.ndarray:
    """The gray values of a colour-mapped gray image; a palette with colours has none to give."""
    palette = np.asarray(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)
    if len(palette) < 256:  # indices past a short palette are black, as Pillow shows them
        palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
    used = palette[np.unique(indices)]
    if not ((used[:, 0] == used[:, 1]) & (used[:, 1] == used[:, 2])).all():
        raise InputError(
            f"{path}: palette (indexed-colour) PNG with colours; save it as 8- or 16-bit grayscale"
        )
    return palette[:, 0][indices]


def _read_tiff(path: Path) -> np.ndarray:
    with refuse_damage(path), tifffile.TiffFile(path) as tif:
        arrays = [series.asarray() for series in stack_series(path, tif)]
    return arrays[0] if len(arrays) == 1 else np.stack(arrays)


def stack_series(path: Path, tif: tifffile.TiffFile) -> list[tifffile.TiffPageSeries]:
    """The image series that make up the stack, after checking the file is whole and gray.

    tifffile's TiffWriter makes one series per write() call, so a stack written slice by slice
    arrives as many equal 2-D series, all of them slices. Otherwise the first series is the image
    and any later ones are thumbnails or pyramid levels.
    """
    _check_complete(path, tif)
    page = tif.pages.first
    if page.samplesperpixel > 1:
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
        hint = " (tifffile.imwrite stores 3 or 4 slices as RGB unless photometric='minisblack')"
        raise InputError(
            f"{path}: {page.samplesperpixel} samples per pixel (RGB or multi-channel);"
            f" give one gray channel{hint if planar else ''}"
        )
    first = tif.series[0]
    if "C" in first.axes or "S" in first.axes:
        raise InputError(f"{path}: multi-channel TIFF (axes {first.axes}); give one channel")
    if len(first.shape) == 2:
        return _equal_pages(path, first, tif.series)
    return [first]


def _equal_pages(
    path: Path, first: tifffile.TiffPageSeries, series: list[tifffile.TiffPageSeries]
) -> list[tifffile.TiffPageSeries]:
    """The full-resolution pages of a page-per-slice file, refusing one that differs.

    tifffile splits such a file into a series per run of equal pages; keeping only the first run
    would silently drop every slice after an odd one. Reduced-resolution pages (thumbnails) are
    flagged as such and skipped.
    """
    full = [one for one in series if not one.keyframe.subfiletype & 1]
    for one in full:
        if one.shape != first.shape or one.dtype != first.dtype:
            page = one.pages[0].index
            raise InputError(
                f"{path}: page {page} is {' x '.join(map(str, one.shape))} px {one.dtype}, page 0"
                f" is {' x '.join(map(str, first.shape))} px {first.dtype}; all slices of a"
                " stack need one size and pixel type"
            )
    return full


def _check_complete(path: Path, tif: tifffile.TiffFile) -> None:
    """Parse every page so a cut page chain shows, and refuse pixel data past the end of file.

    An ImageJ stack is read from its first page alone, so a copy cut short in its trailing
    pages would otherwise pass as a shorter or intact stack.
    """
    size = tif.filehandle.size
    for page in tif.pages:
        ends = (o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=True))
        if any(end > size for end in ends):
            raise InputError(f"{path}: truncated TIFF (page {page.index} ends past the file end)")


@contextlib.contextmanager
def refuse_damage(path: Path) -> Iterator[None]:
    """Raise InputError when tifffile logs a truncated or corrupted file while reading it."""
    handler = logging.handlers.BufferingHandler(capacity=10_000)
    handler.setLevel(logging.WARNING)
    logger = tifffile.logger()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    for record in handler.buffer:
        message = record.getMessage()
        if any(sign in message for sign in _TIFF_DAMAGE):
            raise InputError(f"{path}: truncated or corrupted TIFF ({message})")


def _check_gray(path: Path, array: np.ndarray, allow_stack: bool) -> np.ndarray:
    if array.ndim not in ((2, 3) if allow_stack else (2,)):
        wanted = "a 2-D slice or a (Z,H,W) stack" if allow_stack else "a 2-D slice"
        raise InputError(f"{path}: expected {wanted}, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.kind not in "uif":
        raise InputError(f"{path}: unsupported pixel type {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{path}: image contains NaN or infinite values")
    if min(array.shape[-2:]) < 1 or array.size == 0:
        raise InputError(f"{path}: image is empty")
    return array


def _natural_key(path: Path) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))
