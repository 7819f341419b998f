"""The grid's comparison: a row per (model, fold, seed) run and a page with each model's spread."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emseg.report import format_value, html_page

SCORES = ("vrand", "vinfo", "pixel_error", "dice")
COLUMNS = (
    "name", "arch", "fold", "seed", *SCORES, "iou", "threshold",
    "train_seconds", "gpu_seconds", "device", "config_hash",
)  # fmt: skip


def comparison_table(
    summaries: Sequence[Mapping[str, Any]], train_summaries: Sequence[Mapping[str, Any]]
) -> pd.DataFrame:
    """One row per run: its held-out scores and the wall and GPU time its training took."""
    rows = []
    for scores, training in zip(summaries, train_summaries, strict=True):
        seconds = float(training.get("train_seconds", float("nan")))
        on_gpu = str(training.get("device", "")).startswith("cuda")
        rows.append(
            {
                **{key: scores.get(key) for key in COLUMNS if key in scores},
                "train_seconds": seconds,
                "gpu_seconds": seconds if on_gpu else 0.0,
                "device": training.get("device", ""),
            }
        )
    table = pd.DataFrame(rows)
    return table[[c for c in COLUMNS if c in table]].sort_values(["name", "fold", "seed"])


def per_model(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of every score per model, over its folds and seeds."""
    grouped = table.groupby("name")[[*SCORES, "train_seconds"]]
    stats = grouped.agg(["mean", "std", "count"])
    stats.columns = [f"{score}_{stat}" for score, stat in stats.columns]
    return stats.reset_index()


def distribution_png(table: pd.DataFrame) -> bytes:
    """A strip plot per score: every run a dot, the mean a bar, models side by side."""
    names = sorted(table["name"].unique())
    figure = Figure(figsize=(3.2 * len(SCORES), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for ax, score in zip(figure.subplots(1, len(SCORES)), SCORES, strict=True):
        for position, name in enumerate(names):
            values = table.loc[table["name"] == name, score].to_numpy(dtype=float)
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(position + jitter, values, s=18, alpha=0.8)
            ax.hlines(values.mean(), position - 0.25, position + 0.25, color="black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(score)
        ax.grid(True, axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(format_value(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'  # noqa: E501


def render_comparison(table: pd.DataFrame) -> str:
    """The comparison page: per-model spread, the distribution plot and every run."""
    plot = base64.b64encode(distribution_png(table)).decode()
    body = (
        "<header><h1>emseg: model comparison</h1>"
        f'<p class="facts"><span>runs: <b>{len(table)}</b></span>'
        f"<span>models: <b>{table['name'].nunique()}</b></span>"
        f"<span>folds: <b>{table['fold'].nunique()}</b></span>"
        f"<span>seeds: <b>{table['seed'].nunique()}</b></span></p></header>"
        "<h2>Per model (mean, standard deviation, runs)</h2>"
        + _table(per_model(table))
        + "<h2>Held-out scores of every run</h2>"
        + f'<img class="curve" alt="score distributions" src="data:image/png;base64,{plot}">'
        + "<h2>Runs</h2>"
        + _table(table)
    )
    return html_page("emseg: model comparison", body)
