"""A study's volumes for inference: `SeriesVolume` per series type, from a preprocessing cache or from DICOM.

`load_volumes` builds each series type's volume with the code of training: ``read_series`` + ``make_volume``
with the options of the cache the runs were trained on (``volume_options`` of the run's cache.json), i.e. the
stacks the cache would hold; nothing is resampled until a model input is sampled from them. Several series of
one type: the first one (ascending series_id) that gives a volume. With a preprocessing cache made with the
same options, its memory-mapped stacks are used instead. `iterate_volumes` builds them ahead in worker
processes. Nothing a study holds raises: what went wrong becomes an `Issue`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from spine.cache import Cache, volume_options
from spine.data.volume import SeriesVolume
from spine.io.dicom import read_series
from spine.predict.study import Issue, first_lines
from spine.preprocess.volume import make_volume
from spine.procs import worker_pool

__all__ = ["iterate_volumes", "load_volumes", "open_cache"]

_CACHES: dict[str, Cache] = {}


def open_cache(root: str) -> Cache:
    """The preprocessing cache at ``root``, opened once per process."""
    if root not in _CACHES:
        _CACHES[root] = Cache.open(root)
    return _CACHES[root]


def load_volumes(study_id: int, series: dict[str, Sequence], descriptions: Sequence[str], options: dict | None = None,
                 cache_root: str | None = None) -> tuple[dict[str, SeriesVolume | None], list[Issue]]:
    """The study's volume of each series type in ``descriptions`` (None where no series of that type gives one)
    and the issues met.

    ``series``: series description -> series folders, in the order to try them (ascending series_id).
    ``options``: ``min_slices``, ``max_gap_factor`` of ``make_volume`` (``volume_options`` of the runs'
    training cache; its defaults when None). ``cache_root``: a preprocessing cache whose volumes are used where it
    has the study's series and was made with ``options``. Never raises for a study's content: unreadable series
    become None with an issue. A picklable function of plain arguments, so that worker processes can run it.
    """
    options = volume_options(options or {})
    volumes: dict[str, SeriesVolume | None] = {}
    issues: list[Issue] = []
    cache = None
    if cache_root:
        try:
            cache = open_cache(cache_root)
        except Exception as exc:  # noqa: BLE001 - a bad cache only costs speed
            issues.append(Issue("cache unusable", first_lines(exc), "note"))
        if cache is not None and cache.volume_options() != options:
            cache = None  # made with other options than the runs' training cache: build from DICOM
    for description in dict.fromkeys(descriptions):
        volume = None if cache is None else _from_cache(cache, int(study_id), description, issues)
        if volume is None:
            volume = _from_dicom(description, [str(p) for p in series.get(description, [])], options, issues)
        elif volume.notes:
            issues.append(_notes_issue(volume, description))
        volumes[description] = volume
    unique, seen = [], set()  # a folder listed under several types reports its skipped files once
    for issue in issues:
        if (issue.kind, issue.detail) not in seen:
            seen.add((issue.kind, issue.detail))
            unique.append(issue)
    return volumes, unique


def _from_dicom(description: str, folders: list[str], options: dict, issues: list[Issue]) -> SeriesVolume | None:
    """The first of ``folders`` that gives a volume; what went wrong with the others appended to ``issues``."""
    if not folders:
        issues.append(Issue(f"missing {description}", "no such series listed"))
        return None
    failures, volume = [], None
    for folder in folders:
        name = Path(folder).name
        try:
            dicom = read_series(folder)
            volume = make_volume(dicom, description, series_id=int(name) if name.isdigit() else None, **options)
        except Exception as exc:  # noqa: BLE001 - the next series of the type may do
            text = str(exc).replace(str(Path(folder)), name)  # no long paths in the log
            failures.append(f"series {name}: {first_lines(text)}")
            continue
        skipped = getattr(dicom, "skipped", [])
        del dicom  # the pixels of the files the volume left out go now; the volume keeps its stacks
        if skipped:
            first = skipped[0]
            issues.append(Issue("skipped files", f"{description} series {name}: {len(skipped)} left out, e.g. "
                                f"{Path(first.path).name}: {first_lines(first.reason, 80)}", "note"))
        if volume.notes:  # what the stack selection left out or merged: the input was altered
            issues.append(_notes_issue(volume, description, name))
        break
    if failures and volume is not None:
        issues.append(Issue(f"unusable {description} series", "; ".join(failures)
                            + f"; used series {volume.series_id}", "note"))
    elif failures:
        issues.append(Issue(f"missing {description}", "; ".join(failures)))
    return volume


def _notes_issue(volume: SeriesVolume, description: str, name: str | None = None) -> Issue:
    name = name if name is not None else str(volume.series_id)
    return Issue("volume notes", f"{description} series {name}: {first_lines('; '.join(volume.notes), 240)}", "note")


def _from_cache(cache: Cache, study_id: int, description: str, issues: list[Issue]) -> SeriesVolume | None:
    """The cache's volume of the study's first ok series of the type (memory-mapped), None to read DICOM (with a
    note in ``issues`` when the cache has the series but cannot load it)."""
    try:
        ids = cache.series_of(study_id, description)
        return cache.load_volume(study_id, ids[0]) if ids else None
    except Exception as exc:  # noqa: BLE001 - a bad cache entry only costs speed: fall back to the DICOM files
        issues.append(Issue("cache unusable", f"{description}: {first_lines(exc, 400)}", "note"))  # names the file
        return None


# ------------------------------------------------------------------------------------- worker processes
def iterate_volumes(studies: list[int], series: dict, descriptions: Sequence[str], options: dict | None,
                    cache_root: str | None, workers: int) -> Iterator[tuple[int, dict, list[Issue], float]]:
    """(study, volumes, issues, seconds) of `load_volumes` in study order; with ``workers`` > 0 built ahead in
    worker processes. Never raises for a study: a failure is a fatal issue.

    Workers are forked like torch's DataLoader workers (they only read DICOM and select stacks, no torch). A
    worker that dies (out of memory) breaks the pool: a new pool builds the awaited study alone, and if that
    dies too, the study gets the priors. The main process never builds a volume that killed a worker.
    Studies the cache holds are loaded here: a cached series is memory-mapped and costs nothing to open, while
    sending it back from a worker would pickle (read and copy) every stack; the others go to the workers.
    """
    args = (descriptions, options, cache_root)
    cached = _cached_studies(cache_root)
    if workers <= 0 or cached.issuperset(studies):
        for study in studies:
            yield _load_here(study, series, args)
        return
    ahead = [s for s in studies if s not in cached]  # the studies the workers build, in order
    state: dict = {"pool": worker_pool(workers), "pending": {}}
    try:
        for study in studies:
            if study in cached:
                yield _load_here(study, series, args)
                continue
            i = ahead.index(study)
            result = None
            for alone in (False, True):
                pool, pending = state["pool"], state["pending"]
                try:
                    for later in ahead[i: i + (1 if alone else 2 * workers + 1)]:
                        if later not in pending:
                            pending[later] = pool.submit(_timed_load, later, series.get(later, {}), *args)
                    result = (study, *pending.pop(study).result())
                    break
                except BrokenProcessPool:  # a worker died, on this study or one built ahead: retry it alone
                    state["pool"].shutdown(wait=False, cancel_futures=True)
                    state["pool"], state["pending"] = worker_pool(workers), {}
                except Exception as exc:  # noqa: BLE001
                    result = (study, {}, [_failed(exc)], 0.0)
                    break
            if result is None:
                result = (study, {}, [Issue("volumes failed", "the worker process building its volumes died "
                                            "(out of memory?)", "fatal")], 0.0)
            yield result
    finally:
        state["pool"].shutdown(wait=False, cancel_futures=True)


def _cached_studies(cache_root: str | None) -> set[int]:
    """The studies with ok series in the cache at ``cache_root`` (none without one, or if it or its series.csv
    cannot be read: `load_volumes` then reports why, and reads the DICOM)."""
    if not cache_root:
        return set()
    try:
        series = open_cache(cache_root).series
    except Exception:  # noqa: BLE001 - reported per study by load_volumes
        return set()
    return {int(s) for s in series.study_id[series.status == "ok"]}


def _load_here(study: int, series: dict, args: tuple) -> tuple[int, dict, list[Issue], float]:
    try:
        return (study, *_timed_load(study, series.get(study, {}), *args))
    except Exception as exc:  # noqa: BLE001 - never raises for a study: a failure is a fatal issue
        return (study, {}, [_failed(exc)], 0.0)


def _failed(exc: Exception) -> Issue:
    return Issue("volumes failed", f"{type(exc).__name__}: {first_lines(exc)}", "fatal")


def _timed_load(study, series, descriptions, options, cache_root) -> tuple[dict, list[Issue], float]:
    started = time.perf_counter()
    volumes, issues = load_volumes(study, series, descriptions, options, cache_root)
    return volumes, issues, time.perf_counter() - started
