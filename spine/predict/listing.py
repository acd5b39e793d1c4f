"""What to predict: the studies and series folders of ``<split>_series_descriptions.csv``, and the rows to write.

The listing is read by the validated table reader of training (:func:`spine.io.tables.read_listing`); rows it
skips and descriptions it maps become per-study notes. Studies only the sample submission names get their
series folders typed from the DICOM headers (`unlisted_series`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pydicom

from spine.constants import SERIES_TYPES, parse_row_id, series_type, study_row_ids
from spine.io import tables
from spine.predict.study import Issue, PredictError

__all__ = ["read_listing", "read_listing_notes", "row_order", "unlisted_series"]

log = logging.getLogger(__name__)


def read_listing(data_dir, split: str = "test") -> tuple[list[int], dict[int, dict[str, list[Path]]]]:
    """Studies of ``<split>_series_descriptions.csv`` in order of first appearance, and per study its series
    folders by series type in ascending series_id. Rows whose ids are not integers are skipped, with a logged
    reason; descriptions in another case or spacing, and variants (``'Sagittal T2'``), name their series type.
    Raises PredictError when the listing is missing or unusable."""
    studies, series, _ = read_listing_notes(data_dir, split)
    return studies, series


def read_listing_notes(data_dir, split: str) -> tuple[list[int], dict[int, dict[str, list[Path]]],
                                                      dict[int, list[Issue]]]:
    """`read_listing` and, per study, notes on its listing rows (rows skipped, descriptions mapped)."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}_series_descriptions.csv"
    if not path.is_file():
        raise PredictError(f"{path} not found (data_dir must be an RSNA-layout folder)")
    try:
        listing = tables.read_listing(path)
    except tables.TableError as exc:
        raise PredictError(str(exc)) from None
    images = data_dir / f"{split}_images"
    series: dict[int, dict[str, list[Path]]] = {s: {} for s in listing.studies}
    for row in listing.series.sort_values("series_id", kind="stable").itertuples(index=False):
        series[int(row.study_id)].setdefault(row.description, []).append(
            images / str(int(row.study_id)) / str(int(row.series_id)))
    return listing.studies, series, _listing_notes(listing)


def _listing_notes(listing: tables.Listing) -> dict[int, list[Issue]]:
    """Per study: its skipped listing rows and its mapped descriptions, as notes (the answer is unaffected)."""
    notes: dict[int, list[Issue]] = {}
    for study in listing.studies:
        skipped = listing.skipped_of(study)
        if skipped:
            notes.setdefault(study, []).append(Issue("listing rows skipped", "; ".join(skipped), "note"))
    mapped = listing.series[listing.series.written != listing.series.description]
    for study, rows in mapped.groupby("study_id", sort=False):
        detail = "; ".join(sorted({f"{w!r} read as {d!r}" for w, d in zip(rows.written, rows.description)
                                   if d in SERIES_TYPES}))
        if detail:
            notes.setdefault(int(study), []).append(Issue("series description mapped", detail, "note"))
    return notes


def unlisted_series(study_dir: Path) -> dict[str, list[Path]]:
    """Series folders of a study missing from the listing, typed by the SeriesDescription of their files."""
    out: dict[str, list[Path]] = {}
    if not study_dir.is_dir():
        return out
    try:
        folders = sorted((p for p in study_dir.iterdir() if p.is_dir()),
                         key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    except OSError as exc:  # an unreadable study folder: the study gets the priors, with a reason in the log
        log.warning(f"{study_dir} cannot be listed ({exc}): its series are unknown")
        return out
    for folder in folders:
        try:
            files = sorted(folder.iterdir())[:5]
        except OSError as exc:
            log.warning(f"{folder} cannot be listed ({exc}): skipped")
            continue
        for path in files:
            try:
                description = series_type(str(pydicom.dcmread(path, stop_before_pixels=True).get(
                    "SeriesDescription", "")))
            except Exception:  # noqa: BLE001
                continue
            if description in SERIES_TYPES:
                out.setdefault(description, []).append(folder)
                break
    return out


def row_order(studies: list[int], sample: Path | None) -> tuple[list[str], list[int]]:
    """Row ids to write, in order (the sample submission's, then every other row of every study), and the
    studies to predict (the listing's, then the sample submission's extra ones)."""
    rows: list[str] = []
    extra: list[int] = []
    if sample is not None and sample.is_file():
        try:
            ids = pd.read_csv(sample, usecols=["row_id"]).row_id.astype(str).str.strip()
        except Exception as exc:  # noqa: BLE001 - the listing alone still says what to write
            log.warning(f"{sample} unreadable ({exc}); rows in listing order")
            ids = pd.Series([], dtype=str)
        rows = list(dict.fromkeys(ids))
        known = set(studies)
        for rid in rows:
            try:
                study = parse_row_id(rid)[0]
            except ValueError:
                continue
            if study not in known:
                known.add(study)
                extra.append(study)
    everyone = [*studies, *extra]
    have = set(rows)
    rows += [rid for s in everyone for rid in study_row_ids(s) if rid not in have]
    return rows, everyone
