"""A series' stacks: which stacks of a `DicomSeries` make its volume, with notes on the ones left out or merged.

This is the one code path from a `DicomSeries` to a `spine.data.volume.SeriesVolume` (the acquired stacks,
not resampled), used by the cache writer and, in memory, by inference. Frames (DESIGN.md section 3):

- **World**: DICOM patient coordinates, LPS mm (+x patient left, +y posterior, +z head).
- **Stack voxel**: continuous index (i, j, k) of one stack: i = DICOM column, j = row, k = slice sorted along
  the normal by ImagePositionPatient (`spine.io.dicom`). Integer indices are voxel centres.

Only the first of several volumes sharing the same positions (echoes, time points) is used. Stacks of fewer
than ``min_slices`` slices, and stacks with several slices at the same depth shifted in-plane (no map from
depth to slice), are left out with a note; a series with no stack left (e.g. a single slice) raises
`VolumeError`: a one-slice "volume" has no slice direction to sample along.

Irregular stacks (uneven steps, missing slices, gantry-tilt shear) are kept whole with their true slice
positions and a note; the sampler interpolates between the true IPPs and does not bridge a gap wider than
``max_gap_factor`` times the median step.

One orientation per series (`own_orientation`): stacks whose slice normal is closest to another world axis
than the series' own orientation (named by its description, else the one with most slices) are left out with a
note. A stack overlapping a larger one of the same orientation (slices of another matrix size or pixel spacing
in one series, e.g. interleaved with the larger stack's slices) is merged into it with a note
(`merge_overlapping`): its slices at depths the larger stack lacks are resampled in-plane onto the larger one's
pixel grid and sorted in among its slices, so depth is sampled at the finer step; its slices at depths the
larger stack already has are left out. Multi-stack axial series (blocks angled per disc) keep every stack.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spine.cache import irregular_reason
from spine.constants import series_type
from spine.data.defaults import DEFAULT_MAX_GAP_FACTOR, DEFAULT_MIN_SLICES
from spine.data.volume import SeriesVolume
from spine.io.dicom import DicomSeries, DicomStack, read_series
from spine.io.stack import POSITION_TOL_MM

__all__ = [
    "InstanceGeometry",
    "VolumeError",
    "ambiguous_instances",
    "instance_geometry",
    "make_volume",
    "merge_overlapping",
    "named_orientation",
    "own_orientation",
    "pixel_to_world",
    "select_stacks",
    "stack_orientation",
    "volume_from_dicom",
]

_MIN_STEP_MM = 0.01  # slices closer than this along the normal are at the same depth
ORIENTATIONS = ("sagittal", "coronal", "axial")  # named by the world axis x, y, z closest to the slice normal
_ORIENTATION_WORDS = {"sag": "sagittal", "sagittal": "sagittal", "cor": "coronal", "coronal": "coronal",
                      "ax": "axial", "axial": "axial", "tra": "axial", "transverse": "axial", "transversal": "axial"}
_SAME_NORMAL_COS = float(np.cos(np.radians(1.0)))  # stacks whose normals are within 1 degree: same orientation
_OVERLAP_FRACTION = 0.5  # same-orientation stacks sharing depth and this much of the smaller field of view overlap
_EDGE = 1e-6  # pixels: tolerance of "between the pixel centres" of a merged slice


class VolumeError(ValueError):
    """A series that cannot become a patient volume; the message says why."""


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


# --------------------------------------------------------------------------------- building volumes


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
        if not s.is_regular:
            notes.append(f"stack of {s.n_slices} slices with {irregular_reason(s)}: sampled from the true slice "
                         f"positions")
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


def make_volume(series: DicomSeries, description: str | None = None, *, min_slices: int = DEFAULT_MIN_SLICES,
                max_gap_factor: float = DEFAULT_MAX_GAP_FACTOR, series_id: int | None = None) -> SeriesVolume:
    """The series' usable stacks (`select_stacks`) as a `SeriesVolume`, in memory.

    ``description``: the series type as listed (e.g. ``'Sagittal T1'``), which names the orientation to keep;
    default the series' own SeriesDescription.

    Raises:
        VolumeError: no stack to make a volume from.
    """
    stacks, notes = select_stacks(series, min_slices, description)
    return SeriesVolume(stacks, series_id=series_id, description=series_type(description or series.series_description),
                        notes=notes, source="dicom", max_gap_factor=max_gap_factor)


def volume_from_dicom(series_dir, description: str | None = None, **options) -> SeriesVolume:
    """Read one series folder and select its stacks in memory: the inference path, same code as the cache.
    ``options``: ``min_slices``, ``max_gap_factor``, ``series_id``.

    Raises:
        SeriesReadError: nothing readable in the folder. VolumeError: no volume can be built.
    """
    return make_volume(read_series(series_dir), description, **options)


# ------------------------------------------------------------------------------------- coordinates


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
    columns: int = 0  # Columns: x runs over [-0.5, columns - 0.5) on the image (0: not recorded)
    rows: int = 0  # Rows: y runs over [-0.5, rows - 0.5)

    def contains(self, x: float, y: float) -> bool:
        """Whether DICOM pixel (x = column, y = row) lies on the image (pixel centres at integers; always True
        when the size was not recorded)."""
        if not (self.columns and self.rows):
            return True
        return -0.5 <= x <= self.columns - 0.5 and -0.5 <= y <= self.rows - 0.5

    def pixel_to_world(self, x, y) -> np.ndarray:
        """DICOM pixel (x = column, y = row), scalars or arrays -> LPS mm (..., 3)."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        return (np.array(self.ipp) + x * self.col_spacing * np.array(self.r)
                + y * self.row_spacing * np.array(self.c))

    def to_list(self) -> list[float]:
        return [*self.ipp, *self.r, *self.c, self.row_spacing, self.col_spacing, self.columns, self.rows]

    @classmethod
    def from_list(cls, values) -> InstanceGeometry:
        """Inverse of `to_list` (also the 11 numbers of a record written without the image size)."""
        v = [float(x) for x in values]
        size = (int(v[11]), int(v[12])) if len(v) >= 13 else (0, 0)
        return cls(tuple(v[0:3]), tuple(v[3:6]), tuple(v[6:9]), v[9], v[10], *size)  # type: ignore[arg-type]


def instance_geometry(series: DicomSeries, ambiguous: Collection[int] | None = None) -> dict[int, InstanceGeometry]:
    """InstanceNumber -> geometry of that instance, for every slice of every stack whose InstanceNumber is not
    ``ambiguous`` (default `ambiguous_instances`: a number carried by frames at different positions names no one
    slice; pass them when they are already known)."""
    ambiguous = ambiguous_instances(series) if ambiguous is None else ambiguous
    table: dict[int, InstanceGeometry] = {}
    for stack in sorted(series.stacks, key=lambda s: s.volume_index):
        r, c = stack.direction_lps[:, 0], stack.direction_lps[:, 1]
        rows, columns = stack.shape[1], stack.shape[2]
        for number, ipp in zip(stack.instance_numbers, stack.image_positions_lps):
            if number is not None and int(number) not in table and int(number) not in ambiguous:
                table[int(number)] = InstanceGeometry(tuple(map(float, ipp)), tuple(map(float, r)),
                                                      tuple(map(float, c)), float(stack.spacing[1]),
                                                      float(stack.spacing[0]), int(columns), int(rows))
    return table


def ambiguous_instances(series: DicomSeries) -> dict[int, int]:
    """InstanceNumber -> how many different positions carry it, for the numbers that name more than one place:
    two files (or frames) with one InstanceNumber at positions (IPP, LPS mm) more than `POSITION_TOL_MM` apart,
    kept or left out as duplicates. A label on such a number cannot be placed on a slice."""
    places: dict[int, list[np.ndarray]] = {}
    for stack in series.stacks:
        for number, ipp in zip(stack.instance_numbers, stack.image_positions_lps):
            if number is not None:
                places.setdefault(int(number), []).append(np.asarray(ipp, dtype=np.float64))
    for skipped in series.skipped:
        if skipped.instance_number is not None and skipped.ipp is not None:
            places.setdefault(int(skipped.instance_number), []).append(np.asarray(skipped.ipp, dtype=np.float64))
    counts = {}
    for number, positions in places.items():
        distinct: list[np.ndarray] = []
        for position in positions:
            if all(np.linalg.norm(position - d) > POSITION_TOL_MM for d in distinct):
                distinct.append(position)
        if len(distinct) > 1:
            counts[number] = len(distinct)
    return counts


def pixel_to_world(series: DicomSeries | dict[int, InstanceGeometry], instance_number: int, x, y) -> np.ndarray:
    """World LPS mm of DICOM pixel (x = column, y = row) of one instance of a series.

    Raises:
        KeyError: no usable slice with that InstanceNumber.
    """
    table = instance_geometry(series) if isinstance(series, DicomSeries) else series
    return table[int(instance_number)].pixel_to_world(x, y)
