"""Figures for the run report: learning curves, error overlays and PNG encoding.

Everything renders off-screen with matplotlib's Agg canvas (no pyplot global state, so rule scripts
and tests never leak figures) and encodes PNGs with Pillow, which gives byte-identical output for
identical input -- the report stays reproducible.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from emseg.io import atomic_path

FALSE_MEMBRANE_RGB = (255, 0, 255)
"""Overlay colour for predicted membrane where the label says cell (magenta)."""
MISSED_MEMBRANE_RGB = (0, 220, 0)
"""Overlay colour for label membrane that the prediction calls cell (green)."""
OVERLAY_ALPHA = 0.65
"""Weight of the error colour against the gray image; high enough to read on dark membranes."""

SPLIT_RGB = (255, 120, 0)
"""Split error: part of a true cell that the segmentation gives to another segment (orange)."""
MERGE_RGB = (0, 110, 255)
"""Merge error: part of a segment that lies in a second true cell (blue); drawn over splits."""
SEGMENT_ALPHA = 0.5
"""Weight of the random segment colours against the gray image."""
MIN_ERROR_PIECE = 32
"""Pieces of fewer pixels are not drawn as split or merge errors: they are slivers along borders,
which the pair-counting V_rand weighs by their size squared, next to nothing."""

_VAL_COLUMNS = ("val_loss", "val_pixel_accuracy", "val_dice")
_GOLDEN = 0.6180339887498949


def gray_uint8(image: np.ndarray) -> np.ndarray:
    """Map a 2-D image to uint8 gray: uint8 as is, bool to 0/255, floats min-max stretched.

    Floats are stretched per image because the pipeline's normalised images are not in a fixed
    range (z-scored or [0, 1]); a constant image becomes black.
    """
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"image: expected a 2-D array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"image: unsupported dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("image: contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def to_png_bytes(array: np.ndarray) -> bytes:
    """Encode a 2-D image (see `gray_uint8` for scaling) or an (H, W, 3) uint8 RGB array as PNG."""
    array = np.asarray(array)
    if array.ndim == 3:
        if array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(
                f"array: 3-D input must be (H, W, 3) uint8, got {array.shape} {array.dtype}"
            )
        pil = Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    elif array.ndim == 2:
        pil = Image.fromarray(np.ascontiguousarray(gray_uint8(array)), mode="L")
    else:
        raise ValueError(f"array: expected 2-D or (H, W, 3), got shape {array.shape}")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def overlay_errors(
    image: np.ndarray, label: np.ndarray, prob: np.ndarray, threshold: float
) -> np.ndarray:
    """Colour the thresholded prediction's errors over the gray image, as (H, W, 3) uint8.

    A pixel is predicted membrane when `prob >= threshold`. False membrane (predicted membrane,
    label cell) is blended towards magenta, missed membrane (label membrane, predicted cell)
    towards green; correct pixels keep the image's gray value.
    """
    gray = gray_uint8(image)
    label = np.asarray(label)
    prob = np.asarray(prob)
    if label.shape != gray.shape or prob.shape != gray.shape:
        raise ValueError(
            f"label/prob: shapes {label.shape}/{prob.shape} differ from image {gray.shape}"
        )
    if not np.all(np.isin(label, (0, 1))):
        raise ValueError("label: values must be 0 (cell) or 1 (membrane)")
    if not np.isfinite(threshold):
        raise ValueError(f"threshold: must be finite, got {threshold}")
    truth = label.astype(bool)
    predicted = prob >= threshold
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float64)
    for mask, colour in (
        (predicted & ~truth, FALSE_MEMBRANE_RGB),
        (~predicted & truth, MISSED_MEMBRANE_RGB),
    ):
        rgb[mask] = (1.0 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.asarray(colour)
    return np.round(rgb).astype(np.uint8)


def segment_colours(labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) float colours, one per id, neighbouring ids far apart in hue; 0 is black.

    The colour is a pure function of the id (golden-ratio hue steps), so the same cell has the
    same colour on every page and run.
    """
    ids = np.asarray(labels).astype(np.float64)
    hue = np.mod(ids * _GOLDEN, 1.0)
    value = 0.75 + 0.25 * np.mod(ids * 0.37, 1.0)
    channel = np.stack([np.mod(hue + shift, 1.0) for shift in (0.0, 2 / 3, 1 / 3)], axis=-1)
    rgb = value[..., None] * (0.25 + 0.75 * np.clip(np.abs(channel * 6 - 3) - 1, 0, 1))
    return np.where((ids > 0)[..., None], rgb * 255.0, 0.0)


def overlay_segmentation(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each segment in its own colour over the gray image, boundaries (0) dark; (H, W, 3) uint8."""
    gray = gray_uint8(image).astype(np.float64)
    labels = np.asarray(labels)
    if labels.shape != gray.shape:
        raise ValueError(f"labels: shape {labels.shape} differs from image {gray.shape}")
    rgb = (1.0 - SEGMENT_ALPHA) * gray[..., None] + SEGMENT_ALPHA * segment_colours(labels)
    rgb[labels == 0] *= 0.35
    return np.round(rgb).astype(np.uint8)


def split_merge_masks(
    true_cells: np.ndarray, labels: np.ndarray, min_piece: int = MIN_ERROR_PIECE
) -> tuple[np.ndarray, np.ndarray]:
    """Where the segmentation splits a true cell and where it merges true cells.

    Inside true cells (label > 0 in `true_cells`), each piece = (true cell, segment) of at least
    `min_piece` pixels is a split if the segment is not the true cell's largest, and a merge if
    the true cell is not the segment's largest. Boundary pixels (segment 0) are neither.
    """
    truth, seg = np.asarray(true_cells), np.asarray(labels)
    if truth.shape != seg.shape:
        raise ValueError(f"labels: shape {seg.shape} differs from true cells {truth.shape}")
    split = np.zeros(seg.shape, bool)
    merge = np.zeros(seg.shape, bool)
    counted = (truth > 0) & (seg > 0)
    if not counted.any():
        return split, merge
    pieces, inverse, sizes = np.unique(
        np.stack([truth[counted], seg[counted]]), axis=1, return_inverse=True, return_counts=True
    )
    main_segment = _largest(pieces[0], pieces[1], sizes)
    main_cell = _largest(pieces[1], pieces[0], sizes)
    big = sizes >= min_piece
    split[counted] = (big & (pieces[1] != main_segment))[inverse.reshape(-1)]
    merge[counted] = (big & (pieces[0] != main_cell))[inverse.reshape(-1)]
    return split, merge


def _largest(owner: np.ndarray, member: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """For each piece, the member with the largest piece of the same owner (first on ties)."""
    order = np.lexsort((-sizes, owner))  # by owner, largest first
    owners = owner[order]
    first = np.concatenate([[True], owners[1:] != owners[:-1]])
    return member[order][first][np.searchsorted(owners[first], owner)]


def overlay_split_merge(
    image: np.ndarray, true_cells: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Split errors orange, merge errors blue, over the gray image with boundaries dark."""
    gray = gray_uint8(image).astype(np.float64)
    split, merge = split_merge_masks(true_cells, labels)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[np.asarray(labels) == 0] *= 0.35
    for mask, colour in ((split, SPLIT_RGB), (merge, MERGE_RGB)):
        rgb[mask] = (1.0 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.asarray(colour)
    return np.round(rgb).astype(np.uint8)


def _smoothing_span(n_rows: int) -> int:
    """EMA span for the training loss: about 5 % of the run, so curves of any length look alike."""
    return max(1, n_rows // 20)


def _draw_losses(ax, log: pd.DataFrame) -> None:
    """Raw training loss faint, its EMA solid, validation loss as markers."""
    train = log[["step", "train_loss"]].dropna()
    if not train.empty:
        ax.plot(train["step"], train["train_loss"], color="tab:blue", alpha=0.25, lw=0.8)
        smooth = train["train_loss"].ewm(span=_smoothing_span(len(train)), adjust=True).mean()
        marker = "o" if len(train) == 1 else None  # a lone point draws no line
        ax.plot(train["step"], smooth, color="tab:blue", lw=1.8, marker=marker, label="train")
    val = log[["step", "val_loss"]].dropna()
    if not val.empty:
        ax.plot(val["step"], val["val_loss"], "o-", color="tab:orange", ms=4, lw=1, label="val")
    losses = pd.concat([train["train_loss"], val["val_loss"]])
    if len(losses) and (losses > 0).all() and losses.max() / losses.min() > 10:
        ax.set_yscale("log")
    ax.set_title("Loss")
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False)


def _draw_validation(ax, log: pd.DataFrame) -> None:
    """Validation pixel accuracy and Dice; says so when the run had no validation pass."""
    drawn = False
    for column, name, colour in (
        ("val_pixel_accuracy", "pixel accuracy", "tab:green"),
        ("val_dice", "Dice", "tab:purple"),
    ):
        val = log[["step", column]].dropna()
        if not val.empty:
            ax.plot(val["step"], val[column], "o-", color=colour, ms=4, lw=1, label=name)
            drawn = True
    ax.set_title("Validation")
    ax.set_xlabel("step")
    if drawn:
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no validation passes", ha="center", va="center", transform=ax.transAxes)


def learning_curves_png(train_log: pd.DataFrame) -> bytes:
    """Render the two-panel learning-curve figure to PNG bytes (used inline by the report)."""
    missing = {"step", "train_loss"} - set(train_log.columns)
    if missing:
        raise ValueError(f"train_log: missing columns {sorted(missing)}")
    absent = [column for column in _VAL_COLUMNS if column not in train_log.columns]
    log = train_log.reindex(columns=[*train_log.columns, *absent])
    log = log.sort_values("step", kind="stable")
    figure = Figure(figsize=(11, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, val_ax = figure.subplots(1, 2, sharex=True)
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    for ax in (loss_ax, val_ax):
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    _draw_losses(loss_ax, log)
    _draw_validation(val_ax, log)
    if log["step"].nunique() == 1:  # widen a lone step so the integer ticks have room
        only = float(log["step"].iloc[0])
        loss_ax.set_xlim(only - 1, only + 1)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plot_learning_curves(train_log: pd.DataFrame, out_png: Path) -> None:
    """Write the learning-curve PNG atomically so a killed job never leaves a truncated figure."""
    png = learning_curves_png(train_log)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(png)
