"""A first look at an applied volume without a viewer: one PNG of a crop of its middle slice.

Three panels side by side: the raw image, the membrane probability and the cells in random colours
over the image (the membrane mask in magenta when no cells were asked for, nothing when neither).
The crop is read at full resolution from the centre of the middle slice, so it costs one small read
whatever the volume's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg.io import atomic_path
from emseg.omezarr import MASK_COLOUR, open_level, quantize
from emseg.plots import gray_uint8, overlay_segmentation, to_png_bytes
from emseg.volume import open_volume

CROP = 768  # px of the preview's panels
GAP = 8  # white px between panels


def write_preview(plan: Mapping[str, Any], path: Path, labels: Sequence[str]) -> None:
    """Write the PNG of the volume's central crop: raw | probability | cells (or mask)."""
    depth, height, width = plan["shape"]
    z = depth // 2
    y0, x0 = max(0, (height - CROP) // 2), max(0, (width - CROP) // 2)
    rows, cols = slice(y0, min(height, y0 + CROP)), slice(x0, min(width, x0 + CROP))
    raw = open_volume(plan["volume"]).read(slice(z, z + 1), rows, cols)[0].astype(np.float32)
    low, high = np.percentile(raw, [1, 99])
    image = gray_uint8(np.clip(raw, low, high))
    store = Path(plan["store"])
    prob = np.asarray(open_level(store, 0, mode="r")[z, rows, cols])
    panels = [_rgb(image), _rgb(prob if prob.dtype == np.uint8 else quantize(prob, "uint8"))]
    if "cells" in labels:
        ids = np.asarray(open_level(store, 0, "cells", mode="r")[z, rows, cols])
        panels.append(overlay_segmentation(image, ids))
    elif "mask" in labels:
        mask = np.asarray(open_level(store, 0, "mask", mode="r")[z, rows, cols]).astype(bool)
        tinted = _rgb(image).astype(np.float32)
        tinted[mask] = 0.5 * tinted[mask] + 0.5 * np.asarray(MASK_COLOUR[:3], np.float32)
        panels.append(tinted.astype(np.uint8))
    gap = np.full((panels[0].shape[0], GAP, 3), 255, dtype=np.uint8)
    row = np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)
    with atomic_path(path) as tmp:
        tmp.write_bytes(to_png_bytes(row))


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)
