"""Augmentation per core: emseg's warp (+ weight map) against elasticdeform and MONAI.

Matched settings: the paper's elastic deformation only (a 3 x 3 grid of N(0, 10 px) displacements,
cubic image interpolation, mirrored borders). emseg interpolates the label linearly and
thresholds it, the peers use nearest neighbour. One thread: torch (MONAI) is set to 1 thread and
scipy/numpy code here is single-threaded, so samples/s is per core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from bench.harness import (
    NOT_INSTALLED,
    Settings,
    Table,
    Timing,
    em_slices,
    log,
    measure_many,
    package_version,
)
from emseg.augment import AugmentConfig, augment_pair
from emseg.weightmap import unet_weight_map

ELASTIC_ONLY = AugmentConfig(
    elastic=True,
    elastic_sigma=10.0,
    elastic_grid=3,
    rotate=False,
    shift=False,
    shear=False,
    zoom=False,
    flip=False,
    intensity=False,
)


def _emseg(
    image: np.ndarray, label: np.ndarray, config: AugmentConfig, weights: bool
) -> Callable[[], Any]:
    rng = np.random.default_rng(0)

    def once() -> Any:
        out_image, out_label = augment_pair(image, label, rng, config)
        return unet_weight_map(out_label) if weights else out_image

    return once


def _weight_map_only(label: np.ndarray) -> Callable[[], Any]:
    return lambda: unet_weight_map(label)


def _elasticdeform(image: np.ndarray, label: np.ndarray) -> Callable[[], Any]:
    import elasticdeform

    np.random.seed(0)  # elasticdeform draws from numpy's global generator only

    def once() -> Any:
        return elasticdeform.deform_random_grid(
            [image, label.astype(np.float32)], sigma=10.0, points=3, order=[3, 0], mode="mirror"
        )

    return once


def _monai(image: np.ndarray, label: np.ndarray) -> Callable[[], Any]:
    from monai.transforms import Rand2DElasticd

    spacing = (image.shape[0] - 1) / 2  # control points as far apart as a 3 x 3 grid's
    transform = Rand2DElasticd(
        keys=["image", "label"],
        spacing=(spacing, spacing),
        magnitude_range=(10.0, 10.0),
        prob=1.0,
        mode=["bicubic", "nearest"],
        padding_mode="reflection",
    )
    transform.set_random_state(seed=0)
    sample = {
        "image": torch.from_numpy(image)[None],
        "label": torch.from_numpy(label.astype(np.float32))[None],
    }
    return lambda: transform(sample)


COLUMNS = [
    "method",
    "what",
    "samples",
    "min ms",
    "median ms",
    "max ms",
    "samples/s/core",
    "time vs emseg warp",
    "note",
]


class Method(NamedTuple):
    """One augmentation to time: who does it, what it does, its closure's builder, its package."""

    method: str
    what: str
    build: Callable[[], Callable[[], Any]]
    peer: str | None  # the peer package it needs (None: emseg itself)

    @property
    def key(self) -> str:
        return f"{self.method}: {self.what}"


def _methods(image: np.ndarray, label: np.ndarray) -> list[Method]:
    """emseg's warp, weight map and cache sample, and the peers' elastic warps on the same data."""
    return [
        Method(
            "emseg augment_pair",
            "elastic only",
            lambda: _emseg(image, label, ELASTIC_ONLY, False),
            None,
        ),
        Method(
            "emseg unet_weight_map",
            "weight map of one label",
            lambda: _weight_map_only(label),
            None,
        ),
        Method(
            "emseg augment + weight map",
            "elastic only",
            lambda: _emseg(image, label, ELASTIC_ONLY, True),
            None,
        ),
        Method(
            "emseg augment + weight map",
            "config.yaml (elastic, rotate, shift, zoom, flip, gray values): one cache sample",
            lambda: _emseg(image, label, AugmentConfig(), True),
            None,
        ),
        Method(
            "elasticdeform.deform_random_grid",
            "elastic only (image order 3, label order 0)",
            lambda: _elasticdeform(image, label),
            "elasticdeform",
        ),
        Method(
            "MONAI Rand2DElasticd",
            "elastic only (image bicubic, label nearest)",
            lambda: _monai(image, label),
            "monai",
        ),
    ]


def _time_on_one_thread(methods: list[Method], repeats: int, warmup: int) -> dict[str, Timing]:
    """The installed methods round-robin, torch on one thread as numpy and scipy are."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log(f"augmentation: {len(methods)} methods, {repeats} samples each, round-robin")
        installed = [m for m in methods if m.peer is None or package_version(m.peer)]
        return measure_many({m.key: m.build() for m in installed}, repeats, warmup)
    finally:
        torch.set_num_threads(threads)


def run(settings: Settings) -> list[Table]:
    size = 64 if settings.quick else 512
    images, labels, source = em_slices(1, size)
    repeats, warmup = (1, 0) if settings.quick else (30, 3)
    methods = _methods(images[0], labels[0])
    table = Table(
        f"Augmentation of one {size} x {size} sample, single thread",
        COLUMNS,
        notes=[
            f"Data: {source}. Medians of {repeats} samples after {warmup} warm-up samples; the"
            " methods take turns, so load from other processes hits them alike.",
            "Matched settings: 3 x 3 control grid, N(0, 10 px) displacements, mirrored borders;"
            " MONAI's control points are (size-1)/2 px apart (its grid adds border points).",
            "'time vs emseg warp' = median / median of 'emseg augment_pair, elastic only';"
            " > 1 means slower than emseg.",
        ],
    )
    timings = _time_on_one_thread(methods, repeats, warmup)
    reference = timings[methods[0].key].median
    for method in methods:
        timing = timings.get(method.key)
        if timing is None:
            table.add(method=method.method, what=method.what, note=NOT_INSTALLED)
            continue
        table.add(
            method=method.method,
            what=method.what,
            samples=len(timing.runs),
            **timing.columns("ms", 1e3),
            **{
                "samples/s/core": 1 / timing.median,
                "time vs emseg warp": timing.median / reference,
            },
            note=f"{method.peer} {package_version(method.peer)}" if method.peer else "",
        )
    return [table]
