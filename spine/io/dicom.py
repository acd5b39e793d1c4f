"""Read one DICOM series folder into geometrically exact stacks of slices.

This is the only DICOM reader of the project: preprocessing and inference both go through
`read_series`, so that training and the Kaggle notebook see the same voxels and the same geometry.
The stacks are `spine.io.stack.DicomStack` (re-exported here with `IrregularStackError`), whose module
describes the frames: world LPS mm, DICOM pixel (x = column, y = row), voxel index (i, j, k).

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
- Uneven or sheared (gantry tilt) stacks are kept whole, flagged, with their true slice positions; a
  single slice is a stack too (`spine.io.stack`).
- Unreadable, non-DICOM, pixel-less or geometry-less files are skipped and listed with a reason, and so
  are files (or frames) whose PixelSpacing, IPP, IOP, RescaleSlope or RescaleIntercept is NaN or infinite
  (or PixelSpacing not positive); a folder with nothing usable raises `SeriesReadError`.
- Slices of another matrix size (Rows/Columns) or pixel spacing are another stack, never resized: which stacks
  make a volume is the volume builder's decision (`spine.preprocess.volume.select_stacks`).
- A stack's pixels keep the stored 16-bit integers when every slice's rescale is the identity (slope 1,
  intercept 0, or ``rescale=False``): the values are the same, and the cache writes them as they are. Otherwise
  they are float32 modality values.

Speed: each file is read once (header and pixels together), memory-mapped. A classic uncompressed little-endian
file (what the competition data is) is read by `spine.io.native.parse_native`: the dozen tags the reader needs,
straight from the bytes, and the pixels as a numpy view of the mapping, copied once when the stack is built
(pydicom's unused-bit correction applied then, once per stack); everything else (compressed transfer syntaxes,
multi-frame files, anything odd) goes through pydicom. Both give the same values, frames and skip reasons
(`tests/test_dicom_read.py`, and every file of the real-scanner set in `tests/test_dicom_qa.py`). A file
truncated by another process while its series is being read would end the process with SIGBUS; preprocessing
workers that die are retried and recorded.
"""

from __future__ import annotations

import io
import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from spine.io.native import NativeFile, parse_native
from spine.io.stack import POSITION_TOL_MM, DicomStack, IrregularStackError, make_stack

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


class SeriesReadError(Exception):
    """Nothing usable in a series folder (missing, empty, or every file skipped); the message says why."""


@dataclass(frozen=True)
class SkippedFile:
    """A file (or one frame of a multi-frame file) that was left out, and why."""

    path: str
    reason: str
    frame: int | None = None  # 0-based frame number inside a multi-frame file, None for the whole file
    instance_number: int | None = None  # set for a readable frame left out (a duplicate position)
    ipp: tuple[float, float, float] | None = None  # LPS mm, ImagePositionPatient of that frame


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
    unused_bits: int = 0  # BitsAllocated - BitsStored still to correct in ``raw`` (done once the stack is built)


class _Skip(Exception):
    """Raised while reading a file or frame that must be skipped; the message is the reason."""


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
            data = _contents(path)  # the only read of this file: header and pixels together
            native = parse_native(data)
            layout = _native_layout(native) if native is not None else None
            if layout is not None:
                file_frames, frame_skips = [_frame_of_native(native, layout, data, str(path))], []
                file_description = native.values.get("SeriesDescription")
            else:
                ds = pydicom.dcmread(io.BytesIO(data))
                file_frames, frame_skips = _frames_of_dataset(ds, str(path))
                file_description = ds.get("SeriesDescription")
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
        if description is None and file_description:
            description = str(file_description)
    return frames, skipped, description


def _contents(path: Path) -> mmap.mmap | bytes:
    """The file's bytes, memory-mapped read-only where possible: a classic file's pixels are then read once, by
    the copy that stacks them (no copy into a bytes object first). An empty or unmappable file is read."""
    with open(path, "rb") as handle:
        try:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty, or not a regular file on this system
            return handle.read()


def _frames_of_dataset(ds: Dataset, path: str) -> tuple[list[_Frame], list[SkippedFile]]:
    """All frames of one file read by pydicom (1 for classic MR, NumberOfFrames for enhanced multi-frame)."""
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
            geometry.append((index, _dataset_frame_geometry(ds, index)))
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


def _native_layout(native: NativeFile) -> tuple[np.dtype, int, int, int] | None:
    """(stored type, rows, columns, unused high bits) of a single-frame file `spine.io.native` read, when its
    pixels can be taken as they lie; None sends the file to pydicom (an odd layout, several frames, a pixel data
    too short for it, an InstanceNumber that is not an integer: pydicom's path judges and words those)."""
    v = native.values
    rows, columns, allocated, stored = (v.get(k) for k in ("Rows", "Columns", "BitsAllocated", "BitsStored"))
    number = v.get("InstanceNumber", 0.0)
    if (not rows or not columns or allocated not in (8, 16, 32) or not stored or stored > allocated
            or v.get("NumberOfFrames", 1.0) != 1.0  # multi-frame files (rare) keep pydicom's per-frame reasons
            or not isinstance(number, float) or not number.is_integer()):
        return None
    dtype = np.dtype(f"<{'i' if v.get('PixelRepresentation', 0) == 1 else 'u'}{allocated // 8}")
    if native.pixel_length < rows * columns * dtype.itemsize:
        return None
    return dtype, rows, columns, allocated - stored


def _frame_of_native(native: NativeFile, layout: tuple, data, path: str) -> _Frame:
    """The frame of a classic uncompressed file from `spine.io.native.parse_native` and its `_native_layout`: the
    same checks and reasons as `_frames_of_dataset`, its pixels a view of ``data`` (their unused high bits
    corrected once stacked)."""
    v = native.values
    if v.get("SamplesPerPixel", 1) not in (0, 1):
        raise _Skip(f"not a grey-level image (SamplesPerPixel={v['SamplesPerPixel']})")
    dtype, rows, columns, unused_bits = layout
    ipp, iop, spacing, slope, intercept, thickness = _frame_geometry(lambda group, keyword: v.get(keyword))
    raw = np.frombuffer(data, dtype=dtype, count=rows * columns, offset=native.pixel_offset)
    raw = raw.astype(dtype.newbyteorder("="), copy=False).reshape(rows, columns)
    number = int(v["InstanceNumber"]) if "InstanceNumber" in v else None
    return _Frame(path, 0, raw, ipp, iop, spacing, slope, intercept, number, thickness,
                  str(v.get("SeriesInstanceUID", "")), False, unused_bits)


def _correct_unused_bits(pixels: np.ndarray, frames: list[_Frame]) -> np.ndarray:
    """Mask (unsigned) or sign-extend (signed) the bits above BitsStored of stacked slices, in place: what pydicom's
    decoder does per file, here in one pass over the stack."""
    for k, frame in enumerate(frames):
        if frame.unused_bits:  # right shift: arithmetic for signed types, logical for unsigned
            np.left_shift(pixels[k], frame.unused_bits, out=pixels[k])
            np.right_shift(pixels[k], frame.unused_bits, out=pixels[k])
    return pixels


def _stored_values(frame: _Frame) -> np.ndarray:
    """One frame's stored values with its unused high bits corrected (a copy where there are some)."""
    if not frame.unused_bits:
        return frame.raw
    return (frame.raw << frame.unused_bits) >> frame.unused_bits  # arithmetic for signed types, logical otherwise


def _frame_geometry(value: Callable[[str, str], object]) -> tuple:
    """(IPP, unit IOP, PixelSpacing, slope, intercept, SliceThickness) of one frame; ``value(group, keyword)`` is
    the tag's value for this frame (``group``: the functional group that holds it in an enhanced file)."""
    ipp = _finite_values(value("PlanePositionSequence", "ImagePositionPatient"), 3, "ImagePositionPatient")
    iop = _finite_values(value("PlaneOrientationSequence", "ImageOrientationPatient"), 6, "ImageOrientationPatient")
    spacing = _finite_values(value("PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing")
    if spacing.min() <= 0:
        raise _Skip(f"PixelSpacing is not positive ({spacing.tolist()})")
    slope = _finite_or_none(value("PixelValueTransformationSequence", "RescaleSlope"), "RescaleSlope")
    intercept = _finite_or_none(value("PixelValueTransformationSequence", "RescaleIntercept"), "RescaleIntercept")
    thickness = _float_or_none(value("PixelMeasuresSequence", "SliceThickness"))
    return (ipp, _unit_iop(iop), (float(spacing[0]), float(spacing[1])),
            slope or 1.0,  # absent (or a nonsensical 0) slope means identity
            intercept or 0.0,
            thickness if thickness and thickness > 0 else None)  # NaN > 0 is False: information only


def _dataset_frame_geometry(ds: Dataset, index: int) -> tuple:
    """`_frame_geometry` of frame ``index`` of a pydicom dataset (its functional groups first, then the top level)."""
    items = _functional_groups(ds, index)
    return _frame_geometry(lambda group, keyword: _frame_value(ds, items, group, keyword))


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
                                       extra.frame if extra.multiframe else None, extra.instance_number,
                                       tuple(float(v) for v in extra.ipp)))
    stacks = []
    for v in range(n_volumes):
        chosen = [position[v] for position in positions]
        stacks.append(make_stack(
            _stack_pixels(chosen, rescale), np.array([f.ipp for f in chosen]), r, c,
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


def _stack_pixels(frames: list[_Frame], rescale: bool) -> np.ndarray:
    """(n, rows, cols): the stored int16 / uint16 values when every frame has them and its rescale is the identity
    (or ``rescale`` is False), else float32 modality values, rescaled per slice (slopes may differ between
    slices, e.g. Philips). One copy either way."""
    dtypes = {f.raw.dtype for f in frames}
    identity = not rescale or all(f.slope == 1 and f.intercept == 0 for f in frames)
    if identity and len(dtypes) == 1 and dtypes <= {np.dtype(np.int16), np.dtype(np.uint16)}:
        return _correct_unused_bits(np.stack([f.raw for f in frames]), frames)
    pixels = np.stack([_stored_values(f) for f in frames], dtype=np.float32)  # one copy, converting on the way
    if rescale:
        slopes = np.array([f.slope for f in frames], dtype=np.float32)
        intercepts = np.array([f.intercept for f in frames], dtype=np.float32)
        if np.any(slopes != 1):
            pixels *= slopes[:, None, None]
        if np.any(intercepts != 0):
            pixels += intercepts[:, None, None]
    return pixels
