"""Do the neighbouring sections help? The watershed's cells of each held-out slice, with two
neighbouring cells merged when a neighbouring slice's cells say they are one.

    python bench/segmentation_zcontext.py RESULTS [RESULTS ...]
    python bench/segmentation_zcontext.py RESULTS --overlap 0.5 --edge-max 0.85,0.9

RESULTS is a workflow's output folder: every run runs/<name>/fold<k>/seed<s> with a
predict/val_membrane_prob.tif is segmented on its held-out slices (data/split.json) with
config.yaml's `segment:` watershed. Then, in each slice, two neighbouring cells a and b are
merged when, in the slice above or below (held-out slices only), a and b each have at least
`overlap` of their pixels in one and the same cell, and the mean unsmoothed probability along
their shared boundary is at most `edge_max` (a sure membrane is never merged through). The
label images are scored against preprocessed/labels.tif. Choose the two values on held-out sets
you will not report. An experiment, not a feature: README, segmentation stage, "Tried ... not
adopted".
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO))

from bench.segmentation_quality import find_runs, markdown  # noqa: E402
from emseg.io import read_json, read_stack  # noqa: E402
from emseg.metrics import label_scores  # noqa: E402
from emseg.segment_settings import SegmentSettings  # noqa: E402
from emseg.segmentation import (  # noqa: E402
    _cut_lines,
    _region_graph,
    _relabel,
    interior_cells,
    smoothed,
)

Flood = tuple[np.ndarray, np.ndarray]  # one slice's smoothed map and its uncut watershed cells


def watershed_floods(prob: np.ndarray, settings: SegmentSettings) -> list[Flood]:
    """Each slice's smoothed map and watershed cells, computed once for every merge setting."""
    floods = []
    for p in prob:
        height = smoothed(p, settings.sigma)
        floods.append((height, interior_cells(height, settings)))
    return floods


def main_overlap(cells: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each id of `cells`: the id of `other` it overlaps most, and that share of its pixels."""
    n, m = int(cells.max()) + 1, int(other.max()) + 1
    table = np.bincount((cells * m + other).ravel(), minlength=n * m).reshape(n, m)
    best = table.argmax(axis=1)
    share = table[np.arange(n), best] / np.maximum(table.sum(axis=1), 1)
    return best, share


def merge_by_neighbours(
    cells: np.ndarray,
    prob: np.ndarray,
    neighbours: list[np.ndarray],
    overlap: float,
    edge_max: float,
) -> tuple[np.ndarray, int]:
    """Cells of one slice merged where a neighbouring slice's cells join them; merges made."""
    edges, mean, _ = _region_graph(cells, prob)
    if len(edges) == 0:
        return cells, 0
    u, v = edges[:, 0], edges[:, 1]
    joined = np.zeros(len(edges), bool)
    for other in neighbours:
        best, share = main_overlap(cells, other)
        joined |= (best[u] == best[v]) & (share[u] >= overlap) & (share[v] >= overlap)
    merge = joined & (mean <= edge_max)
    size = int(cells.max()) + 1
    graph = coo_matrix((np.ones(merge.sum()), (u[merge], v[merge])), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    return component[cells] + 1, int(merge.sum())


def segment_with_neighbours(
    prob: np.ndarray, floods: list[Flood], overlap: float | None, edge_max: float
) -> tuple[np.ndarray, int]:
    """(Z, H, W) label image, ids unique over the stack; overlap None: the plain watershed."""
    out = np.zeros(prob.shape, np.uint32)
    offset = merges = 0
    for z, (height, cells) in enumerate(floods):
        if overlap is not None:
            near = [floods[k][1] for k in (z - 1, z + 1) if 0 <= k < len(floods)]
            cells, made = merge_by_neighbours(cells, prob[z], near, overlap, edge_max)
            merges += made
        labels = _relabel(_cut_lines(cells, height))
        out[z] = np.where(labels > 0, labels + np.uint32(offset), 0)
        offset += int(labels.max())
    return out, merges


def floats(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--overlap", type=floats, default=[0.5], metavar="F1,F2")
    parser.add_argument("--edge-max", type=floats, default=[0.8, 0.85, 0.9, 0.95], metavar="E1,E2")
    args = parser.parse_args()

    config = yaml.safe_load(args.configfile.read_text())["segment"]
    settings = SegmentSettings.from_config({**config, "method": "watershed"})
    grid = [(None, 1.0), *itertools.product(args.overlap, args.edge_max)]
    rows = []
    for results in args.results:
        folds = read_json(results / "data" / "split.json")["folds"]
        labels_all = read_stack(results / "preprocessed" / "labels.tif")
        for run, fold in find_runs(results, None):
            held_out = folds[fold]["validation"]
            prob = read_stack(run / "predict" / "val_membrane_prob.tif").astype(np.float64)
            floods = watershed_floods(prob, settings)
            for overlap, edge_max in grid:
                labels, merges = segment_with_neighbours(prob, floods, overlap, edge_max)
                scores = label_scores(labels, labels_all[held_out])
                rows.append(
                    {
                        "slices": f"{held_out[0]}-{held_out[-1]}",
                        "overlap": "-" if overlap is None else f"{overlap:g}",
                        "edge_max": "-" if overlap is None else f"{edge_max:g}",
                        "merges": merges,
                        "vrand": float(scores.seg_vrand.mean()),
                        "vinfo": float(scores.seg_vinfo.mean()),
                    }
                )
                print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    print(markdown(table) + "\n")
    means = table.groupby(["overlap", "edge_max"], sort=False)[["vrand", "vinfo"]].mean()
    print(markdown(means.reset_index()))


if __name__ == "__main__":
    main()
