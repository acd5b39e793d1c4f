"""Per-condition views: small stacks of slices sampled in world space around a disc level, in the plane a
radiologist reads each condition in.

A view (:class:`ViewSpec`) says which series it reads, its plane (``sagittal`` or ``axial``, both in the
level's own frame from :func:`spine.data.crops.level_axes`, so an axial view lies in the disc plane and a
sagittal one is upright along the local spine axis), its centre rule (the label/predicted point of its
condition), its in-plane extent (mm) and size (px), and its number of slices and their spacing (mm).
Each condition group (spinal, foraminal, subarticular) reads its own list of views; every view of a
study has the same ``(slices, H, W)`` so that they stack into one tensor.

Frames. The level frame has columns i (patient left), j (posterior), k (towards the head, along the spine).
A view array is ``(S, H, W)``: S slices along its normal, H rows, W columns (all in mm steps of the view):

- sagittal: normal +i (slices from the patient's right to left), rows -k (head at the top), columns +j
  (anterior on the left of the image);
- axial: normal +k (slices from the feet to the head), rows +j (anterior at the top), columns +i (the
  patient's right on the image's left: the radiological convention).

Left/right share one head: a view of a patient-right condition is **mirrored** onto the left by negating the
level frame's i axis (the grid is then left-handed; sampling does not care). So the mirrored view of a
right condition equals the left view of the mirrored study (tested), and on every sided view, image
columns (axial) or slice index (sagittal) increase *away from the midline* on both sides.

Centre rules: ``spinal`` the spinal canal point of the level; ``foraminal`` / ``subarticular`` that side's
point of the condition; missing points fall back to the level centre plus a typical offset in the level
frame (:data:`FALLBACK_OFFSETS_MM`). ``shift_mm`` (rows, columns) moves the view in its own plane after the
centre rule (columns: + is lateral on a sided view).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spine.constants import CONDITION_GROUP, CONDITIONS, GROUPS, condition_side
from spine.data.crops import fill_centres, level_axes, level_centres
from spine.data.grid import SamplingGrid
from spine.data.transforms import GridAffine
from spine.data.volume import SeriesVolume

PLANES: tuple[str, ...] = ("sagittal", "axial")
CENTRES: tuple[str, ...] = ("spinal", "foraminal", "subarticular", "level")
_INDEX = {c: k for k, c in enumerate(CONDITIONS)}
# Offsets (i = lateral on the condition's side, j = posterior, k = head) mm from the level centre (the
# canal point) used where a condition's own point is missing: typical adult lumbar anatomy.
FALLBACK_OFFSETS_MM: dict[str, tuple[float, float, float]] = {
    "spinal": (0.0, 0.0, 0.0), "level": (0.0, 0.0, 0.0),
    "foraminal": (24.0, -3.0, 4.0), "subarticular": (10.5, -3.0, 0.0),
}


@dataclass(frozen=True)
class ViewSpec:
    """One view of a condition group; see the module docstring for the frames."""

    series: str  # series description, e.g. "Sagittal T2/STIR"
    plane: str = "sagittal"  # sagittal | axial
    centre: str = "spinal"  # spinal | foraminal | subarticular | level
    size: tuple[int, int] = (32, 32)  # rows, columns (px)
    mm: tuple[float, float] = (40.0, 40.0)  # rows, columns extent (mm)
    slices: int = 3
    slice_mm: float = 3.0  # distance between neighbouring slices
    shift_mm: tuple[float, float] = (0.0, 0.0)  # rows, columns (columns: + lateral on a sided view)

    def __post_init__(self) -> None:
        if self.plane not in PLANES:
            raise ValueError(f"view plane must be one of {PLANES}, got {self.plane!r}")
        if self.centre not in CENTRES:
            raise ValueError(f"view centre must be one of {CENTRES}, got {self.centre!r}")
        if self.slices < 1 or min(self.size) < 1 or min(self.mm) <= 0 or self.slice_mm <= 0:
            raise ValueError(f"view needs positive size, extent, slices and spacing: {self}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, H, W) of the view array."""
        return (int(self.slices), int(self.size[0]), int(self.size[1]))


@dataclass(frozen=True)
class ViewSet:
    """The views each condition group reads: ``groups[g]`` is the list of views of group g (``GROUPS``).

    Every group has the same number of views and every view the same ``(slices, H, W)``.
    """

    groups: dict[str, tuple[ViewSpec, ...]]

    def __post_init__(self) -> None:
        if set(self.groups) != set(GROUPS):
            raise ValueError(f"views needed for exactly the groups {GROUPS}, got {sorted(self.groups)}")
        counts = {len(v) for v in self.groups.values()}
        shapes = {v.shape for views in self.groups.values() for v in views}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every group needs the same (non-zero) number of views, got {self.counts()}")
        if len(shapes) != 1:
            raise ValueError(f"every view needs the same slices and size (S, H, W), got {sorted(shapes)}")

    def counts(self) -> dict[str, int]:
        return {g: len(v) for g, v in self.groups.items()}

    @property
    def num_views(self) -> int:
        return len(next(iter(self.groups.values())))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(S, H, W) of every view."""
        return next(iter(self.groups.values()))[0].shape

    @property
    def series(self) -> list[str]:
        """The series the views read, in first-use order (the ``present`` flags' order)."""
        out: list[str] = []
        for views in self.groups.values():
            out += [v.series for v in views if v.series not in out]
        return out

    @classmethod
    def from_config(cls, groups: dict) -> ViewSet:
        """From ``{group: [{series: ..., plane: ..., ...}, ...]}`` (the stage config's ``views``)."""
        def spec(d) -> ViewSpec:
            d = dict(d)
            for key in ("size", "mm", "shift_mm"):
                if key in d:
                    d[key] = tuple(d[key])
            return ViewSpec(**d)
        return cls({g: tuple(spec(d) for d in views) for g, views in groups.items()})


# --------------------------------------------------------------------------------------------- geometry
def view_grid(centre, axes: np.ndarray, spec: ViewSpec, mirror: bool = False) -> SamplingGrid:
    """The sampling grid of one view: array ``(S, H, W)`` around ``centre`` (LPS mm).

    ``axes``: ``(3, 3)`` level frame, columns i (left), j (posterior), k (head) as world unit vectors;
    ``mirror`` negates i (a right-side view mirrored onto the left).
    """
    i, j, k = (np.asarray(axes, dtype=np.float64)[:, a] for a in range(3))
    if mirror:
        i = -i
    normal, rows, cols = (i, -k, j) if spec.plane == "sagittal" else (k, j, i)
    direction = np.stack([normal, rows, cols], axis=1)
    spacing = np.array([spec.slice_mm, spec.mm[0] / spec.size[0], spec.mm[1] / spec.size[1]])
    shifted = np.asarray(centre, dtype=np.float64) + spec.shift_mm[0] * rows + spec.shift_mm[1] * cols
    return SamplingGrid.centred(shifted, (spec.slices, *spec.size), spacing, direction)


def condition_points(points: np.ndarray, centres: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """``(K, L, 3)`` the centre of each condition's views at each level, LPS mm, no NaN.

    ``points`` ``(K, L, 3)`` label or predicted points (NaN where missing); ``centres`` ``(L, 3)`` filled
    level centres; ``axes`` ``(L, 3, 3)`` level frames. A missing point is the level centre plus the
    condition's typical offset (:data:`FALLBACK_OFFSETS_MM`, mirrored for the right side).
    """
    out = np.array(points, dtype=np.float64, copy=True)
    for k, condition in enumerate(CONDITIONS):
        group = CONDITION_GROUP[condition]
        offset = np.array(FALLBACK_OFFSETS_MM[group]) * np.array([condition_side(condition) or 1.0, 1.0, 1.0])
        for lv in range(out.shape[1]):
            if not np.isfinite(out[k, lv]).all():
                out[k, lv] = centres[lv] + axes[lv] @ offset
    return out


def view_centre(spec: ViewSpec, condition: str, level: int, points: np.ndarray) -> np.ndarray:
    """World centre of ``spec`` for ``condition`` at ``level`` from filled points ``(K, L, 3)``."""
    if spec.centre in ("spinal", "level"):
        return points[_INDEX["spinal_canal_stenosis"], level]
    side = "left" if condition_side(condition) >= 0 else "right"
    name = {"foraminal": "neural_foraminal_narrowing", "subarticular": "subarticular_stenosis"}[spec.centre]
    return points[_INDEX[f"{side}_{name}"], level]


def study_view_grids(points: np.ndarray, views: ViewSet, align: bool = True,
                     affine: GridAffine | None = None) -> list[list[list[SamplingGrid]]]:
    """``grids[level][condition][view]`` for one study from its ``(K, L, 3)`` points (NaN allowed).

    Raises ValueError when no point at all is known. ``affine`` (rotation and zoom; its mirror and
    translation are ignored) moves every view about its own centre: training augmentation.
    """
    centres = fill_centres(level_centres(points))
    axes = level_axes(centres, align)
    filled = condition_points(points, centres, axes)
    out = []
    for lv in range(len(centres)):
        per_condition = []
        for condition in CONDITIONS:
            mirror = condition_side(condition) < 0
            grids = []
            for spec in views.groups[CONDITION_GROUP[condition]]:
                grid = view_grid(view_centre(spec, condition, lv, filled), axes[lv], spec, mirror)
                if affine is not None:
                    grid = GridAffine(affine.rotation_deg, affine.zoom)(grid)
                grids.append(grid)
            per_condition.append(grids)
        out.append(per_condition)
    return out


def sample_views(volumes: dict[str, SeriesVolume | None], grids: list[list[list[SamplingGrid]]],
                 views: ViewSet) -> tuple[np.ndarray, np.ndarray]:
    """``(L, K, V, S, H, W)`` float32 views (zeros where a series is missing) and ``present`` ``(P,)`` bool
    in ``views.series`` order. ``volumes`` maps a series description to its volume (or None)."""
    shape = views.shape
    out = np.zeros((len(grids), len(CONDITIONS), views.num_views, *shape), np.float32)
    for lv, per_condition in enumerate(grids):
        for k, condition in enumerate(CONDITIONS):
            for v, (spec, grid) in enumerate(zip(views.groups[CONDITION_GROUP[condition]], per_condition[k])):
                volume = volumes.get(spec.series)
                if volume is not None:
                    out[lv, k, v] = volume.sample(grid)[0]
    present = np.array([volumes.get(s) is not None for s in views.series], dtype=bool)
    return out, present


def view_groups() -> list[int]:
    """Group index (into ``GROUPS``) of each condition, in ``CONDITIONS`` order."""
    return [GROUPS.index(CONDITION_GROUP[c]) for c in CONDITIONS]


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[0] != len(CONDITIONS) or points.shape[2] != 3:
        raise ValueError(f"points must be (K={len(CONDITIONS)}, L, 3), got {points.shape}")
    return points


def build_views(volumes: dict[str, SeriesVolume | None], points: np.ndarray, views: ViewSet, align: bool = True,
                affine: GridAffine | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One study's model input: ``(L, K, V, S, H, W)`` views and ``present`` ``(P,)``; the one builder used
    by the training dataset and by ``spine-predict``. ``points`` ``(K, L, 3)`` LPS mm, NaN where missing."""
    grids = study_view_grids(_check_points(points), views, align, affine)
    return sample_views(volumes, grids, views)


__all__: Sequence[str] = ["CENTRES", "FALLBACK_OFFSETS_MM", "PLANES", "ViewSet", "ViewSpec", "build_views",
                          "condition_points", "sample_views", "study_view_grids", "view_centre",
                          "view_grid", "view_groups"]
