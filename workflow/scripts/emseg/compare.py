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

from emseg.report import CARD_NAMES, COLUMN_NAMES, format_value, html_page

SCORES = ("vrand", "vinfo", "seg_vrand", "seg_vinfo", "pixel_error", "dice")
LOWER_IS_BETTER = ("pixel_error",)
PER_MODEL = (*SCORES, "train_seconds", "parameters")  # the per-model table's columns
COLUMNS = (
    "name", "arch", "fold", "seed", *SCORES, "iou", "threshold", "vinfo_threshold",
    "segment_method", "parameters", "train_seconds", "gpu_seconds", "device", "config_hash",
)  # fmt: skip
NAMES = {
    **COLUMN_NAMES,
    **CARD_NAMES,  # the map's and the cells' scores side by side: say which is which
    "name": "model",
    "segment_method": "segmentation",
    "parameters": "parameters",
    "train_seconds": "training (s)",
    "gpu_seconds": "GPU (s)",
    "config_hash": "config",
}
"""Readable column headings of the comparison page (comparison.csv keeps the plain keys)."""


def comparison_table(
    summaries: Sequence[Mapping[str, Any]],
    train_summaries: Sequence[Mapping[str, Any]],
    ensembles: Sequence[Mapping[str, Any]] = (),
) -> pd.DataFrame:
    """One row per run: its held-out scores and the wall and GPU time its training took.

    Each seed ensemble of `ensembles` (a fold's seeds averaged on their held-out slices) adds a
    row named '<model> ensemble', without a seed, whose training time is that of its runs.
    """
    rows, trainings = [], {}
    for scores, training in zip(summaries, train_summaries, strict=True):
        trainings[(scores.get("name"), scores.get("fold"), scores.get("seed"))] = training
        rows.append(_row(scores, [training]))
    for scores in ensembles:
        members = [
            trainings.get((scores.get("name"), scores.get("fold"), seed), {})
            for seed in scores.get("ensemble_seeds", [])
        ]
        rows.append(_row(scores, members) | {"name": f"{scores.get('name')} ensemble"})
    table = pd.DataFrame(rows)
    table["parameters"] = pd.to_numeric(table["parameters"])  # NaN for runs trained before it
    table["seed"] = table["seed"].astype("Int64")  # empty for the ensembles
    return table[[c for c in COLUMNS if c in table]].sort_values(["name", "fold", "seed"])


def _row(scores: Mapping[str, Any], trainings: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A comparison row: the scores, and the network size and training time of its run(s)."""
    seconds = [float(training.get("train_seconds", float("nan"))) for training in trainings]
    devices = [str(training.get("device", "")) for training in trainings]
    on_gpu = [device.startswith("cuda") for device in devices]
    return {
        **{key: scores.get(key) for key in COLUMNS if key in scores},
        "seed": scores.get("seed"),
        "parameters": trainings[0].get("parameters") if trainings else None,
        "train_seconds": sum(seconds) if seconds else float("nan"),
        "gpu_seconds": sum(s for s, gpu in zip(seconds, on_gpu, strict=True) if gpu),
        "device": ", ".join(sorted(set(devices))),
    }


def per_model(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and run count of every score per model, over folds and seeds."""
    present = [score for score in PER_MODEL if score in table]
    stats = table.groupby("name")[present].agg(["mean", "std", "count"])
    stats.columns = [f"{score}_{stat}" for score, stat in stats.columns]
    return stats.reset_index()


def _spread(mean: float, std: float, count: int) -> str:
    """'mean ± sd (n)'; the sd of a single run is left out."""
    if count == 0 or np.isnan(mean):
        return "n/a"
    digits = 0 if abs(mean) >= 100 else 4
    spread = "" if count < 2 or np.isnan(std) else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread} ({count})"


def _per_model_html(stats: pd.DataFrame) -> str:
    """One row per model, each score as 'mean ± sd (n)', the best mean of each score in bold."""
    scores = [score for score in PER_MODEL if f"{score}_mean" in stats]
    head = "".join(f"<th>{escape(NAMES.get(c, c))}</th>" for c in ["name", *scores])
    best = {}
    for score in SCORES:
        if f"{score}_mean" in stats and stats[f"{score}_mean"].notna().any():
            means = stats[f"{score}_mean"]
            best[score] = means.idxmin() if score in LOWER_IS_BETTER else means.idxmax()
    rows = []
    for index, row in stats.iterrows():
        cells = [f"<td>{escape(str(row['name']))}</td>"]
        for score in scores:
            mean, std, count = row[f"{score}_mean"], row[f"{score}_std"], row[f"{score}_count"]
            if score == "parameters":  # one network per model: its size, not a spread
                text = "n/a" if np.isnan(mean) else f"{mean:,.0f}"
            else:
                text = escape(_spread(mean, std, int(count)))
            marked = len(stats) > 1 and best.get(score) == index
            cells.append(f'<td class="best">{text} ★</td>' if marked else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def distribution_png(table: pd.DataFrame) -> bytes:
    """A strip plot per score: every run a dot, the mean a bar, models side by side."""
    names = sorted(table["name"].unique())
    scores = [score for score in SCORES if score in table and table[score].notna().any()]
    figure = Figure(figsize=(3.2 * len(scores), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for ax, score in zip(np.atleast_1d(figure.subplots(1, len(scores))), scores, strict=True):
        for position, name in enumerate(names):
            values = table.loc[table["name"] == name, score].to_numpy(dtype=float)
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(position + jitter, values, s=18, alpha=0.8)
            ax.hlines(values.mean(), position - 0.25, position + 0.25, color="black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(NAMES.get(score, score))
        ax.grid(True, axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _runs_for_reading(table: pd.DataFrame) -> pd.DataFrame:
    """The runs as a person reads them: whole seconds, and no GPU column where none was used."""
    runs = table.copy()
    for column in ("train_seconds", "gpu_seconds"):
        if column in runs:
            runs[column] = runs[column].round().astype("Int64")
    if "gpu_seconds" in runs and not (runs["gpu_seconds"].fillna(0) > 0).any():
        runs = runs.drop(columns="gpu_seconds")
    return runs


def _table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{escape(NAMES.get(str(c), str(c)))}</th>" for c in frame.columns)
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
        f'<p class="facts"><span>runs: <b>{table["seed"].notna().sum()}</b></span>'
        f"<span>models: <b>{table.loc[table['seed'].notna(), 'name'].nunique()}</b></span>"
        f"<span>folds: <b>{table['fold'].nunique()}</b></span>"
        f"<span>seeds: <b>{table['seed'].nunique()}</b></span></p></header>"
        "<h2>Per model</h2>"
        '<p class="facts">Each score as mean ± standard deviation (runs) over the'
        " model&#8217;s folds and seeds, on each run&#8217;s held-out slices; ★ marks the best"
        " model for that score. &#8220;Map&#8221;: the probability map scored as the challenge"
        " does, at the best threshold of its sweep on the scored slices; &#8220;cells&#8221;:"
        " the segmentation&#8217;s label image, nothing chosen on the scored slices."
        " &#8220;&lt;model&gt; ensemble&#8221; (cv.ensemble with several seeds): each"
        " fold&#8217;s seed runs averaged on their shared held-out slices, one row per fold,"
        " its training time the sum of its runs&#8217;.</p>"
        + _per_model_html(per_model(table))
        + "<h2>Held-out scores of every run</h2>"
        + f'<img class="curve" alt="score distributions" src="data:image/png;base64,{plot}">'
        + "<h2>Runs</h2>"
        + _table(_runs_for_reading(table))
    )
    return html_page("emseg: model comparison", body)
