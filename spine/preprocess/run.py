"""The preprocessing run: every listed series -> its cached acquired stacks, then series.csv, coordinates.csv,
folds.csv.

One series is one job (`spine.preprocess.job.process_series`, a pure function of the job), run in a process pool
(`spine.preprocess.pool.execute`). A job never raises: a broken series becomes a row with status ``error`` and the
reason. A worker process that dies (segfault, out of memory) is detected; the series it held are retried one at a
time, and the one that kills its worker again is recorded as an error. Each stack file is written atomically and
the series' record (``.json``) last, so a run killed at any moment leaves only complete series, plus temporary
files that the next run deletes; a re-run skips complete series and redoes the rest (``overwrite=true`` redoes
everything listed). Series that failed are retried on every run (failures are cheap, and may have been
transient). The label points are resolved against the records (`spine.preprocess.coordinates`).

Progress and the summary are logged (``logging``, logger ``spine.preprocess.run``): the command line prints them
as ``[preprocess] ...`` (`spine.logs`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine import cache as layout
from spine.cache import COORDINATE_COLUMNS, FOLD_COLUMNS, SERIES_COLUMNS, cache_id, cache_params
from spine.io.tables import Listing, TableError, read_listing, read_train_labels
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.coordinates import label_coordinates, write_coordinates
from spine.preprocess.folds import make_folds
from spine.preprocess.job import Job, cached_record
from spine.preprocess.lock import writer_lock
from spine.preprocess.pool import execute
from spine.progress import progress

__all__ = ["Summary", "run"]

log = logging.getLogger(__name__)


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
    records: dict = field(default_factory=dict, repr=False)  # (study, series) -> the series' record

    @property
    def n_ok(self) -> int:
        return self.n_built + self.n_cached

    @property
    def exit_code(self) -> int:
        return 0 if self.n_ok > 0 else 1


def summary_dict(summary: Summary) -> dict:
    return {**{k: v for k, v in asdict(summary).items() if k != "records"}, "n_ok": summary.n_ok,
            "exit_code": summary.exit_code}


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
        log.info("%s", problem)
    jobs = shard_jobs(jobs, cfg.shard_of)
    train = None
    if "train" in cfg.splits:  # a train.csv or coordinates file that cannot be used stops the run before any work
        train = _train_labels(Path(cfg.data_dir)), label_coordinates(Path(cfg.data_dir)), listings.get("train")
    if not jobs:
        summary.message = f"nothing to process in {cfg.data_dir} (split={cfg.split})"
        log.info("%s", summary.message)
        return summary
    with writer_lock(root, cfg.shard_of):  # one writer per series (CacheBusyError for a second one)
        _process(cfg, jobs, root, params, summary)
        if cfg.shard_of is None:
            _write_series_csv(root, [summary.records[(j.study_id, j.series_id)] for j in jobs])
            _write_train_tables(cfg, root, train, summary)
    summary.seconds = time.perf_counter() - started
    _report(summary)
    if cfg.shard_of is not None:
        log.info("shard %s done: series.csv, coordinates.csv and folds.csv are written by a final run without shard "
                 "(same data_dir, cache_dir and split) once every shard has ended", cfg.shard)
    return summary


def shard_jobs(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    """Share K of N of the sorted jobs (every N-th, from the K-th): disjoint shares that together are every job,
    each a mix of studies and series types (so shards take about as long as each other)."""
    if shard is None:
        return jobs
    k, n = shard
    return jobs[k::n]


def _write_train_tables(cfg: PreprocessConfig, root: Path, train: tuple | None, summary: Summary) -> None:
    """coordinates.csv, coordinates_unresolved.csv and folds.csv from ``train`` = (checked train.csv or None,
    (usable, set-aside) label coordinates, train listing); without the train split, empty tables where none are."""
    if train is None:
        for name, columns in ((layout.COORDINATES_CSV, COORDINATE_COLUMNS), (layout.FOLDS_CSV, FOLD_COLUMNS)):
            if not (root / name).is_file():
                layout.write_csv(pd.DataFrame(columns=columns), root / name)
        return
    labels, coordinates, listing = train
    summary.n_coordinates = len(coordinates[0]) + len(coordinates[1])
    summary.n_coordinates_unresolved = write_coordinates(root, *coordinates, summary.records, listing)
    _write_folds(root, labels, Path(cfg.data_dir) / "train.csv", cfg)


def _process(cfg: PreprocessConfig, jobs: list[Job], root: Path, params: dict, summary: Summary) -> None:
    """Every job's record (cached or built) into ``summary.records``."""
    _write_cache_json(root, params, cfg)
    for job in jobs:  # temporary files of a killed run (of these series only: other shards may be writing theirs)
        layout.remove_partials(root / "volumes" / str(job.study_id), job.series_id)

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
    log.info("cache %s: %d series in %d studies (split=%s); %d already complete, %d to do with %d worker(s)",
             root, len(jobs), len({j.study_id for j in jobs}), cfg.split, len(records), len(todo), workers)
    with progress(len(todo), "preprocess", "series", enabled=cfg.progress) as bar:
        for record in execute(todo, workers):
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
    summary.records = records


def _write_cache_json(root: Path, params: dict, cfg: PreprocessConfig) -> None:
    path = root / layout.CACHE_JSON
    if path.is_file():
        return
    info = {"cache_id": root.name, "params": params, "data_dir": str(Path(cfg.data_dir).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    layout.write_text(json.dumps(info, indent=2), path)


def _write_series_csv(root: Path, records: list[dict]) -> None:
    """series.csv: this run's rows, plus the rows of earlier runs for series this run did not list."""
    frame = pd.DataFrame([{c: _cell(r.get(c)) for c in SERIES_COLUMNS} for r in records], columns=SERIES_COLUMNS)
    path = root / layout.SERIES_CSV
    old = _earlier_series_rows(path)
    if old is not None:
        keys = set(zip(frame.study_id, frame.series_id))
        old = old[[key not in keys for key in zip(old.study_id, old.series_id)]]
        frame = pd.concat([old, frame], ignore_index=True)
    frame = frame.sort_values(["study_id", "series_id"], key=lambda s: s.astype(np.int64), kind="stable")
    layout.write_csv(frame, path)


def _earlier_series_rows(path: Path) -> pd.DataFrame | None:
    """The rows an earlier run wrote to series.csv, None when there is none or it is damaged (then it is rewritten
    from this run's series, with a warning: the records of the others are still on disk)."""
    if not path.is_file():
        return None
    try:
        old = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        why = f"{type(err).__name__}: {err}"
    else:
        ids = pd.concat([old.get("study_id", pd.Series(dtype=str)), old.get("series_id", pd.Series(dtype=str))])
        if list(old.columns) == SERIES_COLUMNS and ids.str.fullmatch(r"\d+").all():
            return old
        why = "other columns or a non-integer id"
    log.warning("%s is damaged (%s): rewritten with the series of this run; re-run the other splits to list "
                "theirs again", path, " ".join(why.split())[:200])
    return None


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


def _write_folds(root: Path, labels: pd.DataFrame | None, train_path: Path, cfg: PreprocessConfig) -> None:
    """folds.csv from the checked train.csv ``labels``, written once (again only with overwrite=true): every
    later stage reuses it."""
    path = root / layout.FOLDS_CSV
    if labels is None:
        log.info("%s not found: folds.csv not written", train_path)
        return
    folds = make_folds(labels, cfg.n_folds, cfg.fold_seed)
    if path.is_file() and not cfg.overwrite:
        old = pd.read_csv(path)
        if set(old.study_id) != set(folds.study_id):
            log.info("%s kept as written earlier, but its studies differ from %s; rerun with overwrite=true to "
                     "redo the folds", path, train_path)
        return
    layout.write_csv(folds, path)


def _report(summary: Summary) -> None:
    rate = summary.n_studies / summary.seconds if summary.seconds else 0.0
    log.info("done in %.1f s: %d series in %d studies (%.2f studies/s); %d ok (%d built, %d already complete), "
             "%d error(s); read %.1f s, select %.1f s, write %.1f s (summed over workers); peak worker memory "
             "%.0f MB%s", summary.seconds, summary.n_series, summary.n_studies, rate, summary.n_ok, summary.n_built,
             summary.n_cached, summary.n_errors, summary.read_s, summary.select_s, summary.write_s,
             summary.peak_rss_mb, _coordinates_part(summary))
    for study, series, description, reason in summary.failures[:20]:
        log.info("  error %s/%s (%s): %s", study, series, description or "no description", reason)
    if len(summary.failures) > 20:
        log.info("  ... and %d more (see series.csv)", len(summary.failures) - 20)
    if summary.exit_code:
        log.info("no series could be processed")
    log.info("cache: %s", summary.cache_root)


def _coordinates_part(summary: Summary) -> str:
    if summary.n_coordinates is None:
        return ""
    unresolved = summary.n_coordinates_unresolved
    return (f"; {summary.n_coordinates} label coordinates, {unresolved} unresolved"
            + (f" (listed in {layout.UNRESOLVED_CSV})" if unresolved else ""))
