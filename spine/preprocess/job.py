"""One preprocessing job: one series folder -> its cached stacks and its record (``volumes/{study}/{series}.json``).

`process_series` is a pure function of its `Job` and never raises: a broken series becomes a record with status
``error`` and the reason. Each stack file is written atomically and the record last, so a job killed at any
moment leaves no record beside partial stack files. `cached_record` recognises a series complete from an earlier
run; `crash_record` is the record of a series whose worker process died.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spine import cache as layout
from spine.cache import NIFTI_HEADER_BYTES, format_triple
from spine.io.dicom import DicomSeries, SeriesReadError, read_series
from spine.preprocess.volume import VolumeError, ambiguous_instances, instance_geometry, make_volume

__all__ = ["Job", "cached_record", "crash_record", "process_series", "shorten"]



@dataclass(frozen=True)
class Job:
    """Everything one worker needs to turn one series folder into its cached stacks."""

    split: str
    study_id: int
    series_id: int
    description: str
    series_dir: str
    root: str  # cache-id folder
    min_slices: int
    max_gap_factor: float


def process_series(job: Job) -> dict:
    """Read one series, select its stacks and write each one; returns its record (status ok or error). Never
    raises."""
    root = Path(job.root)
    record = _base_record(job)
    record_file = layout.record_path(root, job.study_id, job.series_id)
    started = time.perf_counter()
    try:
        layout.remove_partials(record_file.parent, job.series_id)
        series = read_series(job.series_dir)
        ambiguous = ambiguous_instances(series)
        record["instances"] = {str(n): g.to_list() for n, g in instance_geometry(series, ambiguous).items()}
        record["ambiguous_instances"] = {str(n): count for n, count in ambiguous.items()}
        record.update(_stack_fields(series))
        read_done = time.perf_counter()
        try:
            volume = make_volume(series, job.description, min_slices=job.min_slices,
                                 max_gap_factor=job.max_gap_factor, series_id=job.series_id)
        except VolumeError:
            record["n_stacks"] = 0  # read, but no stack could be kept
            raise
        del series  # the kept stacks' pixels stay referenced by volume.stacks until the end of the job
        select_done = time.perf_counter()
        record_file.unlink(missing_ok=True)  # never an old record next to new stack files
        stacks = []
        for index, stack in enumerate(volume.stacks):
            path = layout.stack_path(root, job.study_id, job.series_id, index)
            dtype = layout.write_stack(stack, path)
            stacks.append({**layout.stack_record(stack, path.name), "dtype": np.dtype(dtype).name})
        _remove_stacks(root, job, keep=len(stacks))  # more stacks written by an earlier run
        irregular = [f"stack {n}: {s['irregular']}" for n, s in enumerate(stacks) if s["irregular"]]
        record.update(status="ok", reason=_join([*record.pop("_notes"), *volume.notes]), n_stacks=len(stacks),
                      shape="; ".join(format_triple(s.shape[::-1]) for s in volume.stacks),
                      spacing="; ".join(format_triple(s.spacing) for s in volume.stacks),
                      dtype="; ".join(s["dtype"] for s in stacks), irregular="; ".join(irregular), stacks=stacks,
                      intensity_range={layout.range_key(volume.percentiles): volume.intensity_range()})
        layout.write_text(json.dumps(record), record_file)
        record["timing"] = [read_done - started, select_done - read_done, time.perf_counter() - select_done]
    except (SeriesReadError, VolumeError) as exc:
        _record_error(record, str(exc), root, job)
    except Exception as exc:  # noqa: BLE001 - one bad series must never stop the run
        _record_error(record, f"unexpected {type(exc).__name__}: {exc}", root, job)
    record.pop("_notes", None)
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def crash_record(job: Job) -> dict:
    """The error record of a series whose worker process died while processing it."""
    record = _base_record(job)
    record.pop("_notes")
    record["reason"] = "the worker process died while processing this series (crash or out of memory)"
    return record


def cached_record(job: Job) -> dict | None:
    """The record of a complete series from an earlier run (same cache version and description, every stack
    file there with its full size and a NIfTI-1 header of the record's shape), else None: a series whose record
    or stack files are missing or damaged is rebuilt by the next run."""
    root = Path(job.root)
    try:
        record = json.loads(layout.record_path(root, job.study_id, job.series_id).read_text())
    except (OSError, ValueError):
        return None
    stacks = record.get("stacks") if isinstance(record, dict) else None
    if (not isinstance(stacks, list) or not stacks or record.get("status") != "ok"
            or record.get("version") != layout.CACHE_VERSION or record.get("description") != job.description):
        return None
    folder = layout.record_path(root, job.study_id, job.series_id).parent
    try:
        for stack in stacks:
            path, shape = folder / stack["file"], [int(v) for v in stack["shape_ijk"]]
            if path.stat().st_size != NIFTI_HEADER_BYTES + int(np.prod(shape)) * np.dtype(stack["dtype"]).itemsize:
                return None
            with open(path, "rb") as handle:  # the header: sizeof_hdr 348, magic "n+1", dim[1:4] the record's
                header = handle.read(NIFTI_HEADER_BYTES)
            little = header[:4] == (348).to_bytes(4, "little")
            if (not (little or header[:4] == (348).to_bytes(4, "big")) or header[344:348] != b"n+1\0"
                    or np.frombuffer(header[40:56], "<i2" if little else ">i2")[1:4].tolist() != shape):
                return None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    record["split"] = job.split
    return record


def shorten(text: str, limit: int = 90) -> str:
    """``text`` cut to ``limit`` characters, ending with ``...`` when cut (reasons quoted inside other reasons)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _base_record(job: Job) -> dict:
    return {"version": layout.CACHE_VERSION, "split": job.split, "study_id": job.study_id,
            "series_id": job.series_id, "description": job.description, "status": "error", "reason": "",
            "n_stacks": None, "n_slices": None, "n_skipped_files": None, "orig_shape": "", "orig_spacing": "",
            "shape": "", "spacing": "", "dtype": "", "irregular": "", "stacks": [], "instances": {},
            "_notes": []}


def _stack_fields(series: DicomSeries) -> dict:
    """What was read: every stack (n_stacks is replaced by the kept ones once the stacks are selected)."""
    skipped = series.skipped
    notes = []
    if skipped:
        listed = "; ".join(f"{Path(s.path).name}: {shorten(s.reason)}" for s in skipped[:5])
        notes.append(f"skipped {len(skipped)} file(s) ({listed}{'; ...' if len(skipped) > 5 else ''})")
    return {"n_stacks": len(series.stacks), "n_slices": sum(s.n_slices for s in series.stacks),
            "n_skipped_files": len(skipped),
            "orig_shape": "; ".join(format_triple(s.shape[::-1]) for s in series.stacks),
            "orig_spacing": "; ".join(format_triple(np.round(s.spacing, 4)) for s in series.stacks),
            "_notes": notes}


def _stack_files(root: Path, job: Job) -> list[tuple[int, Path]]:
    """(index, path) of the series' stack files on disk (``{series}_{n}.nii``)."""
    folder = layout.record_path(root, job.study_id, job.series_id).parent
    found = []
    for path in folder.glob(f"{int(job.series_id)}_*.nii") if folder.is_dir() else []:
        index = path.name[len(f"{int(job.series_id)}_"):-len(".nii")]
        if index.isdigit():
            found.append((int(index), path))
    return sorted(found)


def _remove_stacks(root: Path, job: Job, keep: int = 0) -> None:
    """Delete the series' stack files numbered ``keep`` and above."""
    for index, path in _stack_files(root, job):
        if index >= keep:
            path.unlink(missing_ok=True)


def _record_error(record: dict, reason: str, root: Path, job: Job) -> None:
    record.update(status="error", reason=_join([reason, *record.get("_notes", [])]), shape="", spacing="",
                  dtype="", irregular="", stacks=[])
    layout.record_path(root, job.study_id, job.series_id).unlink(missing_ok=True)  # first: never a stale "ok"
    _remove_stacks(root, job)


def _join(notes: list[str]) -> str:
    return "; ".join(n.replace("\n", " ") for n in notes if n)
