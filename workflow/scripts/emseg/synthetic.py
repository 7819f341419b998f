"""Synthetic EM-like serial-section stacks with exact membrane labels.

They let the workflow and its tests run end to end without the real data, and give a
ground truth that is exact by construction: the image is rendered from the same geometry
that defines the labels.

Geometry: cell centres on a jittered hexagonal grid (some dropped, some added at random, so
cell sizes vary) that drift slowly across z; the image plane is warped by smooth random
fields before the Voronoi tessellation is taken, so cell walls are curved rather than
straight polygon edges. A pixel is membrane when it lies within half its wall's width of
the wall (distance to the bisector of its two nearest centres, wiggled by a little smooth
noise). Organelles (mitochondria, vesicles) are painted only well inside cells, so they are
dark like membranes but labelled cell interior, as in ISBI 2012.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

__all__ = ["synthetic_stack"]

# Cytoplasm, membrane and organelle grey levels on a 0..1 scale, after ISBI 2012 (membranes
# around 0.35, cytoplasm around 0.6 in the raw slices, before our blur and noise).
_CYTOPLASM = (0.58, 0.80)
_MEMBRANE = (0.12, 0.28)
# Share of grid sites removed (merging neighbours into larger cells) and of extra sites added
# at random (splitting cells into smaller ones), so cell sizes vary like neurite sections.
_DROP_FRACTION = 0.1
_EXTRA_FRACTION = 0.4
_VESICLES_PER_CELL = 6
_DRIFT = 0.03  # typical per-slice drift of a cell centre, in units of cell_size
# Gaussian sigma per full width at half maximum: the dark wall is half-dark at the label edge.
_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class _SmoothField:
    """A smooth random 2D vector field per slice: Gaussian bumps on a coarse 3D lattice.

    Evaluating it is two small matrix products per slice, so it costs almost nothing even
    for large images, and it varies slowly across z like the tissue it deforms.
    """

    lattice: np.ndarray  # (nz, ny, nx, 2) standard normal
    weights_z: np.ndarray  # (n_slices, nz)
    weights_y: np.ndarray  # (height, ny)
    weights_x: np.ndarray  # (width, nx)
    amplitude: float

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        shape: tuple[int, int, int],
        spacing: float,
        spacing_z: float,
        amplitude: float,
    ) -> _SmoothField:
        steps = (spacing_z, spacing, spacing)
        weights = [_bump_weights(n, step) for n, step in zip(shape, steps, strict=True)]
        lattice = rng.standard_normal((*(w.shape[1] for w in weights), 2))
        return cls(lattice, *weights, amplitude)

    def at(self, z: int) -> np.ndarray:
        """Field at slice z, shape (2, height, width); each component has std ``amplitude``."""
        plane = np.tensordot(self.weights_z[z], self.lattice, axes=1)  # (ny, nx, 2)
        wy, wx = self.weights_y, self.weights_x
        return self.amplitude * np.stack([_expand(wy, plane[..., c], wx) for c in range(2)])


def _bump_weights(n: int, spacing: float) -> np.ndarray:
    """Weights of Gaussian bumps spaced ``spacing`` apart covering 0..n-1 with a margin.

    Rows are normalised to unit L2 norm so a field built from i.i.d. N(0, 1) lattice values
    has unit variance everywhere, including near the image border.
    """
    pad = 3
    nodes = (np.arange(int(np.ceil((n - 1) / spacing)) + 1 + 2 * pad) - pad) * spacing
    weights = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / spacing) ** 2)
    return weights / np.linalg.norm(weights, axis=1, keepdims=True)


@dataclass(frozen=True)
class _Organelles:
    """At most one organelle of one kind per cell: position, shape and z-extent per cell.

    An organelle is an ellipsoid in z that recurs every ``z_period`` slices, so the share of
    cells showing one is the same in every slice, whatever the stack's length.
    """

    present: np.ndarray  # (n,) bool
    offset: np.ndarray  # (n, 2) centre relative to the cell centre, warped coordinates
    axes: np.ndarray  # (n, 2) semi-axes in pixels at the organelle's widest slice
    angle: np.ndarray  # (n,) orientation of the long axis
    z_phase: np.ndarray  # (n,) slice where an occurrence starts, modulo z_period
    z_half: np.ndarray  # (n,) half extent in slices
    z_period: np.ndarray  # (n,) slices between occurrences, >= 2 * z_half

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n: int,
        probability: float | np.ndarray,
        long_axis: tuple[float, float],
        aspect: tuple[float, float],
        z_half: tuple[float, float],
        duty: float,
        spread: float,
    ) -> _Organelles:
        long = rng.uniform(*long_axis, n)
        half = rng.uniform(*z_half, n)
        period = 2.0 * half / duty
        radius = spread * np.sqrt(rng.uniform(0, 1, n))
        theta = rng.uniform(0, 2 * np.pi, n)
        return cls(
            present=rng.uniform(0, 1, n) < probability,
            offset=np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1),
            axes=np.stack([long, long * rng.uniform(*aspect, n)], axis=1),
            angle=rng.uniform(0, np.pi, n),
            z_phase=rng.uniform(0, period),
            z_half=half,
            z_period=period,
        )

    def footprint(
        self, z: int, cell: np.ndarray, uv: np.ndarray, centres: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixels inside this slice's cross-section of their own cell's organelle.

        Returns the flat pixel indices, their squared normalised radius (0 at the centre,
        1 at the rim) and their coordinate along the long axis in pixels.
        """
        from_centre = (z - self.z_phase) % self.z_period - self.z_half
        depth = 1.0 - (from_centre / self.z_half) ** 2
        scale = np.sqrt(np.clip(depth, 0.0, None)) * self.present
        pixels = np.flatnonzero(scale[cell] > 0.15)
        owner = cell[pixels]
        rel = uv[pixels] - centres[owner] - self.offset[owner]
        cos, sin = np.cos(self.angle[owner]), np.sin(self.angle[owner])
        along = rel[:, 0] * cos + rel[:, 1] * sin
        across = -rel[:, 0] * sin + rel[:, 1] * cos
        axes = self.axes[owner] * scale[owner, None]
        radius2 = (along / axes[:, 0]) ** 2 + (across / axes[:, 1]) ** 2
        inside = radius2 < 1.0
        return pixels[inside], radius2[inside], along[inside]


@dataclass(frozen=True)
class _Tissue:
    """Everything random about a stack except the per-slice pixel noise."""

    sites: np.ndarray  # (n, 2) cell centres at z = 0, (y, x) in warped coordinates
    velocity: np.ndarray  # (n, 2) drift per slice
    brightness: np.ndarray  # (n,) cytoplasm grey level
    darkness: np.ndarray  # (n,) membrane grey level contribution
    width_phase: np.ndarray  # (n,) uniform in [0, 1); a wall's width comes from its two cells
    warps: tuple[_SmoothField, ...]
    mitochondria: _Organelles
    vesicles: tuple[_Organelles, ...]  # several slots, so a cell can hold a few vesicles


def _random_tissue(
    rng: np.random.Generator, n_slices: int, height: int, width: int, cell_size: float
) -> _Tissue:
    warps = (
        _SmoothField.random(rng, (n_slices, height, width), 1.2 * cell_size, 6.0, 0.22 * cell_size),
        _SmoothField.random(rng, (n_slices, height, width), 0.5 * cell_size, 3.0, 0.07 * cell_size),
    )
    reach = 4.0 * sum(w.amplitude for w in warps) + 2.0 * cell_size
    margin = reach + 3.0 * _DRIFT * cell_size * n_slices
    sites = _cell_centres(rng, height, width, cell_size, margin)
    n = len(sites)
    vesicle_richness = rng.uniform(0.0, 1.0, n) ** 2  # a few cells full of them, most with few
    return _Tissue(
        sites=sites,
        velocity=rng.normal(0.0, _DRIFT * cell_size, (n, 2)),
        brightness=rng.uniform(*_CYTOPLASM, n),
        darkness=rng.uniform(*_MEMBRANE, n),
        width_phase=rng.uniform(0.0, 1.0, n),
        warps=warps,
        mitochondria=_Organelles.random(
            rng,
            n,
            probability=0.5,
            long_axis=(0.2 * cell_size, 0.4 * cell_size),
            aspect=(0.35, 0.6),
            z_half=(4.0, 12.0),
            duty=0.7,
            spread=0.15 * cell_size,
        ),
        vesicles=tuple(
            _Organelles.random(
                rng,
                n,
                probability=vesicle_richness,
                long_axis=(3.0, 5.0),
                aspect=(0.8, 1.0),
                z_half=(1.5, 3.0),
                duty=0.5,
                spread=0.3 * cell_size,
            )
            for _ in range(_VESICLES_PER_CELL)
        ),
    )


def _cell_centres(
    rng: np.random.Generator, height: int, width: int, spacing: float, margin: float
) -> np.ndarray:
    """Cell centres covering the image plus a margin: a jittered hexagonal grid with random
    drop-outs, plus random extra centres kept a third of a spacing away from the others."""
    row_step = spacing * np.sqrt(3.0) / 2.0
    rows = np.arange(-margin, height + margin, row_step)
    cols = np.arange(-margin, width + margin, spacing)
    y, x = np.meshgrid(rows, cols, indexing="ij")
    x = x + (np.arange(len(rows)) % 2)[:, None] * spacing / 2.0
    sites = np.stack([y.ravel(), x.ravel()], axis=1)
    sites += rng.uniform(-0.3, 0.3, sites.shape) * spacing
    sites = sites[rng.uniform(0.0, 1.0, len(sites)) >= _DROP_FRACTION]
    low, high = (-margin, -margin), (height + margin, width + margin)
    extra = rng.uniform(low, high, (int(_EXTRA_FRACTION * len(sites)), 2))
    distance, _ = cKDTree(sites).query(extra)
    return np.concatenate([sites, extra[distance > spacing / 3.0]])


def synthetic_stack(
    n_slices: int,
    height: int,
    width: int,
    seed: int,
    *,
    cell_size: float = 40.0,
    membrane_width: tuple[float, float] = (2.0, 5.0),
    noise: float = 0.08,
    blur: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate an EM-like stack and its labels, both uint8 of shape (n_slices, height, width).

    Labels are 1 for membrane and 0 for cell interior (organelles included). ``cell_size``
    is the typical distance between neighbouring cell centres in pixels, ``membrane_width``
    the range of full wall widths, ``noise`` the std of additive Gaussian noise on a 0..1
    grey scale and ``blur`` the sigma of the Gaussian blur in pixels (0 disables it).
    """
    _check_arguments(n_slices, height, width, cell_size, membrane_width, noise, blur)
    rng = np.random.default_rng(seed)
    tissue = _random_tissue(rng, n_slices, height, width, cell_size)
    images = np.empty((n_slices, height, width), dtype=np.uint8)
    labels = np.empty((n_slices, height, width), dtype=np.uint8)
    for z in range(n_slices):
        grey, membrane = _render_slice(tissue, z, (height, width), membrane_width, rng)
        if blur > 0:
            grey = gaussian_filter(grey, blur, mode="reflect")
        grey += noise * rng.standard_normal(grey.shape)
        images[z] = np.round(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8)
        labels[z] = membrane
    return images, labels


def _check_arguments(
    n_slices: int,
    height: int,
    width: int,
    cell_size: float,
    membrane_width: tuple[float, float],
    noise: float,
    blur: float,
) -> None:
    for name, value in (("n_slices", n_slices), ("height", height), ("width", width)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not cell_size > 0:
        raise ValueError(f"cell_size must be > 0, got {cell_size!r}")
    if len(membrane_width) != 2 or not 0 < membrane_width[0] <= membrane_width[1]:
        raise ValueError(f"membrane_width must satisfy 0 < low <= high, got {membrane_width!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if not blur >= 0:
        raise ValueError(f"blur must be >= 0, got {blur!r}")


def _render_slice(
    tissue: _Tissue,
    z: int,
    shape: tuple[int, int],
    membrane_width: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free grey image (0..1, float) and membrane mask of slice z."""
    height, width = shape
    grid = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij")).astype(float)
    warped = grid + sum(w.at(z) for w in tissue.warps)
    uv = warped.reshape(2, -1).T
    centres = tissue.sites + z * tissue.velocity
    distances, nearest = cKDTree(centres).query(uv, k=2)
    first, second = nearest[:, 0], nearest[:, 1]
    gap = np.linalg.norm(centres[second] - centres[first], axis=1)
    # Distance to the wall = distance to the bisector of the two nearest centres.
    wall = (distances[:, 1] ** 2 - distances[:, 0] ** 2) / (2.0 * gap)
    # Shift each wall sideways by a little smooth noise (a signed shift, so walls wiggle but
    # never thin out and open), and vary the width slowly along it around the wall's own width.
    side = np.where(first < second, 1.0, -1.0)
    wall = np.abs(wall + side * 0.5 * _unit_noise(rng, shape, 2.0).ravel())
    phase = (tissue.width_phase[first] + tissue.width_phase[second]) % 1.0
    half_width = 0.5 * (membrane_width[0] + phase * (membrane_width[1] - membrane_width[0]))
    half_width *= np.clip(1.0 + 0.2 * _smooth_noise(rng, shape, 16.0).ravel(), 0.8, 1.4)
    membrane = wall < half_width

    grey = tissue.brightness[first] + _texture(rng, shape).ravel()
    _draw_organelles(grey, tissue, z, first, uv, centres, clear=wall > half_width + 1.5)
    profile = np.exp(-0.5 * (wall.clip(0.0) * _FWHM_SIGMA / (2.0 * half_width)) ** 2)
    dark = 0.5 * (tissue.darkness[first] + tissue.darkness[second])
    grey = grey * (1.0 - profile) + dark * profile
    return grey.reshape(shape), membrane.reshape(shape)


def _draw_organelles(
    grey: np.ndarray,
    tissue: _Tissue,
    z: int,
    cell: np.ndarray,
    uv: np.ndarray,
    centres: np.ndarray,
    clear: np.ndarray,
) -> None:
    """Paint mitochondria (dark rim, striped interior) and vesicles (dark rings) in place.

    Only pixels in ``clear`` (well inside their cell) are painted, so organelles never touch
    a membrane and stay label 0.
    """
    pixels, radius2, along = tissue.mitochondria.footprint(z, cell, uv, centres)
    keep = clear[pixels]
    pixels, radius2, along = pixels[keep], radius2[keep], along[keep]
    cristae = 0.42 + 0.08 * np.cos(2.0 * np.pi * along / 5.0)
    grey[pixels] = np.where(radius2 > 0.55, 0.2, cristae)

    for vesicles in tissue.vesicles:
        pixels, radius2, _ = vesicles.footprint(z, cell, uv, centres)
        keep = clear[pixels]
        pixels, radius2 = pixels[keep], radius2[keep]
        grey[pixels] = np.where(radius2 > 0.35, 0.25, grey[pixels] - 0.05)


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    # A 2D Gaussian filter scales the std of white noise by 1 / (2 sqrt(pi) sigma).
    smooth = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return smooth * (2.0 * np.sqrt(np.pi) * sigma)


def _texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Cytoplasm texture: fine grain plus slow mottling, zero mean."""
    return 0.05 * _unit_noise(rng, shape, 1.0) + 0.04 * _smooth_noise(rng, shape, 10.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> np.ndarray:
    """Unit-variance noise varying over ``spacing`` pixels; two small matrix products, far
    cheaper than a wide Gaussian filter."""
    weights_y, weights_x = (_bump_weights(n, spacing) for n in shape)
    lattice = rng.standard_normal((weights_y.shape[1], weights_x.shape[1]))
    return _expand(weights_y, lattice, weights_x)


def _expand(weights_y: np.ndarray, lattice: np.ndarray, weights_x: np.ndarray) -> np.ndarray:
    """``weights_y @ lattice @ weights_x.T`` without BLAS: on a busy machine (parallel
    Snakemake jobs) multi-threaded BLAS for these thin products thrashes and runs many times
    slower, while einsum's single-threaded loop keeps a steady few milliseconds."""
    return np.einsum("ij,kj->ik", np.einsum("ij,jk->ik", weights_y, lattice), weights_x)
