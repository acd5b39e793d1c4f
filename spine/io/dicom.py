"""Read one DICOM series folder into geometrically exact stacks of slices.

This is the only DICOM reader of the project: preprocessing and inference both go through
`read_series`, so that training and the Kaggle notebook see the same voxels and the same geometry.

Frames (see DESIGN.md section 3):
- **World**: DICOM patient coordinates, LPS, millimetres.
- **DICOM pixel**: (x = column, y = row) in one slice; with IOP = (r, c) and PixelSpacing = (row spacing,
  column spacing): ``world = IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c``.
- **Voxel index** of a `DicomStack`: continuous (i, j, k) with i = column, j = row, k = slice after
  sorting by increasing ``IPP . n``, n = r x c. ``pixels[k, j, i]`` is that voxel; integer indices are
  voxel centres. So (i, j) of slice k is exactly the DICOM pixel (x, y) of the instance
  ``instance_numbers[k]``.

Decisions:
- Slices are grouped into stacks by SeriesInstanceUID, Rows/Columns, PixelSpacing (within
  `SPACING_TOL_MM`) and orientation (every IOP cosine within `IOP_TOL`).
- Slice order and slice step come only from ImagePositionPatient, never from InstanceNumber, file names,
  SliceLocation, SliceThickness or SpacingBetweenSlices.
- Frames at the same position (IPP within `POSITION_TOL_MM`) are time points or echoes: with m frames at
  every position the group gives m stacks (`volume_index` 0..m-1), the v-th stack taking the v-th frame
  of each position in InstanceNumber order (then file name, then frame number). InstanceNumber only
  breaks this tie; it never orders slices in space. If positions hold different numbers of frames, m is
  the smallest count and the extra frames are reported in `DicomSeries.skipped` as duplicates.
- A stack is *uniform* when every slice lies within `UNIFORM_RTOL` of a step from where a regular grid
  with the mean step puts it, and *sheared* when an IPP leaves the line through the first IPP along n by
  more than `SHEAR_TOL_PX` of a pixel (gantry tilt). Such stacks are kept whole, flagged, and carry
  their true slice positions: `index_to_world` / `world_to_index` then interpolate between the true
  IPPs, `to_sitk` refuses them, and `split_uniform_runs` cuts them where the step changes.
- A single-slice stack takes its k spacing from SliceThickness (1 mm if absent) and has
  `step_from_ipp = False`: the caller decides whether a 1-slice "volume" is usable.
- Unreadable, non-DICOM, pixel-less or geometry-less files are skipped and listed with a reason, and so
  are files (or frames) whose PixelSpacing, IPP, IOP, RescaleSlope or RescaleIntercept is NaN or infinite
  (or PixelSpacing not positive); a folder with nothing usable raises `SeriesReadError`.
- Slices of another matrix size (Rows/Columns) or pixel spacing are another stack, never resized: which stacks
  make a volume is the volume builder's decision (`spine.preprocess.volume.select_stacks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = [
    "DicomSeries",
    "DicomStack",
    "IrregularStackError",
    "SeriesReadError",
    "SkippedFile",
    "read_series",
]

IOP_TOL = 1e-3  # max |difference| of direction cosines within one stack (about 0.06 degree)
SPACING_TOL_MM = 1e-4  # PixelSpacing difference still counted as "same"
POSITION_TOL_MM = 1e-2  # two IPPs closer than this are the same position (time points, echoes, copies)
UNIFORM_RTOL = 1e-2  # slice off the regular grid by more than 1 % of the step -> not uniform
SHEAR_TOL_PX = 0.1  # IPP off the normal line by more than a tenth of a pixel -> sheared
DEFAULT_SINGLE_SLICE_STEP_MM = 1.0  # k spacing of a 1-slice stack without SliceThickness


class SeriesReadError(Exception):
    """Nothing usable in a series folder (missing, empty, or every file skipped); the message says why."""


class IrregularStackError(ValueError):
    """A stack that is not a regular grid (uneven step or sheared) was asked for a regular-grid image."""


@dataclass(frozen=True)
class SkippedFile:
    """A file (or one frame of a multi-frame file) that was left out, and why."""

    path: str
    reason: str
    frame: int | None = None  # 0-based frame number inside a multi-frame file, None for the whole file


@dataclass
class _Frame:
    """One 2-D image with its own geometry, before grouping (internal)."""

    path: str
    frame: int  # 0-based frame number within its file
    raw: np.ndarray  # (rows, cols) stored values, indexed [row, column]
    ipp: np.ndarray  # (3,) LPS mm, centre of pixel (row 0, column 0)
    iop: np.ndarray  # (6,) unit r (increasing column), unit c (increasing row)
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slope: float
    intercept: float
    instance_number: int | None
    slice_thickness: float | None
    series_uid: str
    multiframe: bool  # reported per frame when skipped


class _Skip(Exception):
    """Raised while reading a file or frame that must be skipped; the message is the reason."""


@dataclass
class DicomStack:
    """Slices of one orientation, sorted along the normal, with their exact geometry.

    Attributes:
        pixels: float32 (n_slices, rows, cols), indexed [k, j, i]; modality values (RescaleSlope and
            RescaleIntercept applied) unless read with ``rescale=False``.
        origin_lps: (3,) LPS mm, centre of voxel (i=0, j=0, k=0) = IPP of the first sorted slice.
        direction_lps: (3, 3); columns are the unit vectors of i (r), j (c) and k (n = r x c).
        spacing: (3,) mm: column spacing, row spacing, slice step (mean IPP step along n; the median
            step if not uniform, nominal only; SliceThickness or 1 mm for a single slice).
        slice_positions: (n_slices,) mm, ``IPP . n`` of each slice (increasing).
        image_positions_lps: (n_slices, 3) LPS mm, the IPP of each slice.
        instance_numbers: InstanceNumber of each slice (None where absent).
        source_files: file of each slice; source_frames: its 0-based frame number in that file.
        uniform: every slice within UNIFORM_RTOL * step of the regular grid (True for 1-2 slices).
        sheared: IPPs leave the normal line through the first IPP by more than SHEAR_TOL_PX pixel.
        shear_mm: the largest such offset, mm.
        step_from_ipp: False for a single slice (k spacing from SliceThickness or 1 mm).
        slice_thickness: SliceThickness of the first slice, mm (information only; None if absent).
        volume_index, n_volumes: which of the frames sharing each position (time point / echo).
    """

    pixels: np.ndarray
    origin_lps: np.ndarray
    direction_lps: np.ndarray
    spacing: np.ndarray
    slice_positions: np.ndarray
    image_positions_lps: np.ndarray
    instance_numbers: list[int | None]
    source_files: list[str]
    source_frames: list[int]
    uniform: bool
    sheared: bool
    shear_mm: float
    step_from_ipp: bool
    slice_thickness: float | None = None
    volume_index: int = 0
    n_volumes: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_slices, rows, cols), the shape of `pixels`."""
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def is_regular(self) -> bool:
        """True when the voxels lie on the grid origin + direction @ (ijk * spacing)."""
        return self.uniform and not self.sheared

    @property
    def affine_lps(self) -> np.ndarray:
        """(4, 4) voxel index (i, j, k, 1) -> LPS mm, valid for regular stacks."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_lps * self.spacing
        affine[:3, 3] = self.origin_lps
        return affine

    def to_sitk(self) -> sitk.Image:
        """The stack as a SimpleITK image (LPS, mm) with exactly this geometry.

        Raises:
            IrregularStackError: the stack is not uniform or is sheared; resample it from
                `image_positions_lps` or use `split_uniform_runs` first.
        """
        if not self.is_regular:
            raise IrregularStackError(
                f"stack is not a regular grid (uniform={self.uniform}, sheared={self.sheared}, "
                f"shear {self.shear_mm:.3f} mm, slice positions {np.round(self.slice_positions, 3).tolist()})"
            )
        image = sitk.GetImageFromArray(self.pixels)  # numpy [k, j, i] -> ITK index (i, j, k)
        image.SetOrigin(self.origin_lps.tolist())
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection(self.direction_lps.flatten().tolist())  # row-major, columns = axes
        return image

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel index (..., 3) as (i, j, k) -> LPS mm (..., 3).

        Regular stacks use the affine; others interpolate linearly between the true IPPs along k
        (extrapolating with the end steps), so the true slice positions are honoured.
        """
        ijk = np.asarray(ijk, dtype=np.float64)
        if self.is_regular:
            return ijk @ (self.direction_lps * self.spacing).T + self.origin_lps
        r, c = self.direction_lps[:, 0], self.direction_lps[:, 1]
        base = self._ipp_at(ijk[..., 2])
        return base + ijk[..., :1] * self.spacing[0] * r + ijk[..., 1:2] * self.spacing[1] * c

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """LPS mm (..., 3) -> continuous voxel index (..., 3) as (i, j, k); inverse of `index_to_world`."""
        xyz = np.asarray(xyz, dtype=np.float64)
        if self.is_regular:
            return (xyz - self.origin_lps) @ np.linalg.inv(self.direction_lps * self.spacing).T
        r, c, n = self.direction_lps.T
        k = self._k_at(xyz @ n)
        offset = xyz - self._ipp_at(k)
        return np.stack([offset @ r / self.spacing[0], offset @ c / self.spacing[1], k], axis=-1)

    def split_uniform_runs(self) -> list[DicomStack]:
        """Cut the stack where the step changes (missing slices, separate blocks); [self] if uniform.

        Greedy along k: a run keeps its first step; a step off it by more than UNIFORM_RTOL ends the run
        and the next slice starts a new one. Each run is a new stack (re-checked, so flags stay true).
        """
        if self.uniform:
            return [self]
        bounds, run_step = [0], None
        for k, step in enumerate(np.diff(self.slice_positions)):  # step from slice k to k + 1
            if run_step is None:
                run_step = step
            elif abs(step - run_step) > UNIFORM_RTOL * run_step:
                bounds.append(k + 1)
                run_step = None
        bounds.append(self.n_slices)
        return [self._subset(slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def with_slices(self, pixels: np.ndarray, image_positions_lps: np.ndarray, instance_numbers: list[int | None],
                    source_files: list[str], source_frames: list[int]) -> DicomStack:
        """This stack with more slices on its own pixel grid (same r, c and pixel spacing): ``pixels`` (m, rows,
        cols) whose voxel (0, 0) is at ``image_positions_lps`` (m, 3). All slices are sorted along the normal
        and the geometry (step, uniform, sheared) is derived again from the true IPPs."""
        ipps = np.concatenate([self.image_positions_lps, np.asarray(image_positions_lps, dtype=np.float64)])
        order = np.argsort(ipps @ self.direction_lps[:, 2], kind="stable")
        pixels = np.concatenate([self.pixels, np.asarray(pixels, dtype=self.pixels.dtype)])[order]
        numbers, files, frames = ([both[k] for k in order] for both in (
            self.instance_numbers + list(instance_numbers), self.source_files + list(source_files),
            self.source_frames + list(source_frames)))
        r, c = self.direction_lps[:, 0], self.direction_lps[:, 1]
        return _make_stack(pixels, ipps[order], r, c, (self.spacing[1], self.spacing[0]), numbers, files, frames,
                           self.slice_thickness, self.volume_index, self.n_volumes)

    @classmethod
    def from_slices(cls, pixels: np.ndarray, image_positions_lps, r, c, pixel_spacing,
                    instance_numbers: list[int | None] | None = None, slice_thickness: float | None = None,
                    volume_index: int = 0, n_volumes: int = 1) -> DicomStack:
        """A stack from slices already sorted along the normal: ``pixels`` (n, rows, cols) [k, j, i] of any
        numeric dtype (a memory map stays one), ``image_positions_lps`` (n, 3) LPS mm of each slice's voxel
        (0, 0), ``r`` / ``c`` the unit column / row directions, ``pixel_spacing`` (row, column) mm. The step,
        uniform and sheared flags are derived from the IPPs, exactly as when reading DICOM."""
        n = len(pixels)
        numbers = [None] * n if instance_numbers is None else list(instance_numbers)
        return _make_stack(pixels, np.asarray(image_positions_lps, dtype=np.float64), np.asarray(r, dtype=np.float64),
                           np.asarray(c, dtype=np.float64), (float(pixel_spacing[0]), float(pixel_spacing[1])),
                           numbers, [""] * n, [0] * n, slice_thickness, volume_index, n_volumes)

    def _subset(self, sl: slice) -> DicomStack:
        r, c = self.direction_lps[:, 0], self.direction_lps[:, 1]
        return _make_stack(
            self.pixels[sl], self.image_positions_lps[sl], r, c, (self.spacing[1], self.spacing[0]),
            self.instance_numbers[sl], self.source_files[sl], self.source_frames[sl],
            self.slice_thickness, self.volume_index, self.n_volumes,
        )

    def _ipp_at(self, k: np.ndarray) -> np.ndarray:
        """IPP (..., 3) at continuous slice index k (...), piecewise linear between true IPPs."""
        ipps = self.image_positions_lps
        if len(ipps) == 1:
            return ipps[0] + k[..., None] * self.spacing[2] * self.direction_lps[:, 2]
        k0 = np.clip(np.floor(k), 0, len(ipps) - 2).astype(int)
        t = (k - k0)[..., None]
        return ipps[k0] * (1 - t) + ipps[k0 + 1] * t

    def _k_at(self, s: np.ndarray) -> np.ndarray:
        """Continuous slice index at position s (mm along n): inverse of the piecewise-linear map."""
        pos = self.slice_positions
        seg = np.clip(np.searchsorted(pos, s) - 1, 0, len(pos) - 2)
        return seg + (s - pos[seg]) / (pos[seg + 1] - pos[seg])


@dataclass
class DicomSeries:
    """Everything read from one series folder.

    Attributes:
        path: the folder.
        stacks: largest first (most slices), then by position, then `volume_index`.
        series_description: SeriesDescription of the first file that has one, else None.
        skipped: files or frames left out, with the reason, in file-name order.
    """

    path: Path
    stacks: list[DicomStack]
    series_description: str | None = None
    skipped: list[SkippedFile] = field(default_factory=list)


def read_series(series_dir: str | Path, rescale: bool = True) -> DicomSeries:
    """Read every file of one series folder into stacks (see the module docstring for the rules).

    Args:
        series_dir: folder holding the DICOM files of one series (sub-folders are not searched).
        rescale: apply RescaleSlope/RescaleIntercept (per frame); False keeps the stored values.

    Returns:
        The stacks, the series description and the skipped files with reasons.

    Raises:
        SeriesReadError: the folder is missing or empty, or no file gave a usable frame.
    """
    folder = Path(series_dir)
    if not folder.is_dir():
        raise SeriesReadError(f"series folder {folder} does not exist or is not a folder")
    paths = sorted(folder.iterdir())  # sorted only to make the skip list and tie-breaks reproducible
    if not paths:
        raise SeriesReadError(f"series folder {folder} is empty")
    frames, skipped, description = _read_frames(paths)
    if not frames:
        reasons = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in skipped[:5])
        raise SeriesReadError(f"no usable image in {folder} ({len(paths)} entries): {reasons}")
    stacks: list[DicomStack] = []
    for group in _group_by_geometry(frames):
        stacks += _stacks_of_group(group, skipped, rescale)
    stacks.sort(key=lambda s: (-s.n_slices, round(float(s.slice_positions[0]), 2),
                               tuple(np.round(s.direction_lps[:, 2], 3)), s.volume_index))
    skipped.sort(key=lambda s: (s.path, -1 if s.frame is None else s.frame))
    return DicomSeries(folder, stacks, description, skipped)


# ----------------------------------------------------------------------------------------- file level


def _read_frames(paths: list[Path]) -> tuple[list[_Frame], list[SkippedFile], str | None]:
    frames: list[_Frame] = []
    skipped: list[SkippedFile] = []
    description: str | None = None
    for path in paths:
        if not path.is_file():
            skipped.append(SkippedFile(str(path), "not a regular file (sub-folders are not searched)"))
            continue
        try:
            ds = pydicom.dcmread(path)  # the only read of this file: header and pixels together
            file_frames, frame_skips = _frames_of_dataset(ds, str(path))
        except _Skip as exc:
            skipped.append(SkippedFile(str(path), str(exc)))
            continue
        except InvalidDicomError as exc:
            skipped.append(SkippedFile(str(path), f"not a DICOM file ({exc})"))
            continue
        except Exception as exc:  # noqa: BLE001 - any broken file must be reported, never crash the read
            skipped.append(SkippedFile(str(path), f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        frames += file_frames
        skipped += frame_skips
        if description is None and ds.get("SeriesDescription"):
            description = str(ds.SeriesDescription)
    return frames, skipped, description


def _frames_of_dataset(ds: Dataset, path: str) -> tuple[list[_Frame], list[SkippedFile]]:
    """All frames of one file (1 for classic MR, NumberOfFrames for enhanced multi-frame)."""
    if "PixelData" not in ds:
        raise _Skip("no pixel data")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise _Skip(f"not a grey-level image (SamplesPerPixel={ds.SamplesPerPixel})")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames: list[_Frame] = []
    skips: list[SkippedFile] = []
    geometry = []
    for index in range(n_frames):  # geometry first: a file without any usable frame is not decoded
        try:
            geometry.append((index, _frame_geometry(ds, index)))
        except _Skip as exc:
            if n_frames == 1:
                raise
            skips.append(SkippedFile(path, str(exc), index))
    if not geometry:
        raise _Skip("no frame with usable geometry")
    raw = ds.pixel_array.reshape(n_frames, int(ds.Rows), int(ds.Columns))
    for index, (ipp, iop, spacing, slope, intercept, thickness) in geometry:
        frames.append(_Frame(path, index, raw[index], ipp, iop, spacing, slope, intercept,
                             _int_or_none(ds.get("InstanceNumber")), thickness,
                             str(ds.get("SeriesInstanceUID", "")), n_frames > 1))
    return frames, skips


def _frame_geometry(ds: Dataset, index: int) -> tuple:
    """(IPP, unit IOP, PixelSpacing, slope, intercept, SliceThickness) of one frame."""
    items = _functional_groups(ds, index)
    ipp = _finite_values(_frame_value(ds, items, "PlanePositionSequence", "ImagePositionPatient"), 3,
                         "ImagePositionPatient")
    iop = _finite_values(_frame_value(ds, items, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                         "ImageOrientationPatient")
    spacing = _finite_values(_frame_value(ds, items, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing")
    if spacing.min() <= 0:
        raise _Skip(f"PixelSpacing is not positive ({spacing.tolist()})")
    slope = _finite_or_none(_frame_value(ds, items, "PixelValueTransformationSequence", "RescaleSlope"),
                            "RescaleSlope")
    intercept = _finite_or_none(_frame_value(ds, items, "PixelValueTransformationSequence", "RescaleIntercept"),
                                "RescaleIntercept")
    thickness = _float_or_none(_frame_value(ds, items, "PixelMeasuresSequence", "SliceThickness"))
    return (ipp, _unit_iop(iop), (float(spacing[0]), float(spacing[1])),
            slope or 1.0,  # absent (or a nonsensical 0) slope means identity
            intercept or 0.0,
            thickness if thickness and thickness > 0 else None)  # NaN > 0 is False: information only


def _finite_values(value, count: int, keyword: str) -> np.ndarray:
    """The ``count`` numbers of a multi-valued geometry tag; `_Skip` naming the tag if missing, malformed or
    not finite (NaN / inf would put the slice nowhere, or everywhere, in world space)."""
    if value is None:
        raise _Skip(f"missing {keyword}")
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:  # a single number, or text that is not a number
        raise _Skip(f"malformed {keyword} ({type(exc).__name__}: {exc})") from None
    if values.shape != (count,):
        raise _Skip(f"malformed {keyword}: {values.size} values where {count} are expected")
    if not np.isfinite(values).all():
        raise _Skip(f"{keyword} is not finite ({values.tolist()})")
    return values


def _finite_or_none(value, keyword: str) -> float | None:
    """A single number (None when absent or malformed); `_Skip` when it is NaN or infinite."""
    number = _float_or_none(value)
    if number is not None and not math.isfinite(number):
        raise _Skip(f"{keyword} is not finite ({number})")
    return number


def _functional_groups(ds: Dataset, index: int) -> list[Dataset]:
    """Functional-group items that describe frame `index`: its per-frame item, then the shared one.

    Empty for classic single-frame files. pydicom parses these sequences but offers no per-frame
    lookup (and its `apply_rescale` ignores them), hence this helper and `_frame_value`.
    """
    items = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        items.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        items.append(shared[0])
    return items


def _frame_value(ds: Dataset, items: list[Dataset], group: str, keyword: str):
    """A tag of one frame: from its functional groups (per-frame first), else from the top level."""
    for item in items:
        sequence = item.get(group)
        if sequence and keyword in sequence[0]:
            return sequence[0][keyword].value
    return ds.get(keyword)


def _unit_iop(iop) -> np.ndarray:
    """IOP as two unit vectors (6,); refuses zero or non-perpendicular row/column cosines."""
    values = np.asarray(iop, dtype=np.float64)  # finite: checked by `_finite_values`
    r, c = values[:3], values[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if not (nr > 0.5 and nc > 0.5):
        raise _Skip(f"invalid ImageOrientationPatient {values.tolist()}")
    r, c = r / nr, c / nc
    if abs(float(r @ c)) > IOP_TOL:
        raise _Skip(f"ImageOrientationPatient row and column not perpendicular ({values.tolist()})")
    return np.concatenate([r, c])


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------- grouping into stacks


def _group_by_geometry(frames: list[_Frame]) -> list[list[_Frame]]:
    """Frames of the same series UID, matrix size, pixel spacing and orientation (within tolerances)."""
    groups: list[list[_Frame]] = []
    for frame in frames:
        for group in groups:
            ref = group[0]
            if (frame.series_uid == ref.series_uid and frame.raw.shape == ref.raw.shape
                    and max(abs(a - b) for a, b in zip(frame.pixel_spacing, ref.pixel_spacing)) <= SPACING_TOL_MM
                    and float(np.max(np.abs(frame.iop - ref.iop))) <= IOP_TOL):
                group.append(frame)
                break
        else:
            groups.append([frame])
    return groups


def _stacks_of_group(group: list[_Frame], skipped: list[SkippedFile], rescale: bool) -> list[DicomStack]:
    """Split one orientation group by position into `n_volumes` stacks of one frame per position."""
    iop = np.mean([f.iop for f in group], axis=0)
    r, c = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(r, c)
    n /= np.linalg.norm(n)
    positions = _cluster_positions(group, n)
    n_volumes = min(len(p) for p in positions)
    for position in positions:
        for extra in position[n_volumes:]:
            skipped.append(SkippedFile(extra.path, f"duplicate position: {len(position)} frames at "
                                       f"{float(extra.ipp @ n):.3f} mm along the normal where the other "
                                       f"positions have {n_volumes}; kept the first by InstanceNumber",
                                       extra.frame if extra.multiframe else None))
    stacks = []
    for v in range(n_volumes):
        chosen = [position[v] for position in positions]
        stacks.append(_make_stack(
            _to_float(chosen, rescale), np.array([f.ipp for f in chosen]), r, c,
            chosen[0].pixel_spacing, [f.instance_number for f in chosen], [f.path for f in chosen],
            [f.frame for f in chosen], chosen[0].slice_thickness, v, n_volumes,
        ))
    return stacks


def _cluster_positions(group: list[_Frame], n: np.ndarray) -> list[list[_Frame]]:
    """Frames sharing one IPP (within POSITION_TOL_MM), ordered along n; inside, by InstanceNumber.

    The 3-D distance is tested, not only the projection on n, so that two slices at the same depth
    but shifted in-plane stay apart (and the stack is then flagged sheared / non-uniform).
    """
    ordered = sorted(group, key=lambda f: (float(f.ipp @ n), tuple(f.ipp)))
    clusters: list[list[_Frame]] = []
    for frame in ordered:
        s = float(frame.ipp @ n)
        home = None
        for cluster in reversed(clusters):  # only the last few clusters can be within reach along n
            if s - float(cluster[0].ipp @ n) > POSITION_TOL_MM:
                break
            if np.linalg.norm(frame.ipp - cluster[0].ipp) <= POSITION_TOL_MM:
                home = cluster
                break
        if home is None:
            clusters.append([frame])
        else:
            home.append(frame)
    for cluster in clusters:
        cluster.sort(key=lambda f: (math.inf if f.instance_number is None else f.instance_number,
                                    f.path, f.frame))
    return clusters


def _to_float(frames: list[_Frame], rescale: bool) -> np.ndarray:
    """float32 (n, rows, cols); rescale per slice (slopes may differ between slices, e.g. Philips)."""
    pixels = np.stack([f.raw for f in frames], dtype=np.float32)  # one copy, converting on the way
    if rescale:
        slopes = np.array([f.slope for f in frames], dtype=np.float32)
        intercepts = np.array([f.intercept for f in frames], dtype=np.float32)
        if np.any(slopes != 1):
            pixels *= slopes[:, None, None]
        if np.any(intercepts != 0):
            pixels += intercepts[:, None, None]
    return pixels


def _make_stack(pixels: np.ndarray, ipps: np.ndarray, r: np.ndarray, c: np.ndarray,
                pixel_spacing: tuple[float, float], instance_numbers: list[int | None],
                files: list[str], frames: list[int], thickness: float | None,
                volume_index: int, n_volumes: int) -> DicomStack:
    """Derive the geometry of sorted slices: pixels (n, rows, cols), ipps (n, 3) LPS mm sorted along n."""
    n = np.cross(r, c)
    n /= np.linalg.norm(n)
    s = ipps @ n
    count = len(s)
    if count > 1:
        step = float(s[-1] - s[0]) / (count - 1)  # mean step: least sensitive to IPP rounding
        grid_error = np.abs(s - (s[0] + step * np.arange(count)))
        uniform = step > POSITION_TOL_MM and float(grid_error.max()) <= UNIFORM_RTOL * step
        if not uniform:
            step = float(np.median(np.diff(s)))  # nominal step only: the true positions are in `s`
    else:
        step, uniform = thickness or DEFAULT_SINGLE_SLICE_STEP_MM, True
    offsets = (ipps - ipps[0]) - np.outer(s - s[0], n)  # IPP movement not along the normal
    shear = float(np.linalg.norm(offsets, axis=1).max())
    return DicomStack(
        pixels=pixels,
        origin_lps=ipps[0].copy(),
        direction_lps=np.column_stack([r, c, n]),
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], step]),
        slice_positions=s,
        image_positions_lps=ipps,
        instance_numbers=list(instance_numbers),
        source_files=list(files),
        source_frames=list(frames),
        uniform=bool(uniform),
        sheared=shear > SHEAR_TOL_PX * min(pixel_spacing),
        shear_mm=shear,
        step_from_ipp=count > 1,
        slice_thickness=thickness,
        volume_index=volume_index,
        n_volumes=n_volumes,
    )
