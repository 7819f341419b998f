"""Segmentation quality of finished runs: each method on their held-out probability maps.

    python bench/segmentation_quality.py RESULTS                  # every run, config.yaml defaults
    python bench/segmentation_quality.py RESULTS --folds 0 1 2 3  # only these folds' runs
    python bench/segmentation_quality.py RESULTS --folds 0 1 2 3 --method watershed \\
        --sweep seed_threshold=0.2,0.3,0.4 --sweep sigma=0,1,2    # a parameter sweep

RESULTS is a workflow's output folder (`results` of its config): every run
runs/<name>/fold<k>/seed<s> with a predict/val_membrane_prob.tif is scored on its held-out
slices (data/split.json) against preprocessed/labels.tif. Each method runs with the `segment:`
settings of config.yaml (or --configfile), one row per run and a mean; the `challenge` row is
the probability map scored as the ISBI challenge does, V_rand and V_info each at the best
threshold of 0.0-0.9 chosen on the scored slices themselves. A sweep chooses on the scored
slices too: tune on folds you will not report, and say so beside the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

from emseg.io import read_json, read_stack  # noqa: E402
from emseg.metrics import label_scores, score_stack  # noqa: E402
from emseg.segment_settings import METHODS, SegmentSettings  # noqa: E402
from emseg.segmentation import segment_stack  # noqa: E402

RUN = re.compile(r"runs/(?P<name>[^/]+)/fold(?P<fold>\d+)/seed(?P<seed>\d+)$")
SCORES = ("vrand", "vinfo", "vrand_split", "vrand_merge")


def find_runs(results: Path, folds: list[int] | None) -> list[tuple[Path, int]]:
    """(run folder, fold) of every run with a validation probability map, in sorted order."""
    found = []
    for prob in sorted(results.glob("runs/*/fold*/seed*/predict/val_membrane_prob.tif")):
        run = prob.parent.parent
        match = RUN.search(run.relative_to(results).as_posix())
        if match and (folds is None or int(match["fold"]) in folds):
            found.append((run, int(match["fold"])))
    return found


def challenge_row(prob: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The probability map's scores by the challenge's procedure (thresholds chosen on it)."""
    started = time.perf_counter()
    _, per_slice, _ = score_stack(prob, labels)
    seconds = (time.perf_counter() - started) / len(prob)
    return {**per_slice[list(SCORES)].mean().to_dict(), "s/slice": seconds}


def method_row(prob: np.ndarray, labels: np.ndarray, settings: SegmentSettings) -> dict[str, Any]:
    """The label image's own scores and the segmentation time per slice."""
    started = time.perf_counter()
    segmentation = segment_stack(prob, settings)
    seconds = (time.perf_counter() - started) / len(prob)
    scores = label_scores(segmentation, labels)
    means = {name: float(scores[f"seg_{name}"].mean()) for name in SCORES}
    return {**means, "s/slice": seconds}


def sweep_grid(base: SegmentSettings, sweeps: list[str]) -> list[SegmentSettings]:
    """Every combination of the `key=v1,v2,...` lists over `base`."""
    keys, values = [], []
    for item in sweeps:
        key, _, listed = item.partition("=")
        kind = type(getattr(base, key))
        keys.append(key)
        values.append([kind(float(v)) if kind is int else kind(v) for v in listed.split(",")])
    return [
        replace(base, **dict(zip(keys, combo, strict=True))) for combo in itertools.product(*values)
    ]


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table, floats to 4 decimals."""
    head = "| " + " | ".join(frame.columns) + " |\n| " + " | ".join("---" for _ in frame) + " |"
    rows = [
        "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--folds", type=int, nargs="+", help="only the runs of these folds")
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--method", choices=METHODS, help="only this method (and sweep it)")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()

    base = SegmentSettings.from_config(yaml.safe_load(args.configfile.read_text())["segment"])
    runs = find_runs(args.results, args.folds)
    if not runs:
        raise SystemExit(f"{args.results}: no run with predict/val_membrane_prob.tif")
    folds = read_json(args.results / "data" / "split.json")["folds"]
    labels_all = read_stack(args.results / "preprocessed" / "labels.tif")
    methods = [args.method] if args.method else list(METHODS)
    candidates = [
        settings
        for method in methods
        for settings in sweep_grid(replace(base, method=method), args.sweep)
    ]
    rows = []
    for run, fold in runs:
        held_out = folds[fold]["validation"]
        prob = read_stack(run / "predict" / "val_membrane_prob.tif")
        labels = labels_all[held_out]
        where = run.relative_to(args.results).as_posix()
        print(f"{where}: slices {held_out}", file=sys.stderr)
        if not args.sweep:
            rows.append({"run": where, "method": "challenge", **challenge_row(prob, labels)})
        for settings in candidates:
            setting = {k: v for k, v in vars(settings).items() if k != "method"}
            row = method_row(prob, labels, settings)
            rows.append({"run": where, "method": settings.method, **setting, **row})
    table = pd.DataFrame(rows)
    keys = [c for c in table.columns if c not in ("run", *SCORES, "s/slice")]
    means = table.groupby(keys, dropna=False, sort=False)[[*SCORES, "s/slice"]].mean()
    means = means.reset_index().sort_values("vrand", ascending=False, kind="stable")
    if not args.sweep:
        print(markdown(table[["run", "method", *SCORES, "s/slice"]]) + "\n")
    print(f"Mean over {len(runs)} runs ({len(table['run'].unique())} held-out sets):\n")
    swept = [item.partition("=")[0] for item in args.sweep]
    print(markdown(means.drop(columns=[key for key in keys[1:] if key not in swept])))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
