"""The preprocessing run: every listed series -> its cached acquired stacks, then series.csv, coordinates.csv,
folds.csv.

One series is one job (`process_series`, a pure function of the job), run in a process pool. A job never
raises: a broken series becomes a row with status ``error`` and the reason. A worker process that dies
(segfault, out of memory) is detected; the series it held are retried one at a time, and the one that kills
its worker again is recorded as an error. Each stack file is written atomically and the series' record
(``.json``) last, so a run killed at any moment leaves only complete series, plus temporary files that the next
run deletes; a re-run skips complete series and redoes the rest (``overwrite=true`` redoes everything listed).
Series that failed are retried on every run (failures are cheap, and may have been transient).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine.io.tables import Listing, TableError, read_coordinates, read_listing, read_train_labels
from spine.preprocess import cache as layout
from spine.preprocess.cache import (COORDINATE_COLUMNS, FOLD_COLUMNS, SERIES_COLUMNS, cache_id, cache_params,
                                    format_triple)
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.folds import make_folds
from spine.preprocess.volume import InstanceGeometry
from spine.procs import exit_with_parent
from spine.progress import progress

__all__ = ["Job", "Summary", "process_series", "run"]

log = logging.getLogger(__name__)
UNRESOLVED_CSV = "coordinates_unresolved.csv"  # label coordinates without a position, with the reason


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


@dataclass
class Summary:
    """What a run did; ``exit_code`` is 1 only if no listed series has a volume."""

    cache_root: str
    n_series: int = 0
    n_studies: int = 0
    n_built: int = 0
    n_cached: int = 0
    n_errors: int = 0
    seconds: float = 0.0
    read_s: float = 0.0  # reading and decoding the DICOM files, summed over workers
    select_s: float = 0.0  # choosing (and merging) the stacks
    write_s: float = 0.0  # writing the stack files and records
    peak_rss_mb: float = 0.0
    failures: list[tuple[int, int, str, str]] = field(default_factory=list)
    message: str = ""
    n_coordinates: int | None = None  # rows of train_label_coordinates.csv (None: train split not processed)
    n_coordinates_unresolved: int = 0  # of which without a position: listed in coordinates_unresolved.csv

    @property
    def n_ok(self) -> int:
        return self.n_built + self.n_cached

    @property
    def exit_code(self) -> int:
        return 0 if self.n_ok > 0 else 1


# ------------------------------------------------------------------------------------------ one series


def process_series(job: Job) -> dict:
    """Read one series, select its stacks and write each one; returns its record (status ok or error). Never
    raises."""
    from spine.io.dicom import SeriesReadError, read_series
    from spine.preprocess.volume import VolumeError, instance_geometry, make_volume

    root = Path(job.root)
    record = _base_record(job)
    record_file = layout.record_path(root, job.study_id, job.series_id)
    started = time.perf_counter()
    try:
        layout.remove_partials(record_file.parent, job.series_id)
        series = read_series(job.series_dir)
        record["instances"] = {str(n): g.to_list() for n, g in instance_geometry(series).items()}
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


def _base_record(job: Job) -> dict:
    return {"version": layout.CACHE_VERSION, "split": job.split, "study_id": job.study_id,
            "series_id": job.series_id, "description": job.description, "status": "error", "reason": "",
            "n_stacks": None, "n_slices": None, "n_skipped_files": None, "orig_shape": "", "orig_spacing": "",
            "shape": "", "spacing": "", "dtype": "", "irregular": "", "stacks": [], "instances": {},
            "_notes": []}


def _stack_fields(series) -> dict:
    """What was read: every stack (n_stacks is replaced by the kept ones once the stacks are selected)."""
    skipped = series.skipped
    notes = []
    if skipped:
        listed = "; ".join(f"{Path(s.path).name}: {_short(s.reason)}" for s in skipped[:5])
        notes.append(f"skipped {len(skipped)} file(s) ({listed}{'; ...' if len(skipped) > 5 else ''})")
    return {"n_stacks": len(series.stacks), "n_slices": sum(s.n_slices for s in series.stacks),
            "n_skipped_files": len(skipped),
            "orig_shape": "; ".join(format_triple(s.shape[::-1]) for s in series.stacks),
            "orig_spacing": "; ".join(format_triple(np.round(s.spacing, 4)) for s in series.stacks),
            "_notes": notes}


def _short(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


_NIFTI_HEADER_BYTES = 352  # NIfTI-1 single file: 348-byte header + 4-byte extension flag, then the voxels


def cached_record(job: Job) -> dict | None:
    """The record of a complete series from an earlier run (same cache version and description, every stack
    file there with its full size), else None."""
    root = Path(job.root)
    try:
        record = json.loads(layout.record_path(root, job.study_id, job.series_id).read_text())
    except (OSError, ValueError):
        return None
    stacks = record.get("stacks")
    if (record.get("status") != "ok" or record.get("version") != layout.CACHE_VERSION
            or record.get("description") != job.description or not isinstance(stacks, list) or not stacks):
        return None
    folder = layout.record_path(root, job.study_id, job.series_id).parent
    try:
        for stack in stacks:
            size = _NIFTI_HEADER_BYTES + int(np.prod(stack["shape_ijk"])) * np.dtype(stack["dtype"]).itemsize
            if (folder / stack["file"]).stat().st_size != size:
                return None
    except (OSError, KeyError, TypeError, ValueError):
        return None
    record["split"] = job.split
    return record


# ------------------------------------------------------------------------------------------- the pool


def _init_worker(parent: int, threads: int) -> None:
    """Initializer of a pool worker: it ends with the main process ``parent`` (even a SIGKILLed one), ``threads``
    ITK threads."""
    exit_with_parent(parent)
    _set_threads(threads)


def _set_threads(threads: int) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, threads))


def _crash_record(job: Job) -> dict:
    record = _base_record(job)
    record.pop("_notes")
    record["reason"] = "the worker process died while processing this series (crash or out of memory)"
    return record


def execute(jobs: list[Job], workers: int, threads: int):
    """Yield the record of every job, in completion order. ``workers=1`` runs them in this process."""
    if workers <= 1:
        _set_threads(threads)
        for job in jobs:
            yield process_series(job)
        return
    pending = deque(jobs)
    while pending:
        suspects: list[Job] = []
        pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(os.getpid(), threads))
        running: dict = {}
        try:
            while pending or running:
                while pending and len(running) < workers:  # never more queued than running: on a
                    job = pending.popleft()                 # crash, the suspects are exactly these
                    running[pool.submit(process_series, job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    record = future.result()  # BrokenProcessPool if a worker died
                    running.pop(future)
                    yield record
        except BrokenProcessPool:
            suspects = list(running.values())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for job in suspects:  # each alone, so that only the culprit is blamed
            yield _run_alone(job, threads)


def _run_alone(job: Job, threads: int) -> dict:
    with ProcessPoolExecutor(1, initializer=_init_worker, initargs=(os.getpid(), threads)) as pool:
        try:
            return pool.submit(process_series, job).result()
        except BrokenProcessPool:
            return _crash_record(job)


# ---------------------------------------------------------------------------------------------- run


def _log(message: str) -> None:
    print(f"[preprocess] {message}", file=sys.stderr, flush=True)


def list_jobs(cfg: PreprocessConfig, root: Path) -> tuple[list[Job], list[str], dict[str, Listing]]:
    """One job per usable row of the chosen splits' *_series_descriptions.csv; problems with the listings; and
    the listings read, per split.

    Rows whose ids are not integers are skipped (`spine.io.tables.read_listing` logs each with its reason);
    descriptions are the series types they name (``'sagittal t2'`` -> ``'Sagittal T2/STIR'``).
    """
    data_dir = Path(cfg.data_dir)
    jobs, problems, listings = [], [], {}
    for split in cfg.splits:
        listing = data_dir / f"{split}_series_descriptions.csv"
        if not listing.is_file():
            problems.append(f"{listing} not found")
            continue
        try:
            listings[split] = read_listing(listing)
        except TableError as exc:
            problems.append(str(exc))
            continue
        for row in listings[split].series.itertuples(index=False):
            study, series, description = int(row.study_id), int(row.series_id), row.description
            jobs.append(Job(split, study, series, description,
                            str(data_dir / f"{split}_images" / str(study) / str(series)), str(root),
                            cfg.min_slices, cfg.max_gap_factor))
    jobs.sort(key=lambda j: (j.study_id, j.series_id))
    return jobs, problems, listings


def run(cfg: PreprocessConfig) -> Summary:
    """Preprocess every series of the chosen splits into ``cfg.cache_dir/<cache id>``; see the module docstring."""
    started = time.perf_counter()
    params = cache_params(cfg.min_slices, cfg.max_gap_factor)
    root = Path(cfg.cache_dir) / cache_id(params)
    summary = Summary(str(root))
    jobs, problems, listings = list_jobs(cfg, root)
    for problem in problems:
        _log(problem)
    if "train" in cfg.splits:  # a train.csv or coordinates file that cannot be used stops the run before any work
        labels, coordinates = _train_labels(Path(cfg.data_dir)), _label_coordinates(Path(cfg.data_dir))
    if not jobs:
        summary.message = f"nothing to process in {cfg.data_dir} (split={cfg.split})"
        _log(summary.message)
        return summary
    root.mkdir(parents=True, exist_ok=True)
    _write_cache_json(root, params, cfg)
    for study in sorted({j.study_id for j in jobs}):  # temporary files of a killed run
        layout.remove_partials(root / "volumes" / str(study))

    records: dict[tuple[int, int], dict] = {}
    todo = []
    for job in jobs:
        record = None if cfg.overwrite else cached_record(job)
        if record is None:
            todo.append(job)
        else:
            records[(job.study_id, job.series_id)] = record
    summary.n_cached = len(records)
    workers = cfg.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(todo)))
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // workers)
    _log(f"cache {root}: {len(jobs)} series in {len({j.study_id for j in jobs})} studies "
         f"(split={cfg.split}); {len(records)} already complete, {len(todo)} to do with {workers} worker(s)")
    with progress(len(todo), "preprocess", "series", enabled=cfg.progress) as bar:
        for record in execute(todo, workers, threads):
            records[(record["study_id"], record["series_id"])] = record
            summary.peak_rss_mb = max(summary.peak_rss_mb, record.get("peak_rss_mb", 0.0))
            if record["status"] == "ok":
                summary.n_built += 1
                read_s, select_s, write_s = record.get("timing", (0, 0, 0))
                summary.read_s += read_s
                summary.select_s += select_s
                summary.write_s += write_s
            bar.update()

    ordered = [records[(j.study_id, j.series_id)] for j in jobs]
    summary.n_series = len(ordered)
    summary.n_studies = len({j.study_id for j in jobs})
    failures = [r for r in ordered if r["status"] != "ok"]
    summary.n_errors = len(failures)
    summary.failures = [(r["study_id"], r["series_id"], r["description"], r["reason"]) for r in failures]
    _write_series_csv(root, ordered)
    if "train" in cfg.splits:
        summary.n_coordinates = len(coordinates[0]) + len(coordinates[1])
        summary.n_coordinates_unresolved = _write_coordinates(root, *coordinates, records, listings.get("train"))
        _write_folds(root, labels, Path(cfg.data_dir) / "train.csv", cfg)
    else:
        for name, columns in (("coordinates.csv", COORDINATE_COLUMNS), ("folds.csv", FOLD_COLUMNS)):
            if not (root / name).is_file():
                layout.write_csv(pd.DataFrame(columns=columns), root / name)
    summary.seconds = time.perf_counter() - started
    _report(summary)
    return summary


def _write_cache_json(root: Path, params: dict, cfg: PreprocessConfig) -> None:
    path = root / "cache.json"
    if path.is_file():
        return
    info = {"cache_id": root.name, "params": params, "data_dir": str(Path(cfg.data_dir).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    layout.write_text(json.dumps(info, indent=2), path)


def _write_series_csv(root: Path, records: list[dict]) -> None:
    """series.csv: this run's rows, plus the rows of earlier runs for series this run did not list."""
    frame = pd.DataFrame([{c: _cell(r.get(c)) for c in SERIES_COLUMNS} for r in records], columns=SERIES_COLUMNS)
    path = root / "series.csv"
    if path.is_file():
        old = pd.read_csv(path, keep_default_na=False, dtype=str)
        if list(old.columns) == SERIES_COLUMNS:
            keys = set(zip(frame.study_id, frame.series_id))
            old = old[[key not in keys for key in zip(old.study_id, old.series_id)]]
            frame = pd.concat([old, frame], ignore_index=True)
    frame = frame.sort_values(["study_id", "series_id"], key=lambda s: s.astype(np.int64), kind="stable")
    layout.write_csv(frame, path)


def _cell(value) -> str:
    """A series.csv cell as text: None -> empty, integral numbers without a decimal point."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return str(value)


def _train_labels(data_dir: Path) -> pd.DataFrame | None:
    """train.csv checked (`read_train_labels`: raises TableError), None when there is none."""
    path = data_dir / "train.csv"
    return read_train_labels(path) if path.is_file() else None


def _label_coordinates(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train_label_coordinates.csv: (usable rows, rows set aside with a reason); empty without the file."""
    path = data_dir / "train_label_coordinates.csv"
    if path.is_file():
        return read_coordinates(path)
    empty = pd.DataFrame(columns=["line", *COORDINATE_COLUMNS[:7]])
    return empty, empty.assign(reason=pd.Series(dtype=str))


def _write_coordinates(root: Path, labels: pd.DataFrame, rejected: pd.DataFrame,
                       records: dict[tuple[int, int], dict], listing: Listing | None = None) -> int:
    """coordinates.csv: every usable row of train_label_coordinates.csv, plus world LPS mm, the kept stack
    holding the instance and the voxel (i, j, k) in it (empty / NaN where unresolved, or where the instance is
    in no kept stack: then only the world position); coordinates_unresolved.csv: the rows without a world position, the ``rejected``
    ones included, each with its reason, in file order; ``listing`` (train's) names the skipped listing rows of
    series not listed. Returns how many rows that file lists."""
    labels = labels.reset_index(drop=True)
    world, stack, voxel, reasons = _resolve_coordinates(labels, records, listing)
    out = labels.drop(columns="line")
    out[["world_x", "world_y", "world_z"]] = world
    out["stack"] = pd.array([None if np.isnan(v) else int(v) for v in stack], dtype="Int64")
    out[["voxel_i", "voxel_j", "voxel_k"]] = voxel
    layout.write_csv(out, root / "coordinates.csv")
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


def _resolve_coordinates(labels: pd.DataFrame, records: dict[tuple[int, int], dict], listing: Listing | None = None):
    """(world (n, 3), stack (n,), voxel (n, 3), reason per row: None where the instance was found) of checked
    coordinates; stack and voxel are NaN where the instance is in no kept stack."""
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
        slices = _slices_of(record) if record["status"] == "ok" else {}
        for index in rows:
            number = int(labels.at[index, "instance_number"])
            geometry = instances.get(number)
            if geometry is None:
                reasons[index] = (f"instance {number} not in series {series}" if instances else
                                  f"series {series} could not be read ({_short(record.get('reason', ''))})")
                continue
            x, y = float(labels.at[index, "x"]), float(labels.at[index, "y"])
            world[index] = geometry.pixel_to_world(x, y)
            if number in slices:
                n, k = slices[number]
                found = _stack_voxel(record["stacks"][n], k, geometry, x, y, world[index])
                if found is not None:
                    stack[index], voxel[index] = n, found
    return world, stack, voxel, reasons


def _slices_of(record: dict) -> dict[int, tuple[int, int]]:
    """InstanceNumber -> (kept stack, slice k in it) of an ok record (first one wins)."""
    table: dict[int, tuple[int, int]] = {}
    for n, stack in enumerate(record.get("stacks", [])):
        for k, number in enumerate(stack["instance_numbers"]):
            if number is not None:
                table.setdefault(int(number), (n, k))
    return table


def _stack_voxel(stack: dict, k: int, geometry: InstanceGeometry, x: float, y: float,
                 world: np.ndarray) -> np.ndarray | None:
    """Voxel (i, j, k) of DICOM pixel (x, y) of an instance that is slice k of a cached stack (its record
    ``stack``): exactly (x, y, k) when the slice has the instance's own geometry; else (a slice merged from a
    smaller stack onto this one's pixel grid) the point projected into the slice, if it lies within half a
    slice step of it (None otherwise)."""
    ipp = np.asarray(stack["ipp"][k], dtype=np.float64)
    r, c = np.asarray(stack["r"], dtype=np.float64), np.asarray(stack["c"], dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in stack["pixel_spacing"])
    own = (np.allclose(ipp, geometry.ipp, rtol=0, atol=1e-9) and np.allclose(r, geometry.r, rtol=0, atol=1e-9)
           and np.allclose(c, geometry.c, rtol=0, atol=1e-9) and row_spacing == geometry.row_spacing
           and col_spacing == geometry.col_spacing)
    if own:
        return np.array([x, y, float(k)])
    normal = np.cross(r, c)
    ipps = np.asarray(stack["ipp"], dtype=np.float64)
    step = float(np.median(np.diff(ipps @ normal))) if len(ipps) > 1 else 1.0
    offset = world - ipp
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


def _write_folds(root: Path, labels: pd.DataFrame | None, train_path: Path, cfg: PreprocessConfig) -> None:
    """folds.csv from the checked train.csv ``labels``, written once (again only with overwrite=true): every
    later stage reuses it."""
    path = root / "folds.csv"
    if labels is None:
        _log(f"{train_path} not found: folds.csv not written")
        return
    folds = make_folds(labels, cfg.n_folds, cfg.fold_seed)
    if path.is_file() and not cfg.overwrite:
        old = pd.read_csv(path)
        if set(old.study_id) != set(folds.study_id):
            _log(f"{path} kept as written earlier, but its studies differ from {train_path}; "
                 f"rerun with overwrite=true to redo the folds")
        return
    layout.write_csv(folds, path)


def _report(summary: Summary) -> None:
    rate = summary.n_studies / summary.seconds if summary.seconds else 0.0
    _log(f"done in {summary.seconds:.1f} s: {summary.n_series} series in {summary.n_studies} studies "
         f"({rate:.2f} studies/s); {summary.n_ok} ok ({summary.n_built} built, {summary.n_cached} already "
         f"complete), {summary.n_errors} error(s); read {summary.read_s:.1f} s, select "
         f"{summary.select_s:.1f} s, write {summary.write_s:.1f} s (summed over workers); "
         f"peak worker memory {summary.peak_rss_mb:.0f} MB{_coordinates_part(summary)}")
    for study, series, description, reason in summary.failures[:20]:
        _log(f"  error {study}/{series} ({description or 'no description'}): {reason}")
    if len(summary.failures) > 20:
        _log(f"  ... and {len(summary.failures) - 20} more (see series.csv)")
    if summary.exit_code:
        _log("no series could be processed")
    _log(f"cache: {summary.cache_root}")


def _coordinates_part(summary: Summary) -> str:
    if summary.n_coordinates is None:
        return ""
    unresolved = summary.n_coordinates_unresolved
    return (f"; {summary.n_coordinates} label coordinates, {unresolved} unresolved"
            + (f" (listed in {UNRESOLVED_CSV})" if unresolved else ""))


def summary_dict(summary: Summary) -> dict:
    return {**asdict(summary), "n_ok": summary.n_ok, "exit_code": summary.exit_code}
