"""The canonical dataset every source is converted into.

results/data/ holds multi-page TIFFs of the raw slices (8- or 16-bit as given), of the binary labels
(uint8, 1 = membrane, 0 = cell) and, when the source has one, of the unlabelled test slices, with a
JSON record of the source, the shapes and the checksums beside them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from emseg.io import InputError, read_stack, sha256_file, write_json, write_stack

LOG = logging.getLogger("emseg")
# The smallest slice side accepted: 16 px is the smallest input of the default networks (four 2x2
# poolings), and a thinner slice (a line scan, a 1 x N image) gives no training tile worth the name.
MIN_SIDE = 16
# Membrane above this fraction of the label pixels suggests inverted labels (ISBI 2012: ~22 %).
MEMBRANE_MAJORITY = 0.5


def binarize_labels(labels: np.ndarray, membrane_value: int, source: Path | str) -> np.ndarray:
    """Map a two-valued label stack to 1 = membrane, 0 = cell; anything else names the file."""
    values = np.unique(labels)
    if membrane_value not in values:
        raise InputError(
            f"{source}: no pixel has the membrane value {membrane_value} (values: {values[:8]});"
            " set data.membrane_value"
        )
    if len(values) < 2:
        raise InputError(
            f"{source}: every pixel has the membrane value {membrane_value}; labels need cells too"
            " (check data.membrane_value and that the file is the label stack)"
        )
    if len(values) > 2:
        raise InputError(
            f"{source}: labels have {len(values)} values {values[:8]}, expected two"
            f" (membrane {membrane_value} and cell)"
        )
    return (labels == membrane_value).astype(np.uint8)


def warn_if_inverted(
    membrane: np.ndarray, given: np.ndarray, membrane_value: int, source: Path | str
) -> None:
    """Warn when membrane covers most pixels: nearly always labels of the inverted convention.

    Not refused, as dense membrane can be real; but in EM membrane is a minority (ISBI 2012:
    about 22 %), so a majority most likely means data.membrane_value names the cells.
    """
    fraction = float(membrane.mean())
    if fraction <= MEMBRANE_MAJORITY:
        return
    cell = given.flat[int(np.argmin(membrane))]  # binarized labels have a cell pixel
    LOG.warning(
        "%s: membrane covers %.0f %% of the labelled pixels with data.membrane_value: %s; are the"
        " labels inverted? set data.membrane_value to the cell value (%s)",
        source,
        100 * fraction,
        membrane_value,
        cell,
    )


def check_raw(stack: np.ndarray, source: Path | str) -> np.ndarray:
    """Accept 8- and 16-bit gray stacks (and finite float ones); reject the rest by file name."""
    if stack.dtype not in (np.uint8, np.uint16) and stack.dtype.kind != "f":
        raise InputError(f"{source}: pixel type {stack.dtype} is not 8- or 16-bit gray")
    height, width = stack.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"{source}: slices of {height} x {width} px are too small; the networks need at least"
            f" {MIN_SIDE} x {MIN_SIDE} px"
        )
    if stack.dtype.kind == "f":
        if not np.isfinite(stack).all():
            raise InputError(f"{source}: image contains NaN or infinite values")
        stack = stack.astype(np.float32)
    return stack


def user_stack(config: Mapping[str, Any], key: str) -> str:
    """The path of one of the user's stacks (data.source: files) as the config gives it."""
    return str(Path(config["data"][key]).expanduser())


def import_user_stacks(
    outputs: Mapping[str, Any], inputs: Mapping[str, str], membrane_value: int
) -> None:
    """Check the user's training stacks (data.source: files); write them as the canonical ones.

    `inputs` maps train_images and train_labels to a multi-page TIFF or a folder of slices; every
    refusal is an InputError that names the file.
    """
    images = check_raw(read_stack(inputs["train_images"]), inputs["train_images"])
    labels = _user_labels(inputs["train_labels"], membrane_value)
    write_canonical(
        outputs,
        train_images=images,
        train_labels=labels,
        test_images=None,
        source={"name": "files", "membrane_value": membrane_value},
        names=dict(inputs),
    )


def _user_labels(path: str, membrane_value: int) -> np.ndarray:
    """The user's label stack as 1 = membrane, 0 = cell; a palette PNG's indices are its values."""
    given = read_stack(path, labels=True)
    membrane = binarize_labels(given, membrane_value, path)
    warn_if_inverted(membrane, given, membrane_value, path)
    return membrane


def import_user_test_stack(output: Path | str, test_images: str, train_images: Path | str) -> None:
    """Check the user's test stack (data.test_images) and write it as the canonical test stack.

    A job of its own, apart from the training stacks, so that another test stack retrains nothing.
    `train_images` is the canonical training stack, whose pixel type the test stack must share.
    """
    test = check_raw(read_stack(test_images), test_images)
    with tifffile.TiffFile(train_images) as canonical:  # the header, not the stack
        train_type = np.dtype(canonical.series[0].dtype)
    # a float stack may share the other's units; an 8-bit one beside 16-bit ones cannot
    if test.dtype != train_type and {test.dtype.kind, train_type.kind} <= set("ui"):
        raise InputError(
            f"{test_images}: pixel type {test.dtype}, the training images are {train_type};"
            " the gray-value scaling is fitted on the training images, so give"
            " data.test_images their pixel type"
        )
    write_stack(output, test)
    LOG.info("test_images: %s %s from %s", test.shape, test.dtype, test_images)


def write_canonical(
    outputs: Mapping[str, Any],
    *,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray | None,
    source: Mapping[str, Any],
    names: Mapping[str, str],
) -> None:
    """Check shapes agree, write the stacks, then the record (written last, it marks done)."""
    if train_images.shape != train_labels.shape:
        raise InputError(
            f"{names['train_images']} and {names['train_labels']}: image stack {train_images.shape}"
            f" and label stack {train_labels.shape} differ in shape"
        )
    stacks = {"train_images": train_images, "train_labels": train_labels}
    if test_images is not None:
        stacks["test_images"] = test_images
    record: dict[str, Any] = {"source": dict(source), "stacks": {}}
    for key, stack in stacks.items():
        write_stack(outputs[key], stack)
        record["stacks"][key] = {
            "path": Path(str(outputs[key])).name,
            "shape": list(stack.shape),
            "dtype": str(stack.dtype),
            "sha256": sha256_file(outputs[key]),
            "from": names.get(key, ""),
        }
        LOG.info("%s: %s %s", key, stack.shape, stack.dtype)
    membrane = float(train_labels.mean())
    record["membrane_fraction"] = membrane
    LOG.info("membrane fraction of the labels: %.3f", membrane)
    write_json(outputs["record"], record)
