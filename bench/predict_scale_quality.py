"""Does predicting at another scale help? Held-out scores of finished runs with each slice
resampled by a factor before the network and its probability resampled back.

    python bench/predict_scale_quality.py RESULTS                      # scales 1, 1.1, 1.2
    python bench/predict_scale_quality.py RESULTS --scale 1 --scale 1.1 --scale 1+1.1

RESULTS is a workflow's output folder: every run runs/<name>/fold<k>/seed<s> with a model.pt is
predicted on its held-out slices (data/split.json) as the predict rule does (config.yaml's
`predict:` tiles and TTA, `auto` precision), from the mirror-padded labelled stack. A scale
`s` resamples the slice to s x its size (linear interpolation), predicts it and resamples the
map back; `a+b` averages the maps of scales a and b. Each row gives the map's challenge scores
(thresholds chosen on the scored slices) and the default segmentation's label-image scores.
An experiment, not a feature: README, Results, "Tried ... not adopted".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO))

from bench.segmentation_quality import challenge_row, find_runs, markdown, method_row  # noqa: E402
from emseg.io import read_json, read_stack  # noqa: E402
from emseg.model_file import load_model_file  # noqa: E402
from emseg.precision import choose_precision  # noqa: E402
from emseg.segment_settings import SegmentSettings  # noqa: E402
from emseg.tiling import TileOptions, predict_slice  # noqa: E402

SCORES = ("vrand", "vinfo")


def predict_at_scale(
    model: torch.nn.Module, image: np.ndarray, scale: float, options: TileOptions
) -> np.ndarray:
    """The (H, W) membrane probability of an unpadded slice predicted at `scale` x its size."""
    if scale == 1.0:
        return predict_slice(model, image, options, torch.device("cpu"))
    resized = ndimage.zoom(image, scale, order=1)
    prob = predict_slice(model, resized, options, torch.device("cpu"))
    back = (image.shape[0] / prob.shape[0], image.shape[1] / prob.shape[1])
    return np.clip(ndimage.zoom(prob, back, order=1), 0.0, 1.0)


def run_rows(
    run: Path, images: np.ndarray, labels: np.ndarray, combos: list[list[float]], config: dict
) -> list[dict]:
    """One row per scale combination for one run's held-out slices."""
    device = torch.device("cpu")
    precision = choose_precision("auto", device, "predict.precision")
    model = precision.prepare(load_model_file(run / "model.pt").build(device))
    if model.geometry.margin:
        raise SystemExit(f"{run}: a valid (unpadded) network; this experiment needs a padded one")
    predict = config["predict"]
    options = TileOptions(
        tile_size=int(predict["tile_size"]),
        batch_size=int(predict["batch_size"]),
        overlap=float(predict["overlap"]),
        tta=bool(predict["tta"]),
        autocast=precision.autocast,
        channels_last=precision.channels_last,
    )
    maps: dict[float, np.ndarray] = {}
    seconds: dict[float, float] = {}
    for scale in sorted({s for combo in combos for s in combo}):
        started = time.perf_counter()
        maps[scale] = np.stack([predict_at_scale(model, im, scale, options) for im in images])
        seconds[scale] = (time.perf_counter() - started) / len(images)
    segment = SegmentSettings.from_config(config["segment"])
    rows = []
    for combo in combos:
        prob = np.mean([maps[s] for s in combo], axis=0).astype(np.float32)
        challenge = challenge_row(prob, labels)
        cells = method_row(prob, labels, segment)
        rows.append(
            {
                "scales": "+".join(f"{s:g}" for s in combo),
                **{f"map {k}": challenge[k] for k in SCORES},
                **{f"label image {k}": cells[k] for k in SCORES},
                "s/slice": sum(seconds[s] for s in combo),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--scale", action="append", metavar="S[+S...]", help="repeatable")
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    args = parser.parse_args()
    combos = [[float(s) for s in item.split("+")] for item in args.scale or ["1", "1.1", "1.2"]]
    config = yaml.safe_load(args.configfile.read_text())
    runs = find_runs(args.results, None)
    if not runs:
        raise SystemExit(f"{args.results}: no run with predict/val_membrane_prob.tif")
    folds = read_json(args.results / "data" / "split.json")["folds"]
    padded = read_stack(args.results / "preprocessed" / "padded0" / "labelled_images.tif")
    labels_all = read_stack(args.results / "preprocessed" / "labels.tif")
    rows = []
    for run, fold in runs:
        held_out = folds[fold]["validation"]
        print(f"{run.relative_to(args.results)}: slices {held_out}", file=sys.stderr)
        images = padded[held_out].astype(np.float32)
        found = run_rows(run, images, labels_all[held_out], combos, config)
        rows += [{"run": run.relative_to(args.results).as_posix(), **row} for row in found]
    print(markdown(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
