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

from emseg.io import InputError, sha256_file, write_json, write_stack

LOG = logging.getLogger("emseg")


def binarize_labels(labels: np.ndarray, membrane_value: int, source: Path | str) -> np.ndarray:
    """Map a two-valued label stack to 1 = membrane, 0 = cell; anything else names the file."""
    values = np.unique(labels)
    if membrane_value not in values:
        raise InputError(
            f"{source}: no pixel has the membrane value {membrane_value} (values: {values[:8]});"
            " set data.membrane_value"
        )
    if len(values) > 2:
        raise InputError(
            f"{source}: labels have {len(values)} values {values[:8]}, expected two"
            f" (membrane {membrane_value} and cell)"
        )
    return (labels == membrane_value).astype(np.uint8)


def check_raw(stack: np.ndarray, source: Path | str) -> np.ndarray:
    """Accept 8- and 16-bit gray stacks (and finite float ones); reject the rest by file name."""
    if stack.dtype not in (np.uint8, np.uint16) and stack.dtype.kind != "f":
        raise InputError(f"{source}: pixel type {stack.dtype} is not 8- or 16-bit gray")
    if stack.dtype.kind == "f":
        if not np.isfinite(stack).all():
            raise InputError(f"{source}: image contains NaN or infinite values")
        stack = stack.astype(np.float32)
    return stack


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
