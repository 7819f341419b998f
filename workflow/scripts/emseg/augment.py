"""Joint image/label augmentation: one combined geometric warp plus gray-value changes.

All geometric transforms (flips, rotation, shear, zoom, shift and the paper's elastic
deformation) are folded into a single sampling-coordinate map, so the image is interpolated
once (cubic spline) and the label once (linear, thresholded at 0.5 so it stays binary).
Borders are mirrored (``mode="reflect"``), like the paper's overlap-tile strategy.

Random parameters are drawn from the caller's generator in a fixed order that does not depend
on which switches are on, so turning one transform off leaves the others' draws unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

# Upper bounds (exclusive) that keep the sampled transform valid: zoom/contrast/gamma factors
# 1 ± x must stay positive, a 90° shear is singular.
_BELOW_ONE = ("zoom_range", "contrast", "gamma")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation switches and magnitudes (config.yaml's ``augment:`` mapping).

    Angles in degrees, drawn uniformly in [-d, d]; ``shift_fraction`` is the maximum shift as a
    fraction of the image size per axis; zoom, contrast and gamma factors are uniform in
    [1 - x, 1 + x]; brightness is an additive offset uniform in [-b, b]. ``elastic_sigma`` is the
    standard deviation (pixels) of the displacements on the ``elastic_grid`` x ``elastic_grid``
    coarse grid.
    """

    elastic: bool = True
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotate: bool = True
    rotate_degrees: float = 180.0
    shift: bool = True
    shift_fraction: float = 0.05
    shear: bool = False
    shear_degrees: float = 5.0
    zoom: bool = True
    zoom_range: float = 0.1
    flip: bool = True
    intensity: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, bool | np.bool_):
                    raise ValueError(f"augment.{f.name} must be true/false, got {value!r}")
                object.__setattr__(self, f.name, bool(value))
            elif f.type == "int":
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise ValueError(f"augment.{f.name} must be an integer, got {value!r}")
                object.__setattr__(self, f.name, int(value))
            else:
                if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                    raise ValueError(f"augment.{f.name} must be a number, got {value!r}")
                value = float(value)
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"augment.{f.name} must be finite and >= 0, got {value!r}")
                object.__setattr__(self, f.name, value)
        if self.elastic_grid < 2:
            raise ValueError(f"augment.elastic_grid must be >= 2, got {self.elastic_grid}")
        for name in _BELOW_ONE:
            if getattr(self, name) >= 1:
                raise ValueError(f"augment.{name} must be < 1, got {getattr(self, name)}")
        if self.shift_fraction > 1:
            raise ValueError(f"augment.shift_fraction must be <= 1, got {self.shift_fraction}")
        if self.shear_degrees >= 90:
            raise ValueError(f"augment.shear_degrees must be < 90, got {self.shear_degrees}")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> AugmentConfig:
        """Build from a config mapping; unknown keys are errors so typos are not ignored."""
        if not isinstance(m, Mapping):
            raise ValueError(f"augment must be a mapping, got {type(m).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in m:
            if key not in known:
                raise ValueError(
                    f"augment: unknown key {key!r} (known: {', '.join(sorted(known))})"
                )
        return cls(**m)


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """One sampled augmentation; neutral values (0 / 1 / False / None) mean 'not applied'.

    ``angle_deg`` rotates the content counter-clockwise (90 equals ``np.rot90``), ``shift``
    moves the content by (rows, cols) pixels, ``elastic`` holds the (2, g, g) coarse-grid
    displacements in pixels (rows, cols) or None.
    """

    flip_rows: bool = False
    flip_cols: bool = False
    angle_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)
    shear_deg: float = 0.0
    scale: float = 1.0
    elastic: np.ndarray | None = None
    brightness: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0

    def is_geometric_identity(self) -> bool:
        return (
            not (self.flip_rows or self.flip_cols)
            and self.angle_deg == 0.0
            and self.shift == (0.0, 0.0)
            and self.shear_deg == 0.0
            and self.scale == 1.0
            and (self.elastic is None or not self.elastic.any())
        )


def augment_pair(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augment an (H, W) float image and its binary label with the same warp."""
    _check_pair(image, label)
    return _apply(image, label, sample_params(image.shape, rng, cfg))


def sample_params(
    shape: tuple[int, ...], rng: np.random.Generator, cfg: AugmentConfig
) -> AugmentParams:
    """Draw one augmentation; always the same draws in the same order, whatever is switched on."""
    u = 2.0 * rng.random(11) - 1.0  # uniform in [-1, 1)
    grid = rng.standard_normal((2, cfg.elastic_grid, cfg.elastic_grid))
    height, width = shape[:2]
    return AugmentParams(
        flip_rows=cfg.flip and bool(u[0] < 0),
        flip_cols=cfg.flip and bool(u[1] < 0),
        angle_deg=float(u[2] * cfg.rotate_degrees) if cfg.rotate else 0.0,
        shift=(
            (float(u[3] * cfg.shift_fraction * height), float(u[4] * cfg.shift_fraction * width))
            if cfg.shift
            else (0.0, 0.0)
        ),
        shear_deg=float(u[5] * cfg.shear_degrees) if cfg.shear else 0.0,
        scale=float(1.0 + u[6] * cfg.zoom_range) if cfg.zoom else 1.0,
        elastic=grid * cfg.elastic_sigma if cfg.elastic and cfg.elastic_sigma > 0 else None,
        brightness=float(u[7] * cfg.brightness) if cfg.intensity else 0.0,
        contrast=float(1.0 + u[8] * cfg.contrast) if cfg.intensity else 1.0,
        gamma=float(1.0 + u[9] * cfg.gamma) if cfg.intensity else 1.0,
    )


def apply_params(
    image: np.ndarray, label: np.ndarray, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a given augmentation (e.g. a hand-made one) to an image/label pair."""
    _check_pair(image, label)
    return _apply(image, label, params)


def _apply(
    image: np.ndarray, label: np.ndarray, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Warp image (cubic) and label (linear, >= 0.5) once, then change the image's gray values."""
    if params.is_geometric_identity():
        out_image, out_label = image.copy(), label.copy()
    else:
        coords = sampling_coordinates(image.shape, params)
        out_image = ndimage.map_coordinates(
            image, coords, order=3, mode="reflect", output=image.dtype
        )
        warped = ndimage.map_coordinates(
            label.astype(np.float32), coords, order=1, mode="reflect", output=np.float32
        )
        out_label = (warped >= 0.5).astype(label.dtype)
    return _adjust_gray_values(out_image, params), out_label


def sampling_coordinates(shape: tuple[int, int], params: AugmentParams) -> np.ndarray:
    """(2, H, W) source coordinates: output pixel p samples the input at A (p - c - t) + c + e(p).

    A combines flips, shear, rotation and zoom about the image centre c, t is the shift and e the
    bicubically upsampled elastic displacement field.
    """
    height, width = shape
    rows, cols = _centred_grid(height, width)
    a = _sampling_matrix(params)
    centre = ((height - 1) / 2.0, (width - 1) / 2.0)
    coords = np.empty((2, height, width))
    for axis in range(2):
        offset = centre[axis] - a[axis, 0] * params.shift[0] - a[axis, 1] * params.shift[1]
        np.multiply(rows, a[axis, 0], out=coords[axis])
        coords[axis] += cols * a[axis, 1]
        coords[axis] += offset
    if params.elastic is not None:
        coords += elastic_field(params.elastic, height, width)
    return coords


def elastic_field(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic (cubic B-spline) upsampling of (2, g, g) coarse displacements to (2, H, W).

    Equals ``ndimage.zoom(grid[k], (H/g, W/g), order=3, mode="mirror")`` but is computed as two
    small matrix products (the spline is separable), which is far cheaper than a 2-D zoom.
    """
    g_rows, g_cols = grid.shape[1:]
    up_rows = _upsampling_matrix(height, g_rows)
    up_cols = _upsampling_matrix(width, g_cols)
    return np.einsum("hi,kij,wj->khw", up_rows, grid, up_cols, optimize=True)


def _sampling_matrix(params: AugmentParams) -> np.ndarray:
    """Output-to-input matrix: inverse zoom, rotation, shear and flips (all about the centre)."""
    theta = math.radians(params.angle_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    rotation = np.array([[cos, sin], [-sin, cos]])
    shear = np.array([[1.0, 0.0], [math.tan(math.radians(params.shear_deg)), 1.0]])
    flips = np.diag([-1.0 if params.flip_rows else 1.0, -1.0 if params.flip_cols else 1.0])
    return rotation @ shear @ flips / params.scale


@lru_cache(maxsize=8)
def _centred_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the centre, cached because every sample reuses them."""
    rows = np.arange(height, dtype=float)[:, None] - (height - 1) / 2.0
    cols = np.arange(width, dtype=float)[None, :] - (width - 1) / 2.0
    rows, cols = np.broadcast_arrays(rows, cols)
    return _readonly(rows.copy()), _readonly(cols.copy())


@lru_cache(maxsize=8)
def _upsampling_matrix(n: int, g: int) -> np.ndarray:
    """(n, g) matrix whose column j is the cubic-spline upsampling of the j-th unit vector."""
    matrix = ndimage.zoom(np.eye(g), (n / g, 1.0), order=3, mode="mirror", grid_mode=False)
    if matrix.shape != (n, g):
        raise ValueError(f"cannot upsample a {g}-point elastic grid to {n} pixels")
    return _readonly(matrix)


def _adjust_gray_values(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Gamma on the min-max range, then contrast about the mean and a brightness offset."""
    out = image
    if params.gamma != 1.0:
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out = lo + (hi - lo) * ((out - lo) / (hi - lo)) ** params.gamma
    if params.contrast != 1.0 or params.brightness != 0.0:
        mean = float(out.mean())
        out = (out - mean) * params.contrast + mean + params.brightness
    return out.astype(image.dtype, copy=False)


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise ValueError(f"image must be a 2-D numpy array, got {np.shape(image)}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be floating point, got dtype {image.dtype}")
    if not isinstance(label, np.ndarray) or label.shape != image.shape:
        raise ValueError(f"label shape {np.shape(label)} does not match image shape {image.shape}")
    if not np.isin(label, (0, 1)).all():
        raise ValueError("label must contain only 0 and 1")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array
