"""The label points of train_label_coordinates.csv resolved against the cached series: coordinates.csv and
coordinates_unresolved.csv.

Frames (docs/preprocess.md, *Frames*):
- DICOM pixel: (x = column, y = row) of one instance, as in train_label_coordinates.csv;
- world: LPS mm, ``IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c`` from the instance's own geometry
  (`spine.preprocess.volume.InstanceGeometry`);
- stack voxel: (i, j, k) in the kept stack holding the instance: exactly (x, y, slice of the instance).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from spine import cache as layout
from spine.cache import COORDINATE_COLUMNS, COORDINATES_CSV, UNRESOLVED_CSV
from spine.io.tables import Listing, read_coordinates
from spine.preprocess.job import shorten
from spine.preprocess.volume import InstanceGeometry

__all__ = ["label_coordinates", "write_coordinates"]

log = logging.getLogger(__name__)


def label_coordinates(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train_label_coordinates.csv: (usable rows, rows set aside with a reason); empty without the file.

    Raises:
        TableError: the file cannot be used (`spine.io.tables.read_coordinates`).
    """
    path = data_dir / "train_label_coordinates.csv"
    if path.is_file():
        return read_coordinates(path)
    empty = pd.DataFrame(columns=["line", *COORDINATE_COLUMNS[:7]])
    return empty, empty.assign(reason=pd.Series(dtype=str))


def write_coordinates(root: Path, labels: pd.DataFrame, rejected: pd.DataFrame,
                      records: dict[tuple[int, int], dict], listing: Listing | None = None) -> int:
    """coordinates.csv: every usable row of train_label_coordinates.csv, plus world LPS mm, the kept stack
    holding the instance and the voxel (i, j, k) in it (empty / NaN where unresolved, or where the instance is
    in no kept stack: then only the world position); coordinates_unresolved.csv: the rows without a world
    position, the ``rejected`` ones included, each with its reason, in file order; ``listing`` (train's) names
    the skipped listing rows of series not listed. Returns how many rows that file lists."""
    labels = labels.reset_index(drop=True)
    world, stack, voxel, reasons = _resolve(labels, records, listing)
    out = labels.drop(columns="line")
    out[["world_x", "world_y", "world_z"]] = world
    out["stack"] = pd.array([None if np.isnan(v) else int(v) for v in stack], dtype="Int64")
    out[["voxel_i", "voxel_j", "voxel_k"]] = voxel
    layout.write_csv(out, root / COORDINATES_CSV)
    unresolved = labels[[r is not None for r in reasons]].assign(reason=[r for r in reasons if r is not None])
    parts = [frame for frame in (rejected, unresolved) if len(frame)]
    unresolved = (pd.concat(parts, ignore_index=True).sort_values("line", kind="stable") if parts else
                  pd.DataFrame(columns=[*rejected.columns]))
    layout.write_csv(unresolved, root / UNRESOLVED_CSV)
    if len(unresolved):
        first = unresolved.iloc[0]
        log.warning("%d label coordinate(s) without a position, listed in %s (first: line %d, %s)",
                    len(unresolved), root / UNRESOLVED_CSV, first.line, first.reason)
    return len(unresolved)


def _resolve(labels: pd.DataFrame, records: dict[tuple[int, int], dict], listing: Listing | None = None):
    """(world (n, 3) LPS mm, stack (n,), voxel (n, 3) (i, j, k), reason per row: None where the instance was
    found) of checked coordinates; stack and voxel are NaN where the instance is in no kept stack."""
    world = np.full((len(labels), 3), np.nan)
    stack = np.full(len(labels), np.nan)
    voxel = np.full((len(labels), 3), np.nan)
    reasons: list[str | None] = [None] * len(labels)
    studies = {study for study, _ in records}
    for (study, series), rows in labels.groupby(["study_id", "series_id"]).groups.items():
        record = records.get((int(study), int(series)))
        if record is None:
            why = _not_listed(int(study), int(series), studies, listing)
            for index in rows:
                reasons[index] = why
            continue
        instances = {int(k): InstanceGeometry.from_list(v) for k, v in record.get("instances", {}).items()}
        ambiguous = {int(k): int(v) for k, v in record.get("ambiguous_instances", {}).items()}
        slices = _slices_of(record, set(ambiguous)) if record["status"] == "ok" else {}
        for index in rows:
            number = int(labels.at[index, "instance_number"])
            x, y = float(labels.at[index, "x"]), float(labels.at[index, "y"])  # DICOM pixel: column, row
            geometry = instances.get(number)
            reasons[index] = _unplaced(number, int(series), record, geometry, ambiguous, x, y)
            if reasons[index] is not None:
                continue
            world[index] = geometry.pixel_to_world(x, y)
            if number in slices:
                n, k = slices[number]
                found = _stack_voxel(record["stacks"][n], k, geometry, x, y, world[index])
                if found is not None:
                    stack[index], voxel[index] = n, found
    return world, stack, voxel, reasons


def _unplaced(number: int, series: int, record: dict, geometry: InstanceGeometry | None, ambiguous: dict[int, int],
              x: float, y: float) -> str | None:
    """Why a label point on instance ``number`` at DICOM pixel (x = column, y = row) gets no position (None when
    it gets one): an InstanceNumber carried by several files at different positions names no one slice, a point
    off its image is no click on the anatomy."""
    if number in ambiguous:
        return (f"ambiguous instance: InstanceNumber {number} is carried by files at {ambiguous[number]} different "
                f"positions in series {series}; the label's slice cannot be known")
    if geometry is None:
        return (f"instance {number} not in series {series}" if record.get("instances") else
                f"series {series} could not be read ({shorten(record.get('reason', ''))})")
    if not geometry.contains(x, y):
        return (f"off its image: DICOM pixel (x {x:g}, y {y:g}) is outside instance {number}'s {geometry.columns} "
                f"columns x {geometry.rows} rows")
    return None


def _slices_of(record: dict, ambiguous: set[int]) -> dict[int, tuple[int, int]]:
    """InstanceNumber -> (kept stack, slice k in it) of an ok record, for the numbers that are not ``ambiguous``
    (a number at one position in several volumes, e.g. echoes: the first volume's)."""
    table: dict[int, tuple[int, int]] = {}
    for n, stack in enumerate(record.get("stacks", [])):
        for k, number in enumerate(stack["instance_numbers"]):
            if number is not None and int(number) not in ambiguous:
                table.setdefault(int(number), (n, k))
    return table


def _stack_voxel(stack: dict, k: int, geometry: InstanceGeometry, x: float, y: float,
                 world: np.ndarray) -> np.ndarray | None:
    """Voxel (i, j, k) of DICOM pixel (x, y) of an instance that is slice k of a cached stack (its record
    ``stack``): exactly (x, y, k) when the slice has the instance's own geometry; else (a slice merged from a
    smaller stack onto this one's pixel grid) the point (``world``, LPS mm) projected into the slice, if it lies
    within half a slice step of it (None otherwise).

    Not `DicomStack.world_to_index`: that maps any world point to a continuous index (k between slices, through
    the affine or between the true IPPs), so the instance's own pixel would come back off (x, y, k) by float
    rounding, and a point off the plane of a merged slice would get a fractional k; here k is always the
    instance's own slice and an instance on its own geometry gets its pixel exactly (docs/preprocess.md)."""
    ipp = np.asarray(stack["ipp"][k], dtype=np.float64)  # LPS mm, voxel (0, 0) of slice k
    r, c = np.asarray(stack["r"], dtype=np.float64), np.asarray(stack["c"], dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in stack["pixel_spacing"])  # mm
    own = (np.allclose(ipp, geometry.ipp, rtol=0, atol=1e-9) and np.allclose(r, geometry.r, rtol=0, atol=1e-9)
           and np.allclose(c, geometry.c, rtol=0, atol=1e-9) and row_spacing == geometry.row_spacing
           and col_spacing == geometry.col_spacing)
    if own:
        return np.array([x, y, float(k)])
    normal = np.cross(r, c)
    ipps = np.asarray(stack["ipp"], dtype=np.float64)
    step = float(np.median(np.diff(ipps @ normal))) if len(ipps) > 1 else 1.0  # mm along the normal
    offset = world - ipp  # mm
    if abs(float(offset @ normal)) > step / 2:
        return None
    return np.array([float(offset @ r) / col_spacing, float(offset @ c) / row_spacing, float(k)])


def _not_listed(study: int, series: int, studies: set[int], listing: Listing | None) -> str:
    """Why a series has no record: the skipped listing row of that series id if there is one, else not listed
    (with the skipped rows of the study, if any)."""
    named = listing.skipped_of_series(series) if listing is not None else []
    if named:
        return "; ".join(f"listing row skipped ({row})" for row in named)
    why = f"series {series} of study {study} not listed" if study in studies else f"study {study} not listed"
    others = listing.skipped_of(study) if listing is not None else []
    return why + (f" (skipped listing rows of study {study}: {'; '.join(others)})" if others else "")
