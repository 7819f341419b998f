"""The augmentation cache: one shard per training slice, streamed by training via memory maps.

A shard is a float16 array (samples, 3, H, W) holding the augmented image, its binary label and
its U-Net weight map, plus a JSON sidecar with the parameters, the seed and the file's SHA-256.
float16 keeps normalised gray values to about 1e-3 and weights to 1e-2 at half the size of float32,
and `numpy.load(mmap_mode="r")` lets training read one sample without loading the shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg.io import InputError, atomic_path, read_json, sha256_file, write_json

IMAGE, LABEL, WEIGHT = 0, 1, 2


def write_shard(path: Path, samples: np.ndarray, record: Mapping[str, Any], sidecar: Path) -> None:
    """Write the shard atomically, then its sidecar (which marks it complete)."""
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f"{path}: shard must be (samples, 3, H, W), got {samples.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, samples.astype(np.float16))
    write_json(sidecar, {**record, "shape": list(samples.shape), "sha256": sha256_file(path)})


def open_shards(
    paths: Sequence[Path], sidecars: Sequence[Path], verify: bool = True
) -> list[np.ndarray]:
    """Memory-map every shard, checking its checksum first so a damaged cache is never used."""
    shards = []
    for path, sidecar in zip(paths, sidecars, strict=True):
        record = read_json(sidecar)
        if verify and sha256_file(path) != record["sha256"]:
            raise InputError(
                f"{path}: augmentation shard is corrupted (checksum mismatch); delete it and rerun"
                " snakemake to rebuild it"
            )
        try:
            shard = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise InputError(
                f"{path}: cannot read augmentation shard ({error}); delete it"
            ) from error
        if list(shard.shape) != record["shape"]:
            raise InputError(f"{path}: shape {shard.shape} differs from its record; delete it")
        shards.append(shard)
    return shards
