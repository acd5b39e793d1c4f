"""Patient volumes: every stack of a series resampled onto one grid aligned with the patient axes.

This is the one code path from a `DicomSeries` to voxels, used by the cache writer and, in memory, by
inference. Frames (DESIGN.md section 3):

- **World**: DICOM patient coordinates, LPS mm (+x patient left, +y posterior, +z head).
- **Cache voxel**: continuous index (i, j, k) of a volume, with identity direction:
  ``world = origin + (i * sx, j * sy, k * sz)``. This is SimpleITK's index order
  (``image.TransformContinuousIndexToPhysicalPoint((i, j, k))``) and nibabel's array order ``[i, j, k]``
  of the written NIfTI, whose RAS affine SimpleITK writes as ``diag(-sx, -sy, sz)`` plus offset.
  Integer indices are voxel centres. Every study, every series type: same orientation.

Grid: the bounding box of the voxel centres of every stack used (corners of each slice, so sheared and
irregular stacks count with their true positions), origin at its minimum corner, ``ceil(extent / spacing)
+ 1`` voxels per axis so the last slice centre is inside. Origin and spacing are rounded to float32, the
precision NIfTI stores, so a volume built in memory and the same volume read back from the cache have
exactly the same geometry.

Default spacing per series type, (x, y, z) mm (`DEFAULT_SPACING_MM`; the ``spacing`` config overrides):
- Sagittal T1 and Sagittal T2/STIR: (3.0, 0.8, 0.8). The slice direction of a sagittal series is x; lumbar
  sagittal series are acquired 3-4.5 mm apart, so 3 mm loses nothing along x and oversamples a 4 mm
  acquisition only 1.3x. In-plane (y, z) acquisitions are 0.5-0.8 mm (384-640 px on a 300 mm field); 0.8
  mm keeps 384-px series at native resolution and caps 512-640-px ones, which would otherwise double or
  triple the cache (about 18 MB per sagittal series instead of 30-50) for detail finer than the canal
  and foramina the grades are about (5-15 mm).
- Axial T2: (0.8, 0.8, 3.0). Same reasoning with the slice direction along z: axial stacks are 3.5-5 mm
  apart (angled per disc, so z is only near their normal), in-plane 0.35-0.7 mm on a 180-200 mm field.
- Anything else: 1 mm isotropic.

The configured spacing is the *finest* one: along each axis the grid is never finer than the acquired
sampling (`native_spacing`), so low-resolution series are not inflated; the rule is part of the cache id.

Resampling: trilinear. Regular stacks go through SimpleITK ``Resample`` (each stack into the sub-box of the
grid it can reach). Irregular stacks (uneven steps, missing slices, gantry-tilt shear) are resampled from
their true slice positions: each grid voxel is mapped through `DicomStack.world_to_index` (piecewise linear
between the true IPPs) and interpolated linearly in-plane and between the two neighbouring true slices.
A gap wider than ``max_gap_factor`` times the median step is not bridged: only half a median step on
either side of it counts as covered (nearest slice), the rest is left uncovered.

Coverage: a voxel is covered by a stack when its continuous stack index lies within half a voxel of the
stack's voxel centres on every axis ([-0.5, n - 0.5], SimpleITK's rule; the edge value is held there).
Voxels no stack covers hold `FILL_VALUE` (0.0) and 0 in the mask; where several stacks cover a voxel
(angled axial blocks overlap) their values are averaged. Intensities are the modality values
(RescaleSlope/Intercept applied), float32, never clipped or scaled.

Only the first of several volumes sharing the same positions (echoes, time points) is used. Stacks of fewer
than ``min_slices`` slices, and stacks with several slices at the same depth shifted in-plane (no map from
depth to slice), are left out with a note; a series with no stack left (e.g. a single slice) raises
`VolumeError`: a one-slice "volume" has no slice direction to resample along.

One orientation per series (`own_orientation`): stacks whose slice normal is closest to another world axis
than the series' own orientation (named by its description, else the one with most slices) are left out with a
note. A stack overlapping a larger one of the same orientation (slices of another matrix size or pixel spacing
in one series, e.g. interleaved with the larger stack's slices) is merged into it with a note
(`merge_overlapping`): its slices at depths the larger stack lacks are resampled in-plane onto the larger one's
pixel grid and sorted in among its slices, so depth is sampled at the finer step; its slices at depths the
larger stack already has are left out.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from spine.constants import series_type
from spine.io.dicom import DicomSeries, DicomStack
from spine.preprocess.config import (DEFAULT_MAX_GAP_FACTOR, DEFAULT_MAX_VOXELS, DEFAULT_MIN_SLICES,
                                     DEFAULT_SPACING_MM)

__all__ = [
    "DEFAULT_SPACING_MM",
    "FILL_VALUE",
    "Grid",
    "InstanceGeometry",
    "SeriesVolume",
    "VolumeError",
    "build_volume",
    "instance_geometry",
    "make_volume",
    "merge_overlapping",
    "named_orientation",
    "own_orientation",
    "pixel_to_world",
    "select_stacks",
    "spacing_for",
    "spacing_key",
    "stack_orientation",
    "volume_from_dicom",
    "voxel_to_world",
    "world_to_voxel",
]

FILL_VALUE = 0.0  # value of voxels that no stack covers (the mask says which)
_MIN_STEP_MM = 0.01  # slices closer than this along the normal are at the same depth
_CHUNK_VOXELS = 500_000  # irregular stacks are resampled this many grid voxels at a time
ORIENTATIONS = ("sagittal", "coronal", "axial")  # named by the world axis x, y, z closest to the slice normal
_ORIENTATION_WORDS = {"sag": "sagittal", "sagittal": "sagittal", "cor": "coronal", "coronal": "coronal",
                      "ax": "axial", "axial": "axial", "tra": "axial", "transverse": "axial", "transversal": "axial"}
_SAME_NORMAL_COS = float(np.cos(np.radians(1.0)))  # stacks whose normals are within 1 degree: same orientation
_OVERLAP_FRACTION = 0.5  # same-orientation stacks sharing depth and this much of the smaller field of view overlap
_EDGE = 1e-6  # pixels: tolerance of "between the pixel centres" of a merged slice


class VolumeError(ValueError):
    """A series that cannot become a patient volume; the message says why."""


# ----------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Grid:
    """An LPS-aligned voxel grid: ``world = origin + index * spacing`` (identity direction).

    Attributes:
        origin: (3,) LPS mm of the centre of voxel (0, 0, 0).
        spacing: (3,) mm along x, y, z.
        size: (ni, nj, nk) voxels along x, y, z (SimpleITK order; numpy arrays are [k, j, i]).
    """

    origin: np.ndarray
    spacing: np.ndarray
    size: tuple[int, int, int]

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.size))

    def world_to_voxel(self, points_lps) -> np.ndarray:
        """LPS mm (..., 3) -> continuous index (..., 3) as (i, j, k)."""
        return (np.asarray(points_lps, dtype=np.float64) - self.origin) / self.spacing

    def voxel_to_world(self, ijk) -> np.ndarray:
        """Continuous index (..., 3) as (i, j, k) -> LPS mm (..., 3)."""
        return np.asarray(ijk, dtype=np.float64) * self.spacing + self.origin

    def sub(self, lo, hi) -> Grid:
        """The part of this grid from index lo (inclusive) to hi (exclusive), (i, j, k) each."""
        lo = np.asarray(lo, dtype=int)
        return Grid(self.origin + lo * self.spacing, self.spacing,
                    tuple(int(v) for v in np.asarray(hi) - lo))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetOrigin(self.origin.tolist())
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection(np.eye(3).flatten().tolist())
        return image

    @classmethod
    def of_image(cls, image: sitk.Image) -> Grid:
        direction = np.array(image.GetDirection()).reshape(3, 3)
        if not np.allclose(direction, np.eye(3), atol=1e-6):
            raise ValueError(f"not an LPS-aligned image (direction {direction.round(4).tolist()})")
        return cls(np.array(image.GetOrigin()), np.array(image.GetSpacing()), tuple(image.GetSize()))


def _f32(values) -> np.ndarray:
    """Values rounded to float32 (what NIfTI stores), kept as float64."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def grid_for(stacks: list[DicomStack], spacing_mm, max_voxels: int = DEFAULT_MAX_VOXELS) -> Grid:
    """The grid over the voxel centres of every stack, at ``spacing_mm`` (x, y, z)."""
    spacing = _f32(spacing_mm)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing must be three positive numbers (x, y, z mm), got {spacing_mm}")
    corners = np.concatenate([_slice_corners(s) for s in stacks])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size = np.ceil((hi - lo) / spacing - 1e-6).astype(int) + 1
    grid = Grid(_f32(lo), spacing, tuple(int(v) for v in size))
    if grid.n_voxels > max_voxels:
        raise VolumeError(f"grid of {grid.size[0]}x{grid.size[1]}x{grid.size[2]} voxels at spacing "
                          f"{spacing.round(3).tolist()} mm exceeds max_voxels={max_voxels} "
                          f"(stacks span {np.round(hi - lo, 1).tolist()} mm)")
    return grid


def native_spacing(stacks: list[DicomStack]) -> np.ndarray:
    """(3,) finest acquired sampling, mm, along world x, y, z: for each axis, the spacing of the stack axis
    most aligned with it, minimum over stacks. A volume is never resampled finer than this (upsampling adds
    voxels, not information: a 160-px series on a 300 mm field cached at 0.8 mm would be 5x larger)."""
    per_stack = []
    for stack in stacks:
        nearest = np.abs(np.asarray(stack.direction_lps)).argmax(axis=1)  # stack axis closest to x, y, z
        per_stack.append(np.asarray(stack.spacing, dtype=np.float64)[nearest])
    return np.round(np.min(per_stack, axis=0), 4)  # 0.1 um: tidy numbers in series.csv


def _slice_corners(stack: DicomStack, margin: float = 0.0) -> np.ndarray:
    """World LPS (4 * n_slices, 3) of the corner voxel centres of every slice (margin: in voxels)."""
    nk, nj, ni = stack.shape
    i = np.array([-margin, ni - 1 + margin])
    j = np.array([-margin, nj - 1 + margin])
    k = np.arange(nk, dtype=np.float64)
    if margin:
        k = np.concatenate([[-margin], k, [nk - 1 + margin]])
    ijk = np.stack(np.meshgrid(i, j, k, indexing="ij"), axis=-1).reshape(-1, 3)
    return stack.index_to_world(ijk)


# ------------------------------------------------------------------------------------ series types


def spacing_key(description: str | None) -> str:
    """Config key of a series description: ``'Sagittal T2/STIR'`` -> ``'sagittal_t2_stir'`` (also for its
    variants, ``' sagittal t2 '``: `spine.constants.series_type`)."""
    key = re.sub(r"[^a-z0-9]+", "_", series_type(description).lower()).strip("_")
    return key if key in DEFAULT_SPACING_MM and key != "other" else "other"


def spacing_for(description: str | None, table: dict | None = None) -> tuple[float, float, float]:
    """Grid spacing (x, y, z) mm for a series description, from ``table`` (default `DEFAULT_SPACING_MM`)."""
    table = DEFAULT_SPACING_MM if table is None else table
    values = table.get(spacing_key(description), table.get("other", DEFAULT_SPACING_MM["other"]))
    return tuple(float(v) for v in values)  # type: ignore[return-value]


# --------------------------------------------------------------------------------- building volumes


@dataclass
class SeriesVolume:
    """A series resampled into a patient volume, in memory.

    Attributes:
        image: float32 SimpleITK image, LPS geometry, identity direction.
        mask: uint8 image on the same grid: 1 where a stack covers the voxel.
        grid: the geometry of both.
        stacks: the stacks that went into the volume.
        notes: what was left out or treated specially (empty for a plain single regular stack).
    """

    image: sitk.Image
    mask: sitk.Image
    grid: Grid
    stacks: list[DicomStack]
    notes: list[str] = field(default_factory=list)
    instances: dict[int, InstanceGeometry] = field(default_factory=dict)

    def world_to_voxel(self, points_lps) -> np.ndarray:
        """LPS mm (N, 3) -> continuous voxel index (N, 3) of this volume."""
        return self.grid.world_to_voxel(points_lps)

    def voxel_to_world(self, ijk) -> np.ndarray:
        return self.grid.voxel_to_world(ijk)

    def pixel_to_world(self, instance_number: int, x, y) -> np.ndarray:
        """LPS mm of DICOM pixel (x = column, y = row) of one instance of the series."""
        return self.instances[int(instance_number)].pixel_to_world(x, y)


def select_stacks(series: DicomSeries, min_slices: int = DEFAULT_MIN_SLICES,
                  description: str | None = None) -> tuple[list[DicomStack], list[str]]:
    """The stacks that make the volume, and notes on the ones left out or resampled specially.

    ``description`` (default: the series' own SeriesDescription) names the series' orientation: stacks of
    another orientation are left out (`own_orientation`), and a same-orientation stack that overlaps a larger one
    is merged into it where it adds depths (`merge_overlapping`).

    Raises:
        VolumeError: no stack of at least ``min_slices`` slices.
    """
    notes: list[str] = []
    stacks = [s for s in series.stacks if s.volume_index == 0]
    if len(stacks) < len(series.stacks):
        notes.append(f"{max(s.n_volumes for s in series.stacks)} frames per position (echoes or time "
                     f"points): used the first volume only")
    usable = [s for s in stacks if s.n_slices >= max(min_slices, 1)]
    if not usable:
        sizes = ", ".join(str(s.n_slices) for s in stacks)
        raise VolumeError(f"no stack of at least {min_slices} slices (stack sizes: {sizes}): "
                          f"{'a single slice is' if sizes == '1' else 'these are'} not a volume")
    if len(usable) < len(stacks):
        notes.append(f"left out {len(stacks) - len(usable)} stack(s) of fewer than {min_slices} slices")
    # Slices at the same depth but shifted in-plane (side-by-side fields of view) give no map from depth to
    # slice: such a stack cannot be resampled along its normal.
    flat = [s for s in usable if s.n_slices > 1 and float(np.diff(s.slice_positions).min()) <= _MIN_STEP_MM]
    if flat:
        usable = [s for s in usable if not any(s is f for f in flat)]
        reason = (f"{len(flat)} stack(s) with several slices at the same depth along the normal but shifted "
                  f"in-plane (up to {max(f.shear_mm for f in flat):.1f} mm)")
        if not usable:
            raise VolumeError(f"{reason}: not a volume")
        notes.append(f"left out {reason}")
    usable, note = own_orientation(usable, series.series_description if description is None else description)
    notes += [note] if note else []
    usable, note = merge_overlapping(usable)
    notes += [note] if note else []
    for s in usable:
        if s.is_regular:
            continue
        what = []
        if not s.uniform:
            steps = np.diff(s.slice_positions)
            what.append(f"uneven steps {steps.min():.2f}..{steps.max():.2f} mm")
        if s.sheared:
            what.append(f"sheared {s.shear_mm:.2f} mm (gantry tilt)")
        notes.append(f"stack of {s.n_slices} slices with {' and '.join(what)}: resampled from the true "
                     f"slice positions")
    return usable, notes


def stack_orientation(stack: DicomStack) -> str:
    """``sagittal``, ``coronal`` or ``axial``: the world axis (LPS x, y, z) closest to the stack's slice normal."""
    return ORIENTATIONS[int(np.argmax(np.abs(stack.direction_lps[:, 2])))]


def named_orientation(description: str | None) -> str | None:
    """The orientation a series description names (``'Sagittal T2/STIR'`` -> ``'sagittal'``); None if none or
    several."""
    words = re.findall(r"[a-z]+", str(description or "").lower())
    named = {_ORIENTATION_WORDS[w] for w in words if w in _ORIENTATION_WORDS}
    return named.pop() if len(named) == 1 else None


def own_orientation(stacks: list[DicomStack], description: str | None) -> tuple[list[DicomStack], str]:
    """The stacks of the series' own orientation and a note on the others (empty when none is left out).

    The own orientation is the one the description names if a stack has it, else the one with the most slices
    (ties: the orientation of the largest stack). Axial slices merged into a sagittal volume would stretch its
    grid over both fields of view and mix two resolutions.
    """
    orientations = [stack_orientation(s) for s in stacks]
    if len(set(orientations)) <= 1:
        return stacks, ""
    slices: Counter = Counter()
    for stack, orientation in zip(stacks, orientations):
        slices[orientation] += stack.n_slices
    named = named_orientation(description)
    if named in slices:
        own, why = named, f"named by the description {description!r}"
    else:
        own = max(slices, key=lambda o: (slices[o], -orientations.index(o)))
        why = "the orientation of most slices" + (f"; the description {description!r} names {named}, which no "
                                                  f"stack has" if named else "")
    kept = [s for s, o in zip(stacks, orientations) if o == own]
    left = [f"{o} {s.n_slices} slices" for s, o in zip(stacks, orientations) if o != own]
    return kept, (f"left out {len(left)} stack(s) of another orientation ({', '.join(left)}): the series is "
                  f"{own} ({why})")


def merge_overlapping(stacks: list[DicomStack]) -> tuple[list[DicomStack], str]:
    """Merge each stack that overlaps a larger stack of the same orientation into it; with a note (empty if none).

    Same orientation: slice normals within 1 degree. Overlap: their slabs share depth along the normal and their
    fields of view share at least half of the smaller one. Larger: more slices, then more pixels per slice. Such
    stacks come from slices of another matrix size (or pixel spacing) inside one series, often interleaved with
    the larger stack's slices (big ones at 0, 6, 12 mm, small ones at 3, 9 mm): averaged with the larger stack
    they would blur it, and on their own they would halve the depth sampling. So the smaller stack's slices that
    add depths the larger one lacks become slices of the larger stack (`_merge_slices`), which then samples depth
    at the finer step; its slices at depths the larger stack already has, or beyond its slab, are left out. Stacks
    at other angles (axial blocks per disc) or beside each other are all kept as they are.
    """
    order = sorted(range(len(stacks)), key=lambda i: (-stacks[i].n_slices, -stacks[i].shape[1] * stacks[i].shape[2], i))
    kept: dict[int, DicomStack] = {}
    what: list[str] = []
    for i in order:
        bigger = next((k for k in kept if _overlap(kept[k], stacks[i])), None)
        if bigger is None:
            kept[i] = stacks[i]
            continue
        merged, used = _merge_slices(kept[bigger], stacks[i])
        what.append(_merge_note(stacks[i], stacks[bigger], used))
        kept[bigger] = merged
    if not what:
        return stacks, ""
    return [kept[i] for i in sorted(kept)], (f"{len(what)} smaller stack(s) overlapping a larger one of the same "
                                             f"orientation: {'; '.join(what)}")


def _merge_note(small: DicomStack, big: DicomStack, used: int) -> str:
    if not used:
        return f"left out {_describe(small)} overlapping {_describe(big)} (no depth it lacks)"
    left = small.n_slices - used
    return (f"merged {used} of {_describe(small)} between the slices of {_describe(big)}, resampled in-plane onto "
            f"its pixel grid" + (f" ({left} at depths it has or beyond its slab left out)" if left else ""))


def _merge_slices(big: DicomStack, small: DicomStack) -> tuple[DicomStack, int]:
    """``big`` with the slices of ``small`` at depths (along big's normal) inside big's slab and at least a
    quarter of big's step from each of its slices, resampled in-plane onto big's pixel grid; and their count.

    Each merged slice lies in big's slice geometry at the small slice's depth (its IPP on big's true IPPs, so
    world positions stay exact; the small slice is projected along the normal, exact for stacks of one
    orientation as in one series). Its pixels are the small slice's, interpolated linearly in-plane between
    its pixel centres, else big's, interpolated linearly between its two neighbouring slices: beside the
    smaller field of view the larger stack is unchanged (real data there rather than held edge values).
    """
    depth = big.world_to_index(small.image_positions_lps)[:, 2]  # continuous slice index of big
    nearest = np.abs(depth - np.round(depth))
    chosen = np.flatnonzero((depth > 0) & (depth < big.n_slices - 1) & (nearest >= 0.25))
    if not len(chosen):
        return big, 0
    _, rows, cols = big.shape
    jj, ii = np.mgrid[0:rows, 0:cols].astype(np.float64)
    pixels, ipps = [], []
    for m in chosen:
        k = depth[m]
        ijk = np.stack([ii, jj, np.full_like(ii, k)], axis=-1)
        si, sj, _ = np.moveaxis(small.world_to_index(big.index_to_world(ijk)), -1, 0)
        covered = ((si >= -_EDGE) & (si <= small.shape[2] - 1 + _EDGE)
                   & (sj >= -_EDGE) & (sj <= small.shape[1] - 1 + _EDGE))
        values = ndimage.map_coordinates(small.pixels[m], [sj, si], order=1, mode="nearest", output=np.float32)
        k0, t = int(np.floor(k)), float(k - np.floor(k))
        beside = (1.0 - t) * big.pixels[k0] + t * big.pixels[k0 + 1]
        pixels.append(np.where(covered, values, beside).astype(np.float32))
        ipps.append(big.index_to_world(np.array([0.0, 0.0, k])))
    merged = big.with_slices(np.stack(pixels), np.stack(ipps), [small.instance_numbers[m] for m in chosen],
                             [small.source_files[m] for m in chosen], [small.source_frames[m] for m in chosen])
    return merged, len(chosen)


def _describe(stack: DicomStack) -> str:
    """``'12 slices of 64x48 px'`` (columns x rows)."""
    return f"{stack.n_slices} slices of {stack.shape[2]}x{stack.shape[1]} px"


def _overlap(big: DicomStack, small: DicomStack) -> bool:
    """Same orientation (normals within 1 degree), shared depth and a shared field of view (world LPS, mm)."""
    r, c, n = big.direction_lps.T
    if abs(float(n @ small.direction_lps[:, 2])) < _SAME_NORMAL_COS:
        return False
    extents = []
    for stack in (big, small):
        corners = _slice_corners(stack, margin=0.5)  # the edges of the slices, not only the voxel centres
        extents.append(np.stack([(corners @ axis) for axis in (r, c, n)], axis=-1))
    lo = np.maximum(extents[0].min(axis=0), extents[1].min(axis=0))
    hi = np.minimum(extents[0].max(axis=0), extents[1].max(axis=0))
    if hi[2] - lo[2] <= _MIN_STEP_MM:  # slabs one after the other along the normal
        return False
    shared = np.prod(np.clip(hi[:2] - lo[:2], 0.0, None))
    areas = [np.prod(np.ptp(e[:, :2], axis=0)) for e in extents]
    return bool(shared >= _OVERLAP_FRACTION * min(areas))


def make_volume(series: DicomSeries, spacing_mm, *, min_slices: int = DEFAULT_MIN_SLICES,
                max_gap_factor: float = DEFAULT_MAX_GAP_FACTOR, max_voxels: int = DEFAULT_MAX_VOXELS,
                description: str | None = None) -> SeriesVolume:
    """Resample every usable stack of ``series`` into one LPS-aligned volume (see the module docstring).

    ``description``: the series type as listed (e.g. ``'Sagittal T1'``), which names the orientation to keep
    (`select_stacks`); default the series' own SeriesDescription.

    Raises:
        VolumeError: nothing to build a volume from, or a grid larger than ``max_voxels``.
    """
    stacks, notes = select_stacks(series, min_slices, description)
    grid = grid_for(stacks, np.maximum(np.asarray(spacing_mm, dtype=np.float64), native_spacing(stacks)), max_voxels)
    image, mask = _resample_all(stacks, grid, max_gap_factor)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise VolumeError("no grid voxel is covered by a stack")
    return SeriesVolume(image, mask, grid, stacks, notes, instance_geometry(series))


def volume_from_dicom(series_dir, description: str | None = None, *, spacing_mm=None,
                      spacing_table: dict | None = None, **options) -> SeriesVolume:
    """Read one series folder and build its volume in memory: the inference path, same code as the cache.

    The spacing is ``spacing_mm`` if given, else the one of ``description`` in ``spacing_table`` (a cache's
    ``cache.json`` params ``spacing_mm``, so that inference matches the cache a model was trained on), else
    in `DEFAULT_SPACING_MM`. ``options``: ``min_slices``, ``max_gap_factor``, ``max_voxels``.

    Raises:
        SeriesReadError: nothing readable in the folder. VolumeError: no volume can be built.
    """
    from spine.io.dicom import read_series

    series = read_series(series_dir)
    if description is None:
        description = series.series_description
    spacing = spacing_mm if spacing_mm is not None else spacing_for(description, spacing_table)
    return make_volume(series, spacing, description=description, **options)


def build_volume(series: DicomSeries, spacing_mm, **options) -> tuple[sitk.Image, sitk.Image]:
    """``(image, mask)`` of `make_volume`: float32 volume (`FILL_VALUE` where uncovered), uint8 coverage mask."""
    volume = make_volume(series, spacing_mm, **options)
    return volume.image, volume.mask


def _resample_all(stacks: list[DicomStack], grid: Grid, max_gap_factor: float) -> tuple[sitk.Image, sitk.Image]:
    """Volume (float32, FILL_VALUE outside) and coverage mask (uint8) on ``grid``."""
    if len(stacks) == 1 and stacks[0].is_regular:  # the common case, all in SimpleITK: no copies
        resampled = _resample_regular(stacks[0], grid)  # NaN where the stack does not reach
        mask = sitk.Equal(resampled, resampled)  # 0 where NaN
        return sitk.Mask(resampled, mask, FILL_VALUE), mask
    total = np.zeros(grid.shape_kji, np.float32)
    count = np.zeros(grid.shape_kji, np.uint8)
    for stack in stacks:
        lo, hi = _reach(stack, grid)
        if np.any(hi <= lo):
            continue
        sub = grid.sub(lo, hi)
        if stack.is_regular:
            resampled = _resample_regular(stack, sub)  # keep the image alive while its view is used
            values = sitk.GetArrayViewFromImage(resampled)
        else:
            values = _resample_irregular(stack, sub, max_gap_factor)
        covered = ~np.isnan(values)
        box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        np.add(total[box], values, out=total[box], where=covered)
        count[box] += covered
    covered = count > 0
    np.divide(total, count, out=total, where=covered)
    total[~covered] = FILL_VALUE
    return grid.apply_to(sitk.GetImageFromArray(total)), grid.apply_to(sitk.GetImageFromArray(covered.view(np.uint8)))


def _resample_regular(stack: DicomStack, grid: Grid) -> sitk.Image:
    """SimpleITK trilinear resample of a regular stack onto ``grid``; NaN where it does not reach."""
    resample = sitk.ResampleImageFilter()
    resample.SetSize([int(v) for v in grid.size])
    resample.SetOutputOrigin(grid.origin.tolist())
    resample.SetOutputSpacing(grid.spacing.tolist())
    resample.SetOutputDirection(np.eye(3).flatten().tolist())
    resample.SetInterpolator(sitk.sitkLinear)
    resample.SetDefaultPixelValue(float("nan"))
    resample.SetOutputPixelType(sitk.sitkFloat32)
    return resample.Execute(stack.to_sitk())


def _reach(stack: DicomStack, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Index box [lo, hi) of the grid voxels the stack can cover (its voxels plus half a voxel)."""
    corners = grid.world_to_voxel(_slice_corners(stack, margin=0.5))
    lo = np.clip(np.floor(corners.min(axis=0) - 1e-6), 0, np.array(grid.size)).astype(int)
    hi = np.clip(np.ceil(corners.max(axis=0) + 1e-6) + 1, 0, np.array(grid.size)).astype(int)
    return lo, hi


def _resample_irregular(stack: DicomStack, grid: Grid, max_gap_factor: float) -> np.ndarray:
    """Trilinear resample from the true slice positions (uneven or sheared stack); NaN where uncovered."""
    nk, nj, ni = stack.shape
    out = np.empty(grid.shape_kji, np.float32)
    steps = np.diff(stack.slice_positions)
    median = float(np.median(steps))
    wide = steps > max_gap_factor * median  # gaps not bridged by interpolation
    plane = grid.size[0] * grid.size[1]
    ii, jj = np.meshgrid(np.arange(grid.size[0]), np.arange(grid.size[1]), indexing="xy")  # [j, i]
    per_chunk = max(1, _CHUNK_VOXELS // plane)
    for k0 in range(0, grid.size[2], per_chunk):
        ks = np.arange(k0, min(k0 + per_chunk, grid.size[2]))
        ijk = np.stack(np.broadcast_arrays(ii[None], jj[None], ks[:, None, None]), axis=-1).astype(np.float64)
        idx = stack.world_to_index(grid.voxel_to_world(ijk))  # [k, j, i, (i, j, k) of the stack]
        si, sj, sk = idx[..., 0], idx[..., 1], idx[..., 2]
        covered = ((si >= -0.5) & (si <= ni - 0.5) & (sj >= -0.5) & (sj <= nj - 0.5)
                   & (sk >= -0.5) & (sk <= nk - 0.5))
        if wide.any():  # inside a wide gap: nearest slice within half a median step, else uncovered
            seg = np.clip(np.floor(sk), 0, nk - 2).astype(int)
            inside = (sk > seg) & (sk < seg + 1) & wide[seg]
            gap = steps[seg]
            near_lo = (sk - seg) * gap <= median / 2
            near_hi = (seg + 1 - sk) * gap <= median / 2
            sk = np.where(inside & near_lo, seg, np.where(inside & near_hi, seg + 1, sk))
            covered &= ~(inside & ~near_lo & ~near_hi)
        values = ndimage.map_coordinates(stack.pixels, [sk.ravel(), sj.ravel(), si.ravel()], order=1,
                                         mode="nearest", output=np.float32).reshape(sk.shape)
        values[~covered] = np.nan
        out[ks[0]:ks[-1] + 1] = values
    return out


# ------------------------------------------------------------------------------------- coordinates


def world_to_voxel(image: sitk.Image | Grid | SeriesVolume, points_lps) -> np.ndarray:
    """LPS mm (N, 3) -> continuous voxel index (N, 3) as (i, j, k) of an image (any direction) or grid."""
    if isinstance(image, SeriesVolume):
        image = image.grid
    if isinstance(image, Grid):
        return image.world_to_voxel(points_lps)
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return ((np.asarray(points_lps, dtype=np.float64) - origin) @ direction) / spacing


def voxel_to_world(image: sitk.Image | Grid | SeriesVolume, ijk) -> np.ndarray:
    """Continuous voxel index (N, 3) as (i, j, k) -> LPS mm (N, 3); inverse of `world_to_voxel`."""
    if isinstance(image, SeriesVolume):
        image = image.grid
    if isinstance(image, Grid):
        return image.voxel_to_world(ijk)
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return (np.asarray(ijk, dtype=np.float64) * spacing) @ direction.T + origin


@dataclass(frozen=True)
class InstanceGeometry:
    """Where the pixels of one DICOM instance are: ``world = ipp + x * col_spacing * r + y * row_spacing * c``.

    x is the column, y the row (DICOM pixel frame, as in train_label_coordinates.csv).
    """

    ipp: tuple[float, float, float]
    r: tuple[float, float, float]  # direction of increasing column (IOP[:3])
    c: tuple[float, float, float]  # direction of increasing row (IOP[3:])
    row_spacing: float  # PixelSpacing[0]
    col_spacing: float  # PixelSpacing[1]

    def pixel_to_world(self, x, y) -> np.ndarray:
        """DICOM pixel (x = column, y = row), scalars or arrays -> LPS mm (..., 3)."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (np.array(self.ipp) + x * self.col_spacing * np.array(self.r)
                + y * self.row_spacing * np.array(self.c))

    def to_list(self) -> list[float]:
        return [*self.ipp, *self.r, *self.c, self.row_spacing, self.col_spacing]

    @classmethod
    def from_list(cls, values) -> InstanceGeometry:
        v = [float(x) for x in values]
        return cls(tuple(v[0:3]), tuple(v[3:6]), tuple(v[6:9]), v[9], v[10])  # type: ignore[arg-type]


def instance_geometry(series: DicomSeries) -> dict[int, InstanceGeometry]:
    """InstanceNumber -> geometry of that instance, for every slice of every stack (first one wins)."""
    table: dict[int, InstanceGeometry] = {}
    for stack in sorted(series.stacks, key=lambda s: s.volume_index):
        r, c = stack.direction_lps[:, 0], stack.direction_lps[:, 1]
        for number, ipp in zip(stack.instance_numbers, stack.image_positions_lps):
            if number is not None and int(number) not in table:
                table[int(number)] = InstanceGeometry(tuple(map(float, ipp)), tuple(map(float, r)),
                                                      tuple(map(float, c)), float(stack.spacing[1]),
                                                      float(stack.spacing[0]))
    return table


def pixel_to_world(series: DicomSeries | dict[int, InstanceGeometry], instance_number: int, x, y) -> np.ndarray:
    """World LPS mm of DICOM pixel (x = column, y = row) of one instance of a series.

    Raises:
        KeyError: no usable slice with that InstanceNumber.
    """
    table = instance_geometry(series) if isinstance(series, DicomSeries) else series
    return table[int(instance_number)].pixel_to_world(x, y)
