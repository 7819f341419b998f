"""One self-contained HTML page per run: scores, learning curves, metric table, thumbnails, config.

The page embeds every image as a base64 PNG and carries its own CSS, so it can be mailed or archived
alone. It holds no timestamp: identical inputs give a byte-identical report, which keeps the
workflow's outputs reproducible.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from html import escape
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from emseg.io import atomic_path
from emseg.metrics import ground_truth_cells
from emseg.plots import (
    FALSE_MEMBRANE_RGB,
    MERGE_RGB,
    MIN_ERROR_PIECE,
    MISSED_MEMBRANE_RGB,
    SPLIT_RGB,
    gray_uint8,
    learning_curves_png,
    overlay_errors,
    overlay_segmentation,
    overlay_split_merge,
    to_png_bytes,
)

THUMBNAIL_PX = 256
"""Longest thumbnail side: four fit side by side on a laptop and 5 slices stay well under 3 MB."""

METRIC_COLUMNS = (
    "slice",
    "pixel_error",
    "dice",
    "iou",
    "vrand",
    "vrand_split",
    "vrand_merge",
    "vinfo",
    "vinfo_split",
    "vinfo_merge",
    "threshold",
    "vinfo_threshold",
    "vinfo_at_vrand_threshold",
)
SEGMENT_PREFIX = "seg_"
"""Columns of the label image's own scores (emseg.metrics.label_scores) start with this."""
HEADLINE_SCORES = (
    "vrand",
    "vinfo",
    "seg_vrand",
    "seg_vinfo",
    "pixel_error",
    "dice",
    "iou",
    "threshold",
    "vinfo_threshold",
)
CARD_NAMES = {  # where the map's and the cells' scores stand side by side; else COLUMN_NAMES
    "vrand": "V_rand, map",
    "vinfo": "V_info, map",
    "seg_vrand": "V_rand, cells",
    "seg_vinfo": "V_info, cells",
}
COLUMN_NAMES = {
    "slice": "slice",
    "pixel_error": "pixel error",
    "dice": "Dice",
    "iou": "IoU",
    "vrand": "V_rand",
    "vrand_split": "V_rand split",
    "vrand_merge": "V_rand merge",
    "vinfo": "V_info",
    "vinfo_split": "V_info split",
    "vinfo_merge": "V_info merge",
    "threshold": "V_rand threshold",
    "vinfo_threshold": "V_info threshold",
    "vinfo_at_vrand_threshold": "V_info at V_rand threshold",
}
"""Readable headings of the metric columns (per_slice.csv keeps the plain keys, shown on hover);
the label image's `seg_` columns take the same names in their own table."""
RUN_FACTS = {
    "name": "model",
    "arch": "network",
    "fold": "fold",
    "seed": "seed",
    "n_slices": "held-out slices",
    "segment_method": "segmentation",
    "config_hash": "config",
}
SLICE_CAPTION_METRICS = ("pixel_error", "dice", "vrand", "vinfo", "seg_vrand")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-soft: #f6f8fa; }
* { box-sizing: border-box; }
body {
  margin: 0;
  color: var(--fg);
  background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 {
  font-size: 1.2rem;
  margin: 36px 0 12px;
  padding-bottom: 4px;
  border-bottom: 1px solid var(--line);
}
h3 { font-size: 1rem; margin: 0 0 8px; }
.facts { color: var(--muted); margin: 0 0 16px; overflow-wrap: anywhere; }
.facts span { margin-right: 18px; white-space: nowrap; }
.facts b { color: var(--fg); font-weight: 600; }
.scores { display: flex; flex-wrap: wrap; gap: 12px; }
.score {
  border: 1px solid var(--line);
  border-radius: 8px;
  padding: 10px 16px;
  min-width: 120px;
  background: var(--bg-soft);
}
.score .name {
  color: var(--muted);
  font-size: 0.8rem;
  text-transform: uppercase;
  letter-spacing: 0.04em;
}
.score .value { font-size: 1.4rem; font-weight: 600; font-variant-numeric: tabular-nums; }
img.curve { width: 100%; height: auto; display: block; }
.table-wrap { overflow-x: auto; }
table {
  border-collapse: collapse;
  width: 100%;
  font-size: 0.88rem;
  font-variant-numeric: tabular-nums;
}
th, td {
  padding: 5px 8px;
  text-align: right;
  border-bottom: 1px solid var(--line);
  white-space: nowrap;
}
th { background: var(--bg-soft); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tr.mean td { font-weight: 600; border-top: 2px solid var(--fg); background: var(--bg-soft); }
td.best { font-weight: 600; }
.legend {
  display: flex;
  flex-wrap: wrap;
  gap: 18px;
  color: var(--muted);
  margin: 0 0 16px;
  font-size: 0.9rem;
}
.swatch {
  display: inline-block;
  width: 14px;
  height: 14px;
  border-radius: 3px;
  vertical-align: -2px;
  margin-right: 6px;
  border: 1px solid rgba(0, 0, 0, 0.25);
}
.slice { margin: 0 0 22px; }
.slice h3 .metrics { color: var(--muted); font-weight: 400; margin-left: 10px; }
.thumbs { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px; }
.thumbs.six { grid-template-columns: repeat(3, minmax(0, 1fr)); }
p.note { color: var(--muted); margin: 0 0 10px; max-width: 60em; }
figure { margin: 0; }
figure img {
  width: 100%;
  height: auto;
  display: block;
  border-radius: 4px;
  image-rendering: pixelated;
}
figcaption { color: var(--muted); font-size: 0.8rem; margin-top: 3px; text-align: center; }
pre {
  background: var(--bg-soft);
  border: 1px solid var(--line);
  border-radius: 6px;
  padding: 12px 14px;
  overflow-x: auto;
  font-size: 0.85rem;
  line-height: 1.4;
}
""".strip()


def format_value(value: Any) -> str:
    """Floats to 4 decimals, integers and strings as they are, missing values as 'n/a'."""
    if value is None or value is pd.NA:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return "n/a" if math.isnan(float(value)) else f"{float(value):.4f}"
    return str(value)


def _plain(value: Any) -> Any:
    """Turn config values (Paths, numpy scalars, tuples) into what yaml.safe_dump accepts."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def config_yaml(config: Mapping[str, Any]) -> str:
    """The config as block-style YAML in the author's key order."""
    return yaml.safe_dump(
        _plain(config), sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def _img_tag(png: bytes, alt: str, css_class: str | None = None) -> str:
    """An <img> with the PNG inlined as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{css_class}"' if css_class else ""
    return f'<img{klass} alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def thumbnail(array: np.ndarray, max_px: int = THUMBNAIL_PX) -> np.ndarray:
    """Shrink a uint8 gray or RGB image so its longer side is at most `max_px`.

    Box (area) filtering keeps one-pixel membranes and error specks visible as tinted lines
    instead of dropping them, as nearest-neighbour sampling would.
    """
    height, width = array.shape[:2]
    scale = max_px / max(height, width)
    if scale >= 1:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BOX))


def _slice_panels(
    image: np.ndarray,
    label: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    segmentation: np.ndarray | None,
) -> list[tuple[str, np.ndarray]]:
    """The thumbnails for one slice, membrane drawn dark as in the raw EM image.

    With a segmentation, two more: its cells in random colours and its split and merge errors.
    """
    probability = np.clip(prob.astype(np.float64), 0.0, 1.0)
    panels = [
        ("image", gray_uint8(image)),
        ("label (membrane dark)", ((1 - label.astype(np.uint8)) * 255).astype(np.uint8)),
        ("P(membrane) (dark = 1)", np.round((1.0 - probability) * 255).astype(np.uint8)),
        (f"errors at {threshold:.2f}", overlay_errors(image, label, prob, threshold)),
    ]
    if segmentation is not None:
        true_cells = ground_truth_cells(label)
        panels += [
            ("cells (segmentation)", overlay_segmentation(image, segmentation)),
            ("split / merge errors", overlay_split_merge(image, true_cells, segmentation)),
        ]
    return panels


def _validate_stacks(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    slice_ids: Sequence[int],
    segmentation: np.ndarray | None = None,
) -> None:
    """Same (Z, H, W) shape for all stacks and one id per slice."""
    if np.ndim(images) != 3:
        raise ValueError(f"images: expected a (Z, H, W) stack, got shape {np.shape(images)}")
    stacks = [("labels", labels), ("probs", probs)]
    if segmentation is not None:
        stacks.append(("segmentation", segmentation))
    for name, stack in stacks:
        if np.shape(stack) != np.shape(images):
            raise ValueError(f"{name}: shape {np.shape(stack)} differs from images {images.shape}")
    if len(slice_ids) != images.shape[0]:
        raise ValueError(f"slice_ids: {len(slice_ids)} ids for {images.shape[0]} slices")


def _header_html(title: str, summary: Mapping[str, Any]) -> str:
    """Title, run facts (arch, seed, ...) and headline score cards; unknown summary keys go last."""
    facts = [key for key in RUN_FACTS if key in summary]
    scored = {*HEADLINE_SCORES, *METRIC_COLUMNS}  # in the cards and the tables
    extra = [
        key
        for key in summary
        if key not in RUN_FACTS and key not in scored and not key.startswith(SEGMENT_PREFIX)
    ]
    fact_html = "".join(
        f"<span>{escape(RUN_FACTS.get(key, key))}: <b>{escape(format_value(summary[key]))}</b>"
        "</span>"
        for key in (*facts, *extra)
    )
    cards = "".join(
        f'<div class="score"><div class="name">{escape(CARD_NAMES.get(key, readable(key)))}</div>'
        f'<div class="value">{escape(format_value(summary[key]))}</div></div>'
        for key in HEADLINE_SCORES
        if key in summary
    )
    parts = [f"<h1>{escape(title)}</h1>"]
    if fact_html:
        parts.append(f'<p class="facts">{fact_html}</p>')
    if cards:
        parts.append(f'<div class="scores">{cards}</div>')
    return "<header>" + "".join(parts) + "</header>"


def readable(column: str) -> str:
    """A metric column's heading: its readable name, the same for the label image's `seg_` twin."""
    return COLUMN_NAMES.get(column.removeprefix(SEGMENT_PREFIX), column)


def _ordered_columns(per_slice: pd.DataFrame) -> list[str]:
    """Known metric columns in their canonical order, then the others (not `seg_`) as given."""
    known = [column for column in METRIC_COLUMNS if column in per_slice.columns]
    return known + [
        column
        for column in per_slice.columns
        if column not in METRIC_COLUMNS and not column.startswith(SEGMENT_PREFIX)
    ]


def _segment_columns(per_slice: pd.DataFrame) -> list[str]:
    """The slice id and the label image's own scores."""
    segment = [column for column in per_slice.columns if column.startswith(SEGMENT_PREFIX)]
    return (["slice"] if segment and "slice" in per_slice.columns else []) + segment


def _table_html(per_slice: pd.DataFrame, columns: Sequence[str]) -> str:
    """Metric table, one row per slice and a final mean row over the numeric columns."""
    columns = list(columns)
    head = "".join(
        f'<th title="{escape(str(column))}">{escape(readable(str(column)))}</th>'
        for column in columns
    )
    # Column-wise lists keep each column's own type (iterrows would turn int slice ids to floats).
    cells = zip(*(per_slice[column].tolist() for column in columns), strict=True)
    rows = [
        "<tr>" + "".join(f"<td>{escape(format_value(value))}</td>" for value in row) + "</tr>"
        for row in cells
    ]
    mean_cells = []
    for column in columns:
        values = per_slice[column]
        if column == "slice":
            mean_cells.append("mean")
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            mean_cells.append(format_value(float(values.mean())) if len(values) else "n/a")
        else:
            mean_cells.append("")
    if "slice" not in columns:
        mean_cells[0] = "mean"
    mean_row = '<tr class="mean">' + "".join(f"<td>{escape(c)}</td>" for c in mean_cells) + "</tr>"
    return (
        '<div class="table-wrap"><table><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + mean_row
        + "</tbody></table></div>"
    )


def _slice_caption(per_slice: pd.DataFrame, slice_id: int) -> str:
    """A few of the slice's scores from the table, when the table has a row for it."""
    if "slice" not in per_slice.columns:
        return ""
    match = per_slice[per_slice["slice"] == slice_id]
    if match.empty:
        return ""
    row = match.iloc[0]
    return " · ".join(
        f"{CARD_NAMES.get(key, readable(key))} {format_value(row[key])}"
        for key in SLICE_CAPTION_METRICS
        if key in row.index
    )


def _legend_html(with_segmentation: bool) -> str:
    """Colour key for the error overlays."""
    items = [
        ("rgb(128, 128, 128)", "correct (image gray)"),
        ("rgb({}, {}, {})".format(*FALSE_MEMBRANE_RGB), "false membrane: predicted, label cell"),
        ("rgb({}, {}, {})".format(*MISSED_MEMBRANE_RGB), "missed membrane: label, predicted cell"),
    ]
    if with_segmentation:
        items += [
            (
                "rgb({}, {}, {})".format(*SPLIT_RGB),
                "split: part of a true cell in a second segment",
            ),
            (
                "rgb({}, {}, {})".format(*MERGE_RGB),
                "merge: part of a segment in a second true cell",
            ),
        ]
    return (
        '<div class="legend">'
        + "".join(
            f'<span><span class="swatch" style="background: {colour}"></span>{escape(text)}</span>'
            for colour, text in items
        )
        + "</div>"
    )


def _slices_html(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    slice_ids: Sequence[int],
    per_slice: pd.DataFrame,
    segmentation: np.ndarray | None,
) -> str:
    """One block per held-out slice: heading with its scores and its thumbnails."""
    blocks = []
    grid = "thumbs" if segmentation is None else "thumbs six"
    for index, slice_id in enumerate(slice_ids):
        panels = _slice_panels(
            images[index],
            labels[index],
            probs[index],
            threshold,
            None if segmentation is None else segmentation[index],
        )
        figures = "".join(
            "<figure>"
            + _img_tag(to_png_bytes(thumbnail(panel)), f"slice {slice_id} {name}")
            + f"<figcaption>{escape(name)}</figcaption></figure>"
            for name, panel in panels
        )
        caption = _slice_caption(per_slice, slice_id)
        metrics = f'<span class="metrics">{escape(caption)}</span>' if caption else ""
        blocks.append(
            f'<section class="slice"><h3>Slice {escape(str(slice_id))}{metrics}</h3>'
            f'<div class="{grid}">{figures}</div></section>'
        )
    return "".join(blocks)


def _scores_html(per_slice: pd.DataFrame, summary: Mapping[str, Any]) -> str:
    """The two score tables, each with what it measures and what was chosen on these slices."""
    parts = [
        '<p class="note">The probability map, scored as the ISBI 2012 challenge does: cut at'
        " the cell-probability thresholds 0.0, 0.1, &hellip;, 0.9 and thinned. The Rand scores"
        " are those of the threshold with the best mean V_rand over these slices"
        " (V_rand threshold), the information scores those of the threshold with the best"
        " mean V_info (V_info threshold): both thresholds are chosen on the scored"
        " slices themselves. Split and merge: the two halves of each score (1 = no split, no"
        " merge). Pixel error, Dice and IoU: the map cut at p &ge; 0.5.</p>",
        _table_html(per_slice, _ordered_columns(per_slice)),
    ]
    segment = _segment_columns(per_slice)
    if segment:
        method = escape(format_value(summary.get("segment_method", "n/a")))
        parts += [
            "<h2>Scores of the segmentation</h2>",
            f'<p class="note">The label image itself (<code>segment.method: {method}</code>),'
            " scored with the same V_rand and V_info: no threshold to choose, its boundary"
            " pixels inside true cells counted as single-pixel segments. Its parameters are"
            " fixed in the config, not tuned on these slices.</p>",
            _table_html(per_slice, segment),
        ]
    return "".join(parts)


def _curve_bytes(train_log: pd.DataFrame, curve_png: Path | None) -> bytes:
    """The learning-curve PNG: the given file if any, else drawn from the training log."""
    if curve_png is None:
        return learning_curves_png(train_log)
    path = Path(curve_png)
    if not path.is_file():
        raise ValueError(f"curve_png: {path} does not exist")
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"curve_png: {path} is not a PNG file")
    return data


def render_report(
    *,
    title: str,
    config: Mapping[str, Any],
    train_log: pd.DataFrame,
    per_slice: pd.DataFrame,
    summary: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    slice_ids: Sequence[int],
    curve_png: Path | None = None,
    segmentation: np.ndarray | None = None,
) -> str:
    """Build the report page as a string (see `write_report`)."""
    _validate_stacks(images, labels, probs, slice_ids, segmentation)
    pieces = (
        ""
        if segmentation is None
        else f'<p class="note">Split and merge errors are drawn for pieces of at least'
        f" {MIN_ERROR_PIECE} pixels; smaller ones are slivers along cell borders.</p>"
    )
    body = "".join(
        [
            _header_html(title, summary),
            "<h2>Learning curves</h2>",
            _img_tag(_curve_bytes(train_log, curve_png), "learning curves", "curve"),
            "<h2>Metrics per held-out slice</h2>",
            _scores_html(per_slice, summary),
            "<h2>Held-out slices</h2>",
            _legend_html(segmentation is not None),
            pieces,
            _slices_html(images, labels, probs, threshold, slice_ids, per_slice, segmentation),
            "<h2>Configuration</h2>",
            f"<pre>{escape(config_yaml(config))}</pre>",
        ]
    )
    return html_page(title, body)


def html_page(title: str, body: str) -> str:
    """A complete page around `body` with the report's inline style (no external resources)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def write_html(out_html: Path, page: str) -> None:
    """Write a page atomically, so a killed job never leaves half a report."""
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")


def write_report(
    out_html: Path,
    *,
    title: str,
    config: Mapping[str, Any],
    train_log: pd.DataFrame,
    per_slice: pd.DataFrame,
    summary: Mapping[str, Any],
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    slice_ids: Sequence[int],
    curve_png: Path | None = None,
    segmentation: np.ndarray | None = None,
) -> None:
    """Write the self-contained report page atomically (`<out>.tmp`, then rename).

    `images`, `labels` (1 = membrane), `probs` (membrane probability) and, when given,
    `segmentation` (cell ids, 0 = boundary) are (Z, H, W) stacks of the held-out slices named by
    `slice_ids`; the page is fully built before anything is written.
    """
    page = render_report(
        title=title,
        config=config,
        train_log=train_log,
        per_slice=per_slice,
        summary=summary,
        images=images,
        labels=labels,
        probs=probs,
        threshold=threshold,
        slice_ids=slice_ids,
        curve_png=curve_png,
        segmentation=segmentation,
    )
    write_html(Path(out_html), page)
