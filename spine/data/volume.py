"""A series as its acquired stacks (the one volume type) and the one sampler every stage draws through.

A :class:`SeriesVolume` holds the stacks of one series exactly as acquired (`spine.io.dicom.DicomStack`:
voxels [k, j, i] with i = DICOM column, j = row, k = slice sorted along the normal, and the true IPP of every
slice). The pixels may be a read-only memory map of the cache (stored integers) or an in-memory array
(inference, built from DICOM by the same code). Nothing is resampled until a network input is taken.

:meth:`SeriesVolume.sample` takes a :class:`~spine.data.grid.SamplingGrid` (world LPS mm: centre, axes, size
in voxels, spacing in mm) and returns intensities on it, float32 indexed [i, j, k] of the grid, plus a
coverage mask. For each stack:

1. Every grid voxel is mapped to the stack's continuous index (i, j, k): through the affine for a regular
   stack, piecewise linear between the true slice positions for an irregular one (uneven steps, missing
   slices, gantry-tilt shear; `DicomStack.world_to_index`).
2. Coverage: within half a voxel of the stack's voxel centres on every axis ([-0.5, n - 0.5]). A slice gap
   wider than ``max_gap_factor`` times the median step is not bridged: half a median step either side of it
   is covered by the nearest slice, the rest is not.
3. Only the block of the stack the grid touches is read. With ``antialias`` it is box-averaged first by the
   whole number of stack voxels that fit in one grid step along each stack axis (a 4 mm landmark grid over
   0.8 mm pixels averages 5 x 5), in cells anchored at the stack's voxel 0, so the pooled image does not
   depend on where the grid lies; then interpolated trilinearly (``nearest_slice``: nearest along k).
4. Where several stacks cover a voxel (angled axial blocks overlap) their values are averaged; voxels no
   stack covers are 0 with mask 0.

Intensities are the modality values (RescaleSlope/Intercept applied) unless ``normalise``: then the series'
robust range (percentiles ``percentiles`` of its positive voxels, all stacks together) maps to 0 and 1, clipped
below at 0, the same for every crop of the series. A grid equal to a stack's own grid returns that stack's
voxels exactly (the interpolation weights are 0 and 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from spine.data.defaults import DEFAULT_MAX_GAP_FACTOR
from spine.data.grid import SamplingGrid
from spine.io.dicom import DicomStack

__all__ = ["SeriesVolume", "robust_range"]

_CHUNK_VOXELS = 2_000_000  # grid voxels mapped at a time (bounds the index arrays: 48 MB)
_EDGE = 1e-6  # index tolerance of "inside the stack"


def robust_range(arrays: Sequence[np.ndarray], percentiles: Sequence[float] = (1, 99)) -> tuple[float, float] | None:
    """(low, high): the percentiles of the positive voxels of ``arrays`` together (a strided subsample of at
    most ~1M voxels, so a memory map is read once), or None with fewer than 16 positive voxels."""
    total = sum(int(np.prod(a.shape)) for a in arrays)
    step = max(1, total // 1_000_000)
    # the subsample in the arrays' own type (stored integers stay integers until the last, small subsample):
    # the same values, in less time than converting the million first
    parts = [np.asarray(a).reshape(-1)[::step] for a in arrays]
    values = np.concatenate(parts) if len({p.dtype for p in parts}) == 1 else \
        np.concatenate([p.astype(np.float32) for p in parts]) if parts else np.zeros(0, np.float32)
    values = values[values > 0]
    if values.size < 16:
        return None
    values = values[:: max(1, values.size // 200_000)]
    if values.dtype in (np.int16, np.uint16):
        return _integer_percentiles(values, percentiles)
    low, high = np.percentile(values.astype(np.float32), percentiles)
    return float(low), float(high)


def _integer_percentiles(values: np.ndarray, percentiles: Sequence[float]) -> tuple[float, float]:
    """``np.percentile(values, percentiles)`` (linear interpolation between the order statistics at
    ``q / 100 * (n - 1)``) of positive 16-bit integers, from their counts: one pass instead of a partial sort."""
    counts = np.cumsum(np.bincount(values.astype(np.int64)))
    out = []
    for q in percentiles:
        position = float(q) / 100.0 * (values.size - 1)
        below = int(np.floor(position))
        low, high = np.searchsorted(counts, [below, min(below + 1, values.size - 1)], side="right")
        out.append(float(low + (float(high) - float(low)) * (position - below)))
    return out[0], out[1]


@dataclass(eq=False)
class SeriesVolume:
    """One series: its acquired stacks and where they came from.

    Attributes:
        stacks: the stacks that make the series (`spine.preprocess.volume.select_stacks`), in cache order.
        percentiles: the robust range used by ``sample(normalise=True)``.
        series_id: the DICOM series (None when unknown). description: its series type.
        notes: what the stack selection left out or merged (empty for a plain series).
        source: ``cache`` or ``dicom``.
        max_gap_factor: slice gaps wider than this times the median step are not interpolated across.
    """

    stacks: list[DicomStack]
    percentiles: tuple[float, float] = (1.0, 99.0)
    series_id: int | None = None
    description: str = ""
    notes: list[str] = field(default_factory=list)
    source: str = "dicom"
    max_gap_factor: float = DEFAULT_MAX_GAP_FACTOR
    _range: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_array(cls, array_ijk: np.ndarray, origin, spacing, direction=None, **fields) -> SeriesVolume:
        """A one-stack volume from an array indexed [i, j, k] on the grid ``world = origin + direction @ (ijk *
        spacing)`` (LPS mm; identity direction by default): synthetic tests and user arrays."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        spacing = np.asarray(spacing, dtype=np.float64)
        pixels = np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0))
        k = np.arange(pixels.shape[0], dtype=np.float64)
        ipps = np.asarray(origin, dtype=np.float64) + np.outer(k * spacing[2], direction[:, 2])
        stack = DicomStack.from_slices(pixels, ipps, direction[:, 0], direction[:, 1], (spacing[1], spacing[0]))
        if not np.allclose(stack.direction_lps[:, 2], direction[:, 2], atol=1e-9):
            raise ValueError("direction must be right-handed (k = i x j): mirror the array instead")
        return cls([stack], **fields)

    # ---- geometry
    def voxel_corners(self) -> np.ndarray:
        """World LPS mm (4 * slices, 3) of the corner voxel centres of every slice of every stack."""
        out = []
        for stack in self.stacks:
            nk, nj, ni = stack.shape
            ij = np.array([[0, 0], [ni - 1, 0], [0, nj - 1], [ni - 1, nj - 1]], dtype=np.float64)
            for k in range(nk):
                out.append(stack.index_to_world(np.column_stack([ij, np.full(4, float(k))])))
        return np.concatenate(out)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World LPS mm of the lowest and highest corner of the box around every voxel centre."""
        corners = self.voxel_corners()
        return corners.min(axis=0), corners.max(axis=0)

    @property
    def centre(self) -> np.ndarray:
        """World LPS mm of the middle of `bounds`."""
        lo, hi = self.bounds()
        return (lo + hi) / 2

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(s.pixels).nbytes if not isinstance(s.pixels, np.memmap) else 0 for s in self.stacks))

    def intensity_range(self) -> tuple[float, float] | None:
        """The robust range of `percentiles` over all stacks (computed once)."""
        if self.percentiles not in self._range:
            self._range[self.percentiles] = robust_range([s.pixels for s in self.stacks], self.percentiles)
        return self._range[self.percentiles]

    # ---- sampling
    def sample(self, grid: SamplingGrid, *, normalise: bool = True, antialias: bool = True,
               nearest_slice: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(values, covered)`` on ``grid``: float32 and bool arrays of ``grid.size`` indexed [i, j, k] (see the
        module docstring); values are 0 where no stack covers the voxel."""
        bounds = self.intensity_range() if normalise else None
        if normalise and bounds is None:  # an empty series: nothing to see
            return np.zeros(grid.size, np.float32), np.zeros(grid.size, bool)
        total = np.zeros(grid.size, np.float32)
        count = np.zeros(grid.size, np.uint8)
        for stack in self.stacks:
            _sample_stack(stack, grid, total, count, antialias=antialias, nearest_slice=nearest_slice,
                          max_gap_factor=self.max_gap_factor)
        covered = count > 0
        if (count > 1).any():
            np.divide(total, count, out=total, where=count > 1)
        if bounds is not None:
            low, high = bounds
            total -= low
            total *= 1.0 / max(high - low, 1e-6)
            np.clip(total, 0.0, None, out=total)
            total[~covered] = 0.0
        return total, covered

    def pooled(self, spacing_mm) -> SeriesVolume:
        """This series with every stack box-averaged to about ``spacing_mm`` (a number or (3,) along world x, y, z,
        mm, as `sample` pools for an axis-aligned grid of that spacing; in-plane only
        for irregular stacks): a smaller copy to sample coarse grids from many times (the landmark input).
        Keeps the intensity range of the original, so both normalise alike."""
        target = np.broadcast_to(np.asarray(spacing_mm, dtype=np.float64), (3,))  # along world x, y, z
        stacks = []
        for stack in self.stacks:
            along = target[np.argmax(np.abs(stack.direction_lps), axis=0)]  # at the world axis nearest each stack axis
            factors = np.maximum(1, np.floor(along / np.asarray(stack.spacing) + 1e-6)).astype(int)
            if not stack.is_regular:
                factors[2] = 1
            stacks.append(_pooled_stack(stack, factors))
        self.intensity_range()
        return SeriesVolume(stacks, self.percentiles, self.series_id, self.description, list(self.notes),
                            self.source, self.max_gap_factor, dict(self._range))


# ------------------------------------------------------------------------------------------ one stack
def _stack_index(stack: DicomStack, grid: SamplingGrid, i0: int, i1: int) -> np.ndarray:
    """Continuous stack index (3, n_i, nj, nk) as (i, j, k) of grid voxels with grid index i in [i0, i1)."""
    ii = np.arange(i0, i1, dtype=np.float64)[:, None, None]
    jj = np.arange(grid.size[1], dtype=np.float64)[None, :, None]
    kk = np.arange(grid.size[2], dtype=np.float64)[None, None, :]
    if stack.is_regular:
        inverse = np.linalg.inv(stack.direction_lps * stack.spacing)
        m = inverse @ grid.matrix
        t = inverse @ (grid.origin - stack.origin_lps)
        return np.stack([m[a, 0] * ii + m[a, 1] * jj + m[a, 2] * kk + t[a] for a in range(3)])
    index = np.stack(np.broadcast_arrays(ii, jj, kk), axis=-1)
    return np.moveaxis(stack.world_to_index(grid.index_to_world(index)), -1, 0)


def _pool_factors(stack: DicomStack, grid: SamplingGrid, nearest_slice: bool) -> np.ndarray:
    """Whole stack voxels per grid step along each stack axis (i, j, k), at least 1."""
    cosines = np.abs(stack.direction_lps.T @ grid.direction)  # [stack axis, grid axis]
    step = grid.spacing[np.argmax(cosines, axis=1)]  # the grid step of the grid axis closest to each stack axis
    factors = np.maximum(1, np.floor(step / np.asarray(stack.spacing) + 1e-6)).astype(int)
    if nearest_slice or not stack.is_regular:
        factors[2] = 1
    return np.minimum(factors, np.asarray(stack.shape[::-1]))


def _pool(block: np.ndarray, factors_kji) -> np.ndarray:
    """Box average of a [k, j, i] block by whole factors (a trailing remainder is dropped): strided sums along one
    axis at a time, a few passes over the block."""
    out = block
    for axis, f in enumerate(int(f) for f in factors_kji):
        if f == 1:
            continue
        n = out.shape[axis] // f
        parts = [out[(slice(None),) * axis + (slice(o, n * f, f),)] for o in range(f)]
        summed = parts[0].astype(np.float32, copy=True)
        for part in parts[1:]:
            summed += part
        out = summed
    if out is block:
        return block
    out *= np.float32(1.0 / float(np.prod([int(f) for f in factors_kji])))
    return out


def _pooled_stack(stack: DicomStack, factors_ijk) -> DicomStack:
    """The stack box-averaged by ``factors_ijk``; each new voxel sits at the centre of the voxels it averages."""
    fi, fj, fk = (int(f) for f in factors_ijk)
    if fi == fj == fk == 1:
        return stack
    pixels = _pool(np.asarray(stack.pixels, dtype=np.float32), (fk, fj, fi))
    r, c = stack.direction_lps[:, 0], stack.direction_lps[:, 1]
    ipps = stack.image_positions_lps[: pixels.shape[0] * fk].reshape(pixels.shape[0], fk, 3).mean(axis=1)
    ipps = ipps + (fi - 1) / 2 * stack.spacing[0] * r + (fj - 1) / 2 * stack.spacing[1] * c
    return DicomStack.from_slices(pixels, ipps, r, c, (stack.spacing[1] * fj, stack.spacing[0] * fi),
                                  slice_thickness=stack.slice_thickness)


def _sample_stack(stack: DicomStack, grid: SamplingGrid, total: np.ndarray, count: np.ndarray, *, antialias: bool,
                  nearest_slice: bool, max_gap_factor: float) -> None:
    """Add the stack's interpolated values to ``total`` and its coverage to ``count`` (both [i, j, k] of grid)."""
    nk, nj, ni = stack.shape
    size = np.array([ni, nj, nk], dtype=np.float64)
    factors = _pool_factors(stack, grid, nearest_slice) if antialias else np.ones(3, dtype=int)
    per_chunk = max(1, _CHUNK_VOXELS // max(1, grid.size[1] * grid.size[2]))
    cosines = np.abs(stack.direction_lps.T @ grid.direction)
    aligned = bool(np.all((cosines < 1e-4) | (cosines > 1 - 1e-4)))  # IOPs are orthogonal to ~1e-6
    for i0 in range(0, grid.size[0], per_chunk):
        i1 = min(i0 + per_chunk, grid.size[0])
        index = _stack_index(stack, grid, i0, i1)
        if stack.is_regular:  # an affine map: the index range is the range of the 8 corners
            corners = index[:, [0, -1]][:, :, [0, -1]][:, :, :, [0, -1]].reshape(3, -1)
            extent = corners.min(axis=1), corners.max(axis=1)
        else:
            extent = index.reshape(3, -1).min(axis=1), index.reshape(3, -1).max(axis=1)
        covered = _coverage(index, size, extent)
        if not stack.is_regular:
            covered = _bridge_gaps(stack, index, max_gap_factor) if covered is None else \
                covered & _bridge_gaps(stack, index, max_gap_factor)
        if covered is not None and not covered.any():
            continue
        inside = index.reshape(3, -1) if covered is None else index[:, covered]  # (3, n)
        if aligned:  # axes along the stack's: snap to whole voxels, so a grid on the stack's own is exact
            snapped = np.round(inside)
            np.copyto(inside, snapped, where=np.abs(inside - snapped) < 1e-6)
        low, high = extent if covered is None or stack.is_regular else (inside.min(axis=1), inside.max(axis=1))
        lo = np.clip(np.floor(low).astype(int), 0, size.astype(int) - 1)
        hi = np.clip(np.ceil(high).astype(int) + 1, lo + 1, size.astype(int))
        # Pooling cells start at multiples of the factor and a trailing remainder is dropped, as in `pooled`:
        # the pooled stack is one fixed image, whatever the grid or chunk.
        # One whole cell beyond each end, so that every point has both pooled neighbours to interpolate between.
        full = size.astype(int) // factors * factors
        hi = np.minimum((-(-hi // factors) + 1) * factors, full)
        lo = np.clip((lo // factors - 1) * factors, 0, hi - factors)
        block = _pool(np.asarray(stack.pixels[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]], dtype=np.float32),
                      factors[::-1])
        inside -= (lo + (factors - 1) / 2)[:, None]
        inside /= factors[:, None]  # (i, j, k) in the pooled block
        if nearest_slice:
            inside[2] = np.round(inside[2])
        values = ndimage.map_coordinates(block, inside[::-1], order=1, mode="nearest", output=np.float32)
        if covered is None:
            total[i0:i1] += values.reshape(total[i0:i1].shape)
            count[i0:i1] += 1
        else:
            view_total, view_count = total[i0:i1], count[i0:i1]
            view_total[covered] += values
            view_count[covered] += 1


def _coverage(index: np.ndarray, size: np.ndarray, extent) -> np.ndarray | None:
    """Where a continuous index (3, ...) lies within half a voxel of the stack's voxel centres; None when
    everywhere (the common case of a crop inside the stack: no mask to build or apply). ``extent``: the index's
    (min, max) per axis."""
    low, high = -0.5 - _EDGE, size - 0.5 + _EDGE
    if np.all(extent[0] >= low) and np.all(extent[1] <= high):
        return None
    covered = (index[0] >= low) & (index[0] <= high[0])
    for a in (1, 2):
        covered &= (index[a] >= low) & (index[a] <= high[a])
    return covered


def _bridge_gaps(stack: DicomStack, index: np.ndarray, max_gap_factor: float) -> np.ndarray:
    """False inside a slice gap wider than ``max_gap_factor`` median steps, except within half a median step of
    a slice; the index's k is moved onto that nearest slice there (``index`` is changed in place)."""
    if stack.n_slices < 2:
        return np.ones(index.shape[1:], dtype=bool)
    steps = np.diff(stack.slice_positions)
    median = float(np.median(steps))
    wide = steps > max_gap_factor * median
    if not wide.any():
        return np.ones(index.shape[1:], dtype=bool)
    k = index[2]
    seg = np.clip(np.floor(k), 0, stack.n_slices - 2).astype(int)
    inside = (k > seg) & (k < seg + 1) & wide[seg]
    gap = steps[seg]
    near_lo = (k - seg) * gap <= median / 2
    near_hi = (seg + 1 - k) * gap <= median / 2
    index[2] = np.where(inside & near_lo, seg, np.where(inside & near_hi, seg + 1, k))
    return ~(inside & ~near_lo & ~near_hi)
