"""The segmentation stage (`segment.method: watershed`) on one slice: emseg against plain skimage.

Maps: membrane probabilities shaped like a network's, from real cell shapes (the ISBI 2012
training labels, blurred and noised; the synthetic EM stack without a local copy), as mosaics of
512^2 slices up to 2048^2, the default block of `snakemake apply`, and stored as apply stores
them (uint8 steps). Both sides smooth the map, take the same seeds and cut the same lines; they
differ only in the two floods:

- skimage: `skimage.segmentation.watershed` of the whole slice from the seeds, then again from
  every segment of at least `min_size` px, as a user would call it (and as emseg did before);
- emseg: `emseg.segmentation.segment_slice`, whose floods queue only the unlabelled pixels and
  the labelled ones that touch them.

The labels must be the same; the time per slice is the median of the runs, the two taking turns.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from bench.harness import Settings, Table, em_slices, log, measure_many, package_version
from emseg.segment_settings import SegmentSettings
from emseg.segmentation import _cut_lines, _interior_seeds, _relabel, segment_slice

SIZES = (512, 1024, 2048)
TARGET_SPEEDUP = 1.0  # at least as fast as skimage's watershed alone


def network_like_maps(size: int, count: int) -> tuple[list[np.ndarray], str]:
    """`count` size x size membrane probability maps: mosaics of blurred, noised label slices."""
    _, labels, source = em_slices(16, 512)
    tiles = size // 512
    maps = []
    for index in range(count):
        rng = np.random.default_rng(index)
        order = [(index * tiles * tiles + k) % len(labels) for k in range(tiles * tiles)]
        rows = [
            np.hstack([labels[order[r * tiles + c]] for c in range(tiles)]) for r in range(tiles)
        ]
        membrane = np.vstack(rows).astype(np.float64)
        prob = ndimage.gaussian_filter(membrane, 1.5) * 1.5 + rng.normal(0, 0.05, membrane.shape)
        maps.append(np.rint(np.clip(prob, 0, 1) * 255) / 255)
    return maps, source


def skimage_segmentation(prob: np.ndarray, settings: SegmentSettings) -> np.ndarray:
    """The watershed method with both floods by skimage over the whole slice."""
    from skimage.segmentation import watershed

    height = ndimage.gaussian_filter(prob, settings.sigma)
    labels = watershed(height, _interior_seeds(height, settings.seed_threshold), connectivity=1)
    small = np.bincount(labels.ravel())[labels] < settings.min_size
    if small.any() and not small.all():
        labels = watershed(height, np.where(small, 0, labels), connectivity=1)
    return _relabel(_cut_lines(labels, height))


def run(settings: Settings) -> list[Table]:
    table = Table(
        "Segmentation of one slice (segment.method: watershed, the defaults)",
        [
            "size",
            "maps",
            "cells per map",
            "implementation",
            "runs",
            "median s",
            "Mpx/s",
            "speedup",
            "same labels",
            "note",
        ],
    )
    source = ""
    for size in SIZES[:1] if settings.quick else SIZES:
        maps, source = network_like_maps(size, 2)
        _measure(table, maps, repeats=1 if settings.quick else 3)
    table.notes += [
        f"Maps: {source} label slices, blurred (sigma 1.5 px) and noised (sd 0.05), in mosaics up"
        " to 2048^2 and stored in uint8 steps; each implementation segments every map of a size"
        " once per run, taking turns; time per map.",
        f"skimage {package_version('skimage')}: its watershed over the whole slice, both floods;"
        " emseg: the same seeds, floods of the unlabelled pixels and their frontier only, lines"
        " cut alike. Target: at least as fast, with the same labels.",
    ]
    return [table]


def _measure(table: Table, maps: list[np.ndarray], repeats: int) -> None:
    """Both implementations on the same maps, taking turns; one row each."""
    segment = SegmentSettings()
    fns: dict[str, Callable[[], object]] = {
        "skimage": lambda: [skimage_segmentation(m, segment) for m in maps],
        "emseg": lambda: [segment_slice(m, segment) for m in maps],
    }
    timings = measure_many(fns, repeats=repeats, warmup=0)
    labels = [segment_slice(m, segment) for m in maps]
    pairs = zip(labels, maps, strict=True)
    same = all(np.array_equal(a, skimage_segmentation(m, segment)) for a, m in pairs)
    size = maps[0].shape[0]
    base = timings["skimage"].median / len(maps)
    for name, timing in timings.items():
        per_map = timing.median / len(maps)
        met = base / per_map >= TARGET_SPEEDUP and same
        table.add(
            size=f"{size} x {size}",
            maps=len(maps),
            **{"cells per map": int(np.mean([a.max() for a in labels]))},
            implementation=name,
            runs=len(timing.runs),
            **{"median s": per_map, "Mpx/s": size * size / per_map / 1e6},
            speedup=base / per_map,
            **{"same labels": same if name == "emseg" else None},
            note=("target met" if met else "TARGET MISSED") if name == "emseg" else "",
        )
    log(f"segmentation {size}^2: skimage {base:.2f} s, emseg {per_map:.2f} s per map")
