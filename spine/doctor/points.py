"""Label points on their images: positions re-derived, levels in anatomical order, left at the patient's left.

Pure functions on tables (coordinates.csv rows and instance geometries) do the arithmetic, so that tests can
hand them planted errors; the ``check_*`` functions gather those tables from a cache (and its DICOM) and grade
the result:

- ``label_positions``: the world position of every label point re-derived from its DICOM pixel (x = column,
  y = row of its instance) agrees with coordinates.csv, through the instance geometry the cache recorded for
  every point and through the DICOM files themselves for ``dicom_studies`` random studies; the cached voxel of
  each point lies at that world position, on the slice that holds the point's instance. It also draws, for
  ``image_studies`` random studies per series type, each instance's label points on the DICOM slice beside the
  same points on the slice sampled from the cache through them (`SeriesVolume.sample`): one PNG per series.
- ``level_order``: per study and condition, each level's point lies head-ward (world +z) of the next level's,
  at a plausible disc spacing.
- ``left_right``: every left point lies at the patient's left (world +x) of its right partner.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from spine.cache import UNRESOLVED_CSV, label_defect
from spine.constants import CONDITION_NAMES, CONDITIONS, LEVEL_NAMES, LEVELS, SERIES_TYPES, condition_side
from spine.doctor.registry import check
from spine.doctor.result import FAIL, PASS, WARN, CheckResult, share_status

log = logging.getLogger(__name__)

WORLD = ["world_x", "world_y", "world_z"]
_COND = dict(zip(CONDITION_NAMES, CONDITIONS))
_LEVEL = dict(zip(LEVEL_NAMES, LEVELS))
_LEVEL_NAME = dict(zip(LEVELS, LEVEL_NAMES))
_SHORT = {"spinal_canal_stenosis": "SCS", "left_neural_foraminal_narrowing": "LNF",
          "right_neural_foraminal_narrowing": "RNF", "left_subarticular_stenosis": "LSS",
          "right_subarticular_stenosis": "RSS"}
_MAX_LISTED = 20  # detail lines per kind of problem


# ------------------------------------------------------------------------------------------ pure parts
def named(coords: pd.DataFrame) -> pd.DataFrame:
    """coordinates.csv rows with ``cond`` and ``lv`` in snake case (``spinal_canal_stenosis``, ``l1_l2``); the
    competition's spelling and snake case are both accepted, anything else is NaN."""
    frame = coords.copy()
    frame["cond"] = [_COND.get(c, c if c in CONDITIONS else None) for c in frame["condition"]]
    frame["lv"] = [_LEVEL.get(v, v if v in LEVELS else None) for v in frame["level"]]
    return frame


def position_errors(coords: pd.DataFrame, tables: Mapping) -> pd.DataFrame:
    """Each row's world position re-derived from its DICOM pixel against the row's own ``world_x/y/z``.

    ``tables[(study_id, series_id)]``: InstanceNumber -> `spine.preprocess.volume.InstanceGeometry` (from the
    cache's record or from the DICOM). Returns one row per input row (same index): ``error_mm`` (NaN where
    nothing could be derived) and ``problem`` (empty, or why no position could be derived).
    """
    error = np.full(len(coords), np.nan)
    problem = [""] * len(coords)
    position = {index: n for n, index in enumerate(coords.index)}
    for (study, series), rows in coords.groupby(["study_id", "series_id"]).groups.items():
        table = tables.get((int(study), int(series)))
        for index in rows:
            n = position[index]
            row = coords.loc[index]
            world = np.array([row.world_x, row.world_y, row.world_z], dtype=np.float64)
            if not np.isfinite(world).all():
                problem[n] = f"no world position in the cache ({UNRESOLVED_CSV} says why)"
                continue
            if table is None:
                problem[n] = f"series {series} has no instance geometry"
                continue
            geometry = table.get(int(row.instance_number))
            if geometry is None:
                problem[n] = f"instance {int(row.instance_number)} not in series {series}"
                continue
            error[n] = float(np.linalg.norm(geometry.pixel_to_world(float(row.x), float(row.y)) - world))
    return pd.DataFrame({"study_id": coords.study_id.to_numpy(), "series_id": coords.series_id.to_numpy(),
                         "instance_number": coords.instance_number.to_numpy(), "condition": coords.condition.to_numpy(),
                         "level": coords.level.to_numpy(), "error_mm": error, "problem": problem}, index=coords.index)


def voxel_errors(coords: pd.DataFrame, stacks: Mapping) -> pd.DataFrame:
    """Each row's cached voxel (``stack``, ``voxel_i/j/k``) against its world position and instance.

    ``stacks[(study_id, series_id)]``: the series' `DicomStack` list (the cache's). For rows with a stack:
    ``error_mm`` = in-plane distance between the voxel and the world position mapped into the stack,
    ``slice_error`` = their distance along k in slices, ``instance`` = the InstanceNumber of the slice the voxel
    lies on; ``problem`` says what disagrees (the slice holds another instance, the voxel is off the point).
    """
    out = pd.DataFrame({"study_id": coords.study_id.to_numpy(), "series_id": coords.series_id.to_numpy(),
                        "instance_number": coords.instance_number.to_numpy(), "error_mm": np.nan,
                        "slice_error": np.nan, "instance": pd.array([None] * len(coords), dtype="Int64"),
                        "problem": ""}, index=coords.index)
    if "stack" not in coords.columns:
        return out
    for index, row in coords.iterrows():
        if pd.isna(row.get("stack")) or not np.isfinite([row.world_x, row.world_y, row.world_z]).all():
            continue
        series = stacks.get((int(row.study_id), int(row.series_id)))
        if series is None or not 0 <= int(row.stack) < len(series):
            out.at[index, "problem"] = f"stack {int(row.stack)} of series {int(row.series_id)} is not in the cache"
            continue
        stack = series[int(row.stack)]
        voxel = np.array([row.voxel_i, row.voxel_j, row.voxel_k], dtype=np.float64)
        found = stack.world_to_index(np.array([row.world_x, row.world_y, row.world_z], dtype=np.float64))
        in_plane = float(np.hypot((found[0] - voxel[0]) * stack.spacing[0], (found[1] - voxel[1]) * stack.spacing[1]))
        k = int(round(voxel[2]))
        number = stack.instance_numbers[k] if 0 <= k < stack.n_slices else None
        out.at[index, "error_mm"] = in_plane
        out.at[index, "slice_error"] = abs(float(found[2] - voxel[2]))
        out.at[index, "instance"] = None if number is None else int(number)
        if number is not None and int(number) != int(row.instance_number):
            out.at[index, "problem"] = (f"voxel slice {k} of stack {int(row.stack)} holds instance {number}, "
                                        f"not {int(row.instance_number)}")
        elif not 0 <= k < stack.n_slices:
            out.at[index, "problem"] = f"voxel slice {k} is outside stack {int(row.stack)} ({stack.n_slices} slices)"
    return out


def level_order_problems(coords: pd.DataFrame, spacing_mm=(15.0, 60.0), min_headward_cos: float = 0.3) -> pd.DataFrame:
    """Per study and condition, each labelled level against the next labelled one below it.

    The step from the lower point to the upper one must point head-ward (its cosine with world +z at least
    ``min_headward_cos``) and be ``spacing_mm`` (low, high) long per level between them. Duplicate rows of a
    point are averaged. Returns ``study_id, condition, upper, lower, distance_mm, cos, problem``, one row per bad
    pair.
    """
    frame = named(coords)
    frame = frame[frame.cond.notna() & frame.lv.notna() & np.isfinite(frame[WORLD]).all(axis=1)]
    rows = []
    if frame.empty:
        return pd.DataFrame(columns=["study_id", "condition", "upper", "lower", "distance_mm", "cos", "problem"])
    means = frame.groupby(["study_id", "cond", "lv"])[WORLD].mean()
    low, high = float(spacing_mm[0]), float(spacing_mm[1])
    for (study, cond), group in means.groupby(level=[0, 1]):
        points = {lv: group.loc[(study, cond, lv)].to_numpy(np.float64) for lv in group.index.get_level_values(2)}
        present = [lv for lv in LEVELS if lv in points]
        for upper, lower in zip(present[:-1], present[1:]):
            step = points[upper] - points[lower]
            distance = float(np.linalg.norm(step))
            cos = float(step[2] / distance) if distance > 0 else float("nan")
            per_level = distance / (LEVELS.index(lower) - LEVELS.index(upper))
            what = []
            if not cos >= min_headward_cos:
                what.append(f"{_LEVEL_NAME[upper]} is not head-ward of {_LEVEL_NAME[lower]} "
                            f"(dz {step[2]:+.1f} mm over {distance:.1f} mm)")
            if not low <= per_level <= high:
                what.append(f"{_LEVEL_NAME[upper]} to {_LEVEL_NAME[lower]}: {per_level:.1f} mm per level "
                            f"(plausible {low:g}-{high:g})")
            if what:
                rows.append({"study_id": int(study), "condition": cond, "upper": upper, "lower": lower,
                             "distance_mm": distance, "cos": cos, "problem": "; ".join(what)})
    return pd.DataFrame(rows, columns=["study_id", "condition", "upper", "lower", "distance_mm", "cos", "problem"])


def side_problems(coords: pd.DataFrame, min_left_right_mm: float = 0.0) -> pd.DataFrame:
    """Left points that do not lie at the patient's left (+x) of their right partner (same condition kind,
    same level) by more than ``min_left_right_mm``. Returns ``study_id, condition, level, dx_mm`` (left x minus
    right x) per bad pair."""
    frame = named(coords)
    frame = frame[frame.cond.notna() & frame.lv.notna() & np.isfinite(frame[WORLD]).all(axis=1)]
    rows = []
    if not frame.empty:
        x = frame.groupby(["study_id", "cond", "lv"]).world_x.mean()
        for (study, cond, lv), left_x in x.items():
            if condition_side(cond) <= 0:
                continue
            partner = "right_" + cond.split("_", 1)[1]
            right_x = x.get((study, partner, lv))
            if right_x is None or not math.isfinite(right_x):
                continue
            if not left_x - right_x > min_left_right_mm:
                rows.append({"study_id": int(study), "condition": cond.split("_", 1)[1], "level": lv,
                             "dx_mm": float(left_x - right_x)})
    return pd.DataFrame(rows, columns=["study_id", "condition", "level", "dx_mm"])


# --------------------------------------------------------------------------------------- the checks
@check("level_order", order=20, help="levels in anatomical order along the spine, at a plausible disc spacing")
def check_level_order(ctx) -> CheckResult:
    cfg, coords = ctx.cfg, ctx.cache.coordinates
    if coords.empty:
        return CheckResult("level_order", FAIL, "no label points in coordinates.csv")
    bad = level_order_problems(coords, cfg.level_spacing_mm, cfg.min_headward_cos)
    studies = sorted(set(int(s) for s in bad.study_id))
    total = int(coords.study_id.nunique())
    status = share_status(len(studies), total, cfg.max_bad_study_fraction)
    details = [f"study {r.study_id} {r.condition}: {r.problem}" for r in bad.head(_MAX_LISTED).itertuples()]
    if len(bad) > _MAX_LISTED:
        details.append(f"... {len(bad) - _MAX_LISTED} more (doctor.json)")
    summary = (f"levels in anatomical order at {cfg.level_spacing_mm[0]:g}-{cfg.level_spacing_mm[1]:g} mm per level "
               f"in all {total} studies" if not studies else
               f"{len(studies)} of {total} studies have levels out of order or implausibly spaced "
               f"({len(bad)} pairs; e.g. {', '.join(map(str, studies[:5]))})")
    return CheckResult("level_order", status, summary, details,
                       {"studies": total, "bad_studies": studies, "bad_pairs": bad})


@check("left_right", order=30, help=(
    "every left point at the patient's left (+x) of its right partner (lists the studies)"))
def check_left_right(ctx) -> CheckResult:
    cfg, coords = ctx.cfg, ctx.cache.coordinates
    if coords.empty:
        return CheckResult("left_right", FAIL, "no label points in coordinates.csv")
    bad = side_problems(coords, cfg.min_left_right_mm)
    frame = named(coords)
    sided = frame[[isinstance(c, str) and condition_side(c) != 0 for c in frame.cond]]
    total = int(sided.study_id.nunique())
    studies = sorted(set(int(s) for s in bad.study_id))
    status = share_status(len(studies), total, cfg.max_bad_study_fraction)
    details = [f"study {r.study_id} {r.condition} {_LEVEL_NAME.get(r.level, r.level)}: left point at "
               f"{r.dx_mm:+.1f} mm x of the right one" for r in bad.head(_MAX_LISTED).itertuples()]
    if len(bad) > _MAX_LISTED:
        details.append(f"... {len(bad) - _MAX_LISTED} more (doctor.json)")
    summary = (f"every left point lies at the patient's left (+x) of its right partner in all {total} studies"
               if not studies else
               f"{len(studies)} of {total} studies have a left point at or right of its right partner "
               f"({len(bad)} pairs; e.g. {', '.join(map(str, studies[:5]))})")
    return CheckResult("left_right", status, summary, details, {"studies": total, "bad_studies": studies,
                                                                 "bad_pairs": bad})


@check("label_positions", order=10, help=(
    "every label point's world position re-derived from its DICOM pixel agrees with the cache, its cached voxel "
    "lies on its instance; PNGs of N random studies per series type, the points on the DICOM slice beside the "
    "slice sampled from the cache through them (swapped x/y, labels on the wrong image)"))
def check_label_positions(ctx) -> CheckResult:
    """World positions re-derived from the cache's instance geometry (every point) and the DICOM (a sample),
    voxels against world positions and instances, the label defects set aside at preprocessing, and the PNGs of
    the drawn studies."""
    cfg, cache = ctx.cfg, ctx.cache
    coords = cache.coordinates
    if coords.empty:
        return CheckResult("label_positions", FAIL, "no label points in coordinates.csv (was the train split "
                           "preprocessed?)")
    keys = sorted({(int(a), int(b)) for a, b in zip(coords.study_id, coords.series_id)})
    records, stacks, volumes, notes = _cached_geometry(cache, keys)
    by_record = position_errors(coords, records)
    voxels = voxel_errors(coords, stacks)
    drawn = _drawn_series(coords, cache, ctx.rng(1), cfg.image_studies)
    dicom, dicom_tables = _dicom_geometry(ctx, keys, drawn, notes)
    in_sample = coords[[(int(a), int(b)) in dicom_tables for a, b in zip(coords.study_id, coords.series_id)]]
    by_dicom = position_errors(in_sample, dicom_tables)

    tol = cfg.world_tol_mm
    bad_record = by_record[(by_record.error_mm > tol) | (by_record.problem != "")]
    bad_dicom = by_dicom[(by_dicom.error_mm > tol) | (by_dicom.problem != "")]
    bad_voxel = voxels[(voxels.problem != "") | (voxels.error_mm > tol) | (voxels.slice_error > 0.5)]
    details = _bad_point_lines(bad_record, bad_dicom, bad_voxel)
    unresolved, defects = _unresolved(cache.root)
    if unresolved:
        notes.append(f"{unresolved} label coordinate(s) without a position in the cache "
                     f"(coordinates_unresolved.csv)")
    for r in defects.head(_MAX_LISTED).itertuples():
        details.append(f"line {r.line} of train_label_coordinates.csv (study {r.study_id} series {r.series_id} "
                       f"instance {r.instance_number}): {r.reason}")
    figures = _point_figures(ctx, coords, drawn, dicom, volumes, notes)

    n_bad = len(set(bad_record.index) | set(bad_dicom.index) | set(bad_voxel.index))
    status = FAIL if n_bad or len(defects) else (WARN if notes else PASS)
    worst_mm = float(np.nanmax(np.concatenate([by_record.error_mm.to_numpy(), by_dicom.error_mm.to_numpy(),
                                               [0.0]])))
    n_dicom_studies = len({k[0] for k in dicom_tables})
    if n_bad:
        summary = (f"{n_bad} of {len(coords)} label points disagree with their DICOM pixel or voxel "
                   f"(tolerance {tol:g} mm): {len(bad_record)} by the cache record, {len(bad_dicom)} by the DICOM "
                   f"of {n_dicom_studies} studies, {len(bad_voxel)} by the cached voxel")
    elif len(defects):
        summary = (f"{len(defects)} label point(s) that cannot be placed (an ambiguous InstanceNumber, off the "
                   f"image, an unknown condition or level), listed in {UNRESOLVED_CSV}")
    else:
        summary = (f"{len(coords)} label points: world position re-derived from the DICOM pixel within {tol:g} mm "
                   f"(max {worst_mm:.3f} mm; {len(by_dicom)} from the DICOM files of {n_dicom_studies} studies), "
                   f"cached voxels on their instances; {len(figures)} PNGs")
        if notes:
            summary += f"; {len(notes)} note(s)"
    numbers = {"points": len(coords), "bad_points": n_bad, "max_error_mm": worst_mm,
               "record_bad": len(bad_record), "dicom_checked": len(by_dicom), "dicom_bad": len(bad_dicom),
               "dicom_studies": sorted({k[0] for k in dicom_tables}), "voxel_bad": len(bad_voxel),
               "unresolved": unresolved, "label_defects": len(defects), "notes": notes,
               "bad": pd.concat([bad_record.assign(source="record"), bad_dicom.assign(source="dicom")])}
    return CheckResult("label_positions", status, summary, details + notes, numbers, figures)


def _cached_geometry(cache, keys: list[tuple[int, int]]) -> tuple[dict, dict, dict, list[str]]:
    """(instance geometry per series from the cache's records, the cached stacks, the volumes, notes on series
    that could not be loaded) of the labelled series ``keys`` (study, series)."""
    from spine.preprocess.volume import InstanceGeometry

    records, stacks, volumes, notes = {}, {}, {}, []
    for key in keys:
        try:
            record = cache.record(*key)
            records[key] = {int(k): InstanceGeometry.from_list(v) for k, v in record.get("instances", {}).items()}
            volume = cache.load_volume(*key)
            volumes[key], stacks[key] = volume, volume.stacks
        except Exception as err:  # noqa: BLE001 - one bad series is reported, never the end of the check
            notes.append(f"series {key[0]}/{key[1]}: {type(err).__name__}: {err}")
    return records, stacks, volumes, notes


def _dicom_geometry(ctx, keys: list[tuple[int, int]], drawn: list[tuple[int, int]], notes: list[str]
                    ) -> tuple[dict, dict]:
    """(the DICOM series read, their instance geometry) of the drawn studies and ``dicom_studies`` random ones;
    what cannot be read is a note."""
    cfg, cache = ctx.cfg, ctx.cache
    studies = sorted({k[0] for k in keys})
    rng = ctx.rng(2)
    sample = set(int(s) for s in rng.choice(studies, size=min(cfg.dicom_studies, len(studies)), replace=False)) \
        if studies else set()
    sample |= {study for study, _ in drawn}
    dicom, tables = {}, {}
    if ctx.data_dir is None:
        notes.append("no DICOM to re-derive from: data_dir "
                     f"{cfg.data_dir or cache.info.get('data_dir', '') or '(none recorded)'} is not a folder")
        return dicom, tables
    from spine.io.dicom import read_series
    from spine.preprocess.volume import instance_geometry

    for key in keys:
        if key[0] not in sample:
            continue
        folder = ctx.series_dir(*key)
        if folder is None:
            notes.append(f"series {key[0]}/{key[1]}: no DICOM folder under {ctx.data_dir}")
            continue
        try:
            dicom[key] = read_series(folder)
            tables[key] = instance_geometry(dicom[key])
        except Exception as err:  # noqa: BLE001
            notes.append(f"series {key[0]}/{key[1]}: DICOM not readable: {type(err).__name__}: {err}")
    return dicom, tables


def _bad_point_lines(bad_record: pd.DataFrame, bad_dicom: pd.DataFrame, bad_voxel: pd.DataFrame) -> list[str]:
    """One detail line per point that disagrees (at most `_MAX_LISTED` of each kind, then a count)."""
    details = []
    for what, frame in (("cache record", bad_record), ("DICOM", bad_dicom)):
        for r in frame.head(_MAX_LISTED).itertuples():
            why = r.problem or f"re-derived world position {r.error_mm:.2f} mm from the cache's"
            details.append(f"study {r.study_id} series {r.series_id} instance {r.instance_number} {r.condition} "
                           f"{r.level} ({what}): {why}")
        if len(frame) > _MAX_LISTED:
            details.append(f"... {len(frame) - _MAX_LISTED} more from the {what}")
    for r in bad_voxel.head(_MAX_LISTED).itertuples():
        why = r.problem or f"voxel {r.error_mm:.2f} mm in-plane, {r.slice_error:.2f} slices from the world position"
        details.append(f"study {r.study_id} series {r.series_id} instance {r.instance_number} (cached voxel): {why}")
    return details


def _point_figures(ctx, coords: pd.DataFrame, drawn: list[tuple[int, int]], dicom: dict, volumes: dict,
                   notes: list[str]) -> list[str]:
    """The PNGs of the drawn series (points on the DICOM slice beside the cache's), their paths."""
    figures = []
    for study, series in drawn:
        key = (study, series)
        if key not in volumes:
            continue
        try:
            path = ctx.out / f"points_{_slug(volumes[key].description)}_{study}_{series}.png"
            rows = coords[(coords.study_id == study) & (coords.series_id == series)]
            plot_series_points(rows, dicom.get(key), volumes[key], path,
                               title=f"study {study} series {series} {volumes[key].description}")
            figures.append(str(path))
        except Exception as err:  # noqa: BLE001
            notes.append(f"figure of series {study}/{series} failed: {type(err).__name__}: {err}")
    return figures


def _unresolved(root: Path) -> tuple[int, pd.DataFrame]:
    """(how many label points coordinates_unresolved.csv lists, those whose label itself is wrong)."""
    path = Path(root) / UNRESOLVED_CSV
    try:
        frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as err:
        log.warning("%s not readable: %s", path, err)
        frame = pd.DataFrame()
    if frame.empty or "reason" not in frame.columns:
        return len(frame), frame.iloc[0:0]
    return len(frame), frame[[label_defect(r) for r in frame.reason]]


def _slug(text: str) -> str:
    return "".join(ch.lower() if ch.isalnum() else "_" for ch in str(text)).strip("_")


def _drawn_series(coords: pd.DataFrame, cache, rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """(study, series) of ``n`` random labelled studies per series type (their labelled series of that type)."""
    if n <= 0:
        return []
    types = cache.series.set_index(["study_id", "series_id"]).description.to_dict()
    keys = sorted({(int(a), int(b)) for a, b in zip(coords.study_id, coords.series_id)})
    out = []
    for kind in SERIES_TYPES:
        of_kind = [k for k in keys if types.get(k) == kind]
        studies = sorted({k[0] for k in of_kind})
        chosen = set(int(s) for s in rng.choice(studies, size=min(n, len(studies)), replace=False)) if studies else set()
        out += [k for k in of_kind if k[0] in chosen]
    return out


# ------------------------------------------------------------------------------------------ the image
def slice_through(volume, stack_index: int, world: np.ndarray):
    """The slice of the cached volume through ``world`` (LPS mm) in the plane of stack ``stack_index``, on that
    stack's pixel grid: ``(image [j, i], grid)``; the image is sampled (`SeriesVolume.sample`, raw values)."""
    from spine.data.grid import SamplingGrid

    stack = volume.stacks[stack_index]
    k = float(stack.world_to_index(np.asarray(world, dtype=np.float64))[2])
    origin = stack.index_to_world(np.array([0.0, 0.0, k]))
    nk, nj, ni = stack.shape
    grid = SamplingGrid(origin, stack.direction_lps.copy(), np.array([stack.spacing[0], stack.spacing[1], 1.0]),
                        (ni, nj, 1))
    values, _ = volume.sample(grid, normalise=False)
    return values[:, :, 0].T, grid


def dicom_slice(series, instance_number: int) -> np.ndarray | None:
    """The pixels [row, column] of one instance of a `DicomSeries` (None when no stack holds it)."""
    for stack in series.stacks:
        for k, number in enumerate(stack.instance_numbers):
            if number is not None and int(number) == int(instance_number):
                return np.asarray(stack.pixels[k], dtype=np.float32)
    return None


def plot_series_points(rows: pd.DataFrame, series, volume, path: Path, title: str = "") -> Path:
    """One PNG: per labelled instance of a series, its label points on the DICOM slice (left; ``series`` may be
    None) and the same points (their cached world positions) on the slice sampled from the cache through them
    (right), with each point's distance from that plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    instances = sorted(int(n) for n in rows.instance_number.unique())[:8]
    fig, axes = plt.subplots(len(instances), 2, figsize=(8, 4 * len(instances)), squeeze=False)
    for axis_row, number in zip(axes, instances):
        points = rows[rows.instance_number == number]
        names = [f"{_SHORT.get(_COND.get(c, c), c)} {lv}" for c, lv in zip(points.condition, points.level)]
        left, right = axis_row
        image = dicom_slice(series, number) if series is not None else None
        if image is not None:
            _show(left, image)
            _mark(left, points.x.to_numpy(float), points.y.to_numpy(float), names)
            left.set_title(f"DICOM instance {number}", fontsize=9)
        else:
            left.text(0.5, 0.5, "DICOM not available", ha="center", va="center", transform=left.transAxes)
            left.set_axis_off()
        world = points[WORLD].to_numpy(float)
        stack = points["stack"].dropna() if "stack" in points.columns else pd.Series([], dtype=float)
        if len(stack) and np.isfinite(world).all():
            image, grid = slice_through(volume, int(stack.iloc[0]), world.mean(axis=0))
            index = grid.world_to_index(world)
            _show(right, image)
            _mark(right, index[:, 0], index[:, 1], [f"{n} ({abs(d):.1f} mm off)" if abs(d) > 0.05 else n
                                                    for n, d in zip(names, index[:, 2])])
            right.set_title(f"cache, stack {int(stack.iloc[0])}, sampled through the points", fontsize=9)
        else:
            right.text(0.5, 0.5, "no cached voxel", ha="center", va="center", transform=right.transAxes)
            right.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _show(axis, image: np.ndarray) -> None:
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
    axis.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])


def _mark(axis, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    axis.scatter(x, y, s=40, facecolors="none", edgecolors="red", linewidths=1.2)
    for n, (xi, yi, name) in enumerate(zip(x, y, names)):  # alternate above and below: axial pairs lie close
        axis.annotate(name, (xi, yi), xytext=(4, -10 if n % 2 else 4), textcoords="offset points", color="yellow",
                      fontsize=7)


__all__ = ["check_label_positions", "check_left_right", "check_level_order", "dicom_slice", "level_order_problems",
           "named", "plot_series_points", "position_errors", "side_problems", "slice_through", "voxel_errors"]
