"""Per-level crops: where a disc level's crop lies in world space, and sampling every series onto it.

A crop is a :class:`~spine.data.grid.SamplingGrid` of ``size`` voxels (default 64^3) spanning ``crop_mm``
(default 80 x 64 x 48 mm) centred on a level's centre (LPS mm). Its axes are i (patient left), j (posterior)
and k (towards the head); with ``align`` the k axis follows the local spine axis, the line through the
neighbouring levels' centres, and i stays as close to world +x as the tilt allows. Every series of the
study (sagittal T1, sagittal T2/STIR, axial T2) is resampled onto the same grid, so the three sequences are
co-registered voxel for voxel: one channel per series type, zeros plus a ``present = False`` flag where a
study lacks the series.

Level centre (:func:`level_centres`): the spinal canal point of the level (midline, at the disc), else the
midpoint of a left/right pair of points, else the mean of whatever points the level has. Levels without
any point are interpolated along the level index from the others (:func:`fill_centres`).

Sampling goes through `spine.data.volume.SeriesVolume.sample`: it reads only the block of each acquired stack
the crop touches (the cache's stacks are memory-mapped), interpolates once from the acquired voxels, and
normalises with the series' robust intensity range, the same for every crop of that series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spine.constants import CONDITIONS
from spine.data.grid import SamplingGrid
from spine.data.volume import SeriesVolume

DEFAULT_SIZE = (64, 64, 64)
DEFAULT_MM = (80.0, 64.0, 48.0)  # left-right wide enough for both foramina (17-31 mm off the midline)


# --------------------------------------------------------------------------------------------- geometry
def level_centres(points: np.ndarray) -> np.ndarray:
    """Centre of each level from the label (or predicted) points.

    Args:
        points: ``(K, L, 3)`` LPS mm, conditions in ``CONDITIONS`` order x levels, NaN where missing.
    Returns:
        ``(L, 3)`` LPS mm, NaN for levels without any point.
    """
    points = np.asarray(points, dtype=np.float64)
    index = {c: k for k, c in enumerate(CONDITIONS)}
    pairs = [(index[c], index["right_" + c[len("left_"):]]) for c in CONDITIONS if c.startswith("left_")]
    spinal = index["spinal_canal_stenosis"]
    out = np.full((points.shape[1], 3), np.nan)
    for lv in range(points.shape[1]):
        if np.isfinite(points[spinal, lv]).all():
            out[lv] = points[spinal, lv]
            continue
        mids = [(points[a, lv] + points[b, lv]) / 2 for a, b in pairs
                if np.isfinite(points[a, lv]).all() and np.isfinite(points[b, lv]).all()]
        if mids:
            out[lv] = np.mean(mids, axis=0)
        elif np.isfinite(points[:, lv]).all(-1).any():
            out[lv] = np.nanmean(points[:, lv], axis=0)
    return out


def fill_centres(centres: np.ndarray) -> np.ndarray:
    """``(L, 3)`` centres with NaN rows filled by linear inter/extrapolation along the level index.

    One known level: the others are placed 36 mm apart along world z (a typical disc pitch), head-first.
    Raises ValueError when no level is known.
    """
    centres = np.asarray(centres, dtype=np.float64).copy()
    known = np.flatnonzero(np.isfinite(centres).all(-1))
    if known.size == 0:
        raise ValueError("no level has a centre")
    if known.size == len(centres):
        return centres
    levels = np.arange(len(centres), dtype=np.float64)
    if known.size == 1:
        step = np.array([0.0, 0.0, -36.0])  # the next level down is towards the feet (-z)
        return centres[known[0]] + (levels - known[0])[:, None] * step
    for axis in range(3):
        slope, intercept = np.polyfit(known.astype(np.float64), centres[known, axis], 1)
        missing = ~np.isfinite(centres[:, axis])
        inside = (levels > known.min()) & (levels < known.max())
        centres[missing & inside, axis] = np.interp(levels[missing & inside], known, centres[known, axis])
        outside = missing & ~inside
        centres[outside, axis] = intercept + slope * levels[outside]
    return centres


def level_axes(centres: np.ndarray, align: bool = True) -> np.ndarray:
    """``(L, 3, 3)`` crop directions: columns are the world unit vectors of crop axes i, j, k.

    k points towards the head along the local spine axis (the line through the neighbouring levels'
    centres; one-sided at L1/L2 and L5/S1), i is world +x (patient left) made orthogonal to k, j = k x i
    (posterior). Right-handed, so a crop is never mirrored. ``align=False`` gives identity axes.
    """
    centres = np.asarray(centres, dtype=np.float64)
    n = len(centres)
    out = np.repeat(np.eye(3)[None], n, axis=0)
    if not align or n < 2 or not np.isfinite(centres).all():
        return out
    for lv in range(n):
        up, down = max(lv - 1, 0), min(lv + 1, n - 1)  # levels run head (L1/L2) to feet (L5/S1)
        k = centres[up] - centres[down]
        if np.linalg.norm(k) < 1e-6:
            continue
        k /= np.linalg.norm(k)
        if k[2] < 0.5:  # more than 60 degrees off the body axis: not a plausible spine, keep identity
            continue
        i = np.array([1.0, 0.0, 0.0]) - k[0] * k
        i /= np.linalg.norm(i)
        out[lv] = np.stack([i, np.cross(k, i), k], axis=1)
    return out


def crop_grid(centre, direction=None, size: Sequence[int] = DEFAULT_SIZE,
              crop_mm: Sequence[float] = DEFAULT_MM) -> SamplingGrid:
    """The crop of ``size`` voxels spanning ``crop_mm`` (mm along i, j, k) centred on ``centre`` (LPS mm)."""
    size = tuple(int(v) for v in size)
    spacing = np.asarray(crop_mm, dtype=np.float64) / np.asarray(size, dtype=np.float64)
    return SamplingGrid.centred(centre, size, spacing, direction)


# --------------------------------------------------------------------------------------------- sampling
def sample_crop(volumes: Sequence[SeriesVolume | None], grid: SamplingGrid) -> tuple[np.ndarray, np.ndarray]:
    """``(C, X, Y, Z)`` float32 crop, one normalised channel per series (zeros where None), and ``present`` (C,)."""
    channels = [np.zeros(grid.size, np.float32) if v is None else v.sample(grid)[0] for v in volumes]
    present = np.array([v is not None for v in volumes], dtype=bool)
    return np.stack(channels), present


def build_crops(volumes: Sequence[SeriesVolume | None], centres: np.ndarray, axes: np.ndarray,
                size: Sequence[int] = DEFAULT_SIZE, crop_mm: Sequence[float] = DEFAULT_MM,
                affine=None) -> tuple[np.ndarray, np.ndarray]:
    """One study's crop-model input: ``(L, C, X, Y, Z)`` crops at the ``(L, 3)`` level ``centres`` (LPS mm) with
    the ``(L, 3, 3)`` crop ``axes`` (`level_axes`), each moved by ``affine`` (a `GridAffine`, e.g. augmentation
    or the mirror of test-time augmentation), and ``present`` ``(C,)``; the one builder of the grading dataset
    and ``spine-predict``."""
    crops, present = [], np.array([v is not None for v in volumes], dtype=bool)
    for lv in range(len(centres)):
        grid = crop_grid(centres[lv], axes[lv], size, crop_mm)
        crop, present = sample_crop(volumes, grid if affine is None else affine(grid))
        crops.append(crop)
    return np.stack(crops), present
