"""The competition's CSV tables, read with validation: one clear line for what cannot be used, nothing else lost.

- `read_csv_checked`: any CSV; a missing, binary or unparsable file is a `TableError` (a ValueError) whose
  message is one line naming the file.
- `labels_to_long`: train.csv-format labels -> one row per (study, condition, level), the metric's input.
- `read_train_labels`: ``train.csv``, checked with the metric's rules (`labels_to_long`:
  every label column present, grades in ``SEVERITIES`` or empty) plus integer study ids, one row per study
  (identical repeated rows are kept once with a warning, differing ones refused).
- `read_listing`: a ``*_series_descriptions.csv``; rows whose ids are not integers are skipped with a reason
  (`Listing.skipped`), descriptions are mapped to their series type (`spine.constants.canonical_description`).
- `read_coordinates`: ``train_label_coordinates.csv``; rows with a non-integer id or instance number, a
  non-numeric x / y, or a condition or level that names none of the competition's are set aside with a reason;
  unambiguous variants of the names (case, spaces, ``L1-L2``, ``spinal_canal_stenosis``) are mapped to the
  competition's spelling, with a warning.

Skipped rows name their line in the file (the header is line 1).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import (
    CONDITION_NAMES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVELS,
    SEVERITIES,
    canonical_condition,
    canonical_description,
    canonical_level,
    row_id,
    series_type,
)
from spine.errors import InputError

__all__ = ["COORDINATE_INPUT_COLUMNS", "LISTING_COLUMNS", "Listing", "TableError", "labels_to_long", "read_coordinates",
           "read_csv_checked", "read_listing", "read_train_labels"]

log = logging.getLogger(__name__)

LISTING_COLUMNS = ("study_id", "series_id", "series_description")
COORDINATE_INPUT_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
_SNIFF_BYTES = 8192  # a NUL byte in the first this many bytes: not a text file
_MAX_LOGGED = 10  # skipped rows logged one by one, then a count
_INTEGER = re.compile(r"\+?(\d+)(?:\.0*)?")  # 1001, also 1001.0 (a column that once held a NaN)
_MAX_ID = 2**63 - 1  # ids and instance numbers are int64, never negative
_LISTING_SERIES_COLUMNS = ["study_id", "series_id", "description", "written", "line"]
_SKIPPED_COLUMNS = ["line", "study_id", "series_id", "reason"]
_COLUMN_KEYS: tuple[tuple[str, str], ...] = tuple((c, lv) for c in CONDITIONS for lv in LEVELS)  # LABEL_COLUMNS


class TableError(InputError, ValueError):
    """A table that cannot be used at all; the message is one line naming the file and why (exit code 2)."""


def _one_line(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quoted(value: object) -> str:
    return repr(_one_line(value, 40))


# -------------------------------------------------------------------------------------------- any CSV
def read_csv_checked(path: str | Path, what: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv(path, **kwargs)``; a file that is missing, binary or not parsable raises `TableError`."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as err:
        raise TableError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if b"\x00" in head:
        raise TableError(f"{what} {path} is not a CSV text file (binary content)")
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise TableError(f"cannot read {what} {path}: {type(err).__name__}: {_one_line(err)}") from None


def _require_columns(frame: pd.DataFrame, columns, what: str, path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TableError(f"{what} {path}: missing column(s) {', '.join(missing)} "
                         f"(has {', '.join(map(str, frame.columns[:8]))}{', ...' if len(frame.columns) > 8 else ''})")


def _integer(value: object) -> int | None:
    """The integer written (text, int or integral float), of any size or sign, else None.

    Text ``'N.0'`` is read by dropping the ``.0`` (never through float, which would round ids beyond 2**53).
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) and float(value).is_integer() else None
    match = _INTEGER.fullmatch(value.strip()) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def _as_int(value: object) -> int | None:
    """An id or instance number as written, if it is an integer in 0..2**63-1 (int64), else None."""
    number = _integer(value)
    return number if number is not None and 0 <= number <= _MAX_ID else None


def _as_float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _id_problem(name: str, value: object) -> str:
    """Why ``value`` is not a usable id (`_as_int` gave None): missing, not an integer, or out of range."""
    text = "" if value is None else str(value).strip()
    if not text:
        return f"no {name}"
    if _integer(value) is not None:
        return f"{name} {_quoted(value)} is out of range (0..{_MAX_ID})"
    return f"{name} {_quoted(value)} is not an integer"


# ------------------------------------------------------------------------------------------- train.csv
def _study_key(study_id: object) -> int | str:
    """``study_id`` as used in row ids: an int where it is integral (1001.0 -> 1001), else the string."""
    if isinstance(study_id, (int, np.integer)):
        return int(study_id)
    if isinstance(study_id, (float, np.floating)) and float(study_id).is_integer():
        return int(study_id)
    if isinstance(study_id, str) and study_id.strip():
        return study_id.strip()
    raise ValueError(f"labels: invalid study_id {study_id!r}")


def labels_to_long(labels: pd.DataFrame) -> pd.DataFrame:
    """train.csv-format labels -> one row per (study, condition, level).

    Columns: ``row_id, study_id, condition, level, severity`` where severity is the float index 0..2 into
    ``SEVERITIES`` or NaN where the label is missing. Rows come study by study in train.csv column order.
    Raises ValueError on missing columns, duplicate study ids and label strings not in ``SEVERITIES``;
    other columns of ``labels`` are ignored.
    """
    missing = [c for c in ("study_id", *LABEL_COLUMNS) if c not in labels.columns]
    if missing:
        raise ValueError(f"labels: missing required columns: {_examples([repr(m) for m in missing])}")
    studies = [_study_key(s) for s in labels["study_id"].tolist()]
    dup = pd.Series(studies)[pd.Series(studies).duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"labels: duplicate study_id: {_examples([repr(d) for d in dup])}")

    grades = labels.loc[:, list(LABEL_COLUMNS)].to_numpy(dtype=object)  # (n_studies, 25), a copy
    code = {s: float(i) for i, s in enumerate(SEVERITIES)}
    severity = np.full(grades.shape, np.nan)
    bad: list[str] = []
    for (i, j), value in np.ndenumerate(grades):
        if isinstance(value, str) and value in code:
            severity[i, j] = code[value]
        elif not (value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA):
            bad.append(f"{row_id(studies[i], *_COLUMN_KEYS[j])}: {value!r}")
    if bad:
        raise ValueError(f"labels: values not in {SEVERITIES} (or empty): {_examples(bad)}")

    keys = [(s, c, lv) for s in studies for c, lv in _COLUMN_KEYS]
    return pd.DataFrame({
        "row_id": [row_id(*k) for k in keys],
        "study_id": [k[0] for k in keys],
        "condition": [k[1] for k in keys],
        "level": [k[2] for k in keys],
        "severity": severity.reshape(-1),
    })


def read_train_labels(path: str | Path) -> pd.DataFrame:
    """train.csv with ``study_id`` as int64, one row per study, every label column a grade or empty.

    Raises `TableError` (one line) for an unreadable or empty file (no header, or a header only), a missing
    label column, a grade not in ``SEVERITIES``, a study id that is not an integer, or a study listed in several differing rows. Repeated
    identical rows are kept once, with a warning.
    """
    path = Path(path)
    frame = read_csv_checked(path, "train labels")
    _require_columns(frame, ("study_id",), "train labels", path)
    if frame.empty:
        raise TableError(f"train labels {path}: no study, only a header: nothing to train on")
    ids = [_as_int(v) for v in frame["study_id"]]
    bad = [f"line {line}: {_id_problem('study_id', v)}" for line, v, i in zip(range(2, len(ids) + 2),
                                                                                frame["study_id"], ids) if i is None]
    if bad:
        raise TableError(f"train labels {path}: unusable study_id: {_examples(bad)}")
    frame = frame.assign(study_id=np.asarray(ids, dtype=np.int64))
    frame = _one_row_per_study(frame, path)
    try:
        labels_to_long(frame)
    except ValueError as err:
        raise TableError(f"train labels {path}: {_one_line(err, 300)}") from None
    return frame


def _one_row_per_study(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    repeated = frame[frame.duplicated(keep="first")]
    if len(repeated):
        counts = Counter(int(s) for s in repeated.study_id)
        log.warning("train labels %s: %d repeated identical row(s) kept once (studies %s)", path, len(repeated),
                    _examples([f"{s} x{n + 1}" for s, n in counts.items()]))
        frame = frame.drop_duplicates(keep="first").reset_index(drop=True)
    twice = frame.loc[frame.study_id.duplicated(keep=False), "study_id"].unique().tolist()
    if twice:
        raise TableError(f"train labels {path}: studies listed in several rows with different labels (would land "
                         f"in several folds): {_examples([str(s) for s in twice])}; keep one row per study")
    return frame


def _examples(items: list[str], limit: int = 5) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" (and {more} more)" if more > 0 else "")


# -------------------------------------------------------------------------------------------- listing
@dataclass
class Listing:
    """A ``*_series_descriptions.csv``, checked.

    Attributes:
        path: the file.
        series: one row per listed series, in file order: ``study_id``, ``series_id`` (int64),
            ``description`` (the series type of `canonical_description`, else the text stripped), ``written``
            (the description as written), ``line``.
        studies: every study id with a usable id, in order of first appearance (also those whose series rows
            were all skipped).
        skipped: ``line``, ``study_id``, ``series_id`` (as written), ``reason``, per row left out.
        mapped: description as written -> series type, for the variants that were mapped.
    """

    path: Path
    series: pd.DataFrame
    studies: list[int]
    skipped: pd.DataFrame
    mapped: dict[str, str] = field(default_factory=dict)

    def skipped_of(self, study_id: int) -> list[str]:
        """``'line N: reason'`` of the skipped rows whose study id is ``study_id``."""
        return self._lines([_as_int(s) == int(study_id) for s in self.skipped.study_id])

    def skipped_of_series(self, series_id: int) -> list[str]:
        """``'line N: reason'`` of the skipped rows whose series id is ``series_id`` (whatever their study id)."""
        return self._lines([_as_int(s) == int(series_id) for s in self.skipped.series_id])

    def _lines(self, chosen: list[bool]) -> list[str]:
        rows = self.skipped[np.asarray(chosen, dtype=bool)]
        return [f"line {r.line}: {r.reason}" for r in rows.itertuples(index=False)]


def read_listing(path: str | Path, what: str = "series listing") -> Listing:
    """Read and check a ``*_series_descriptions.csv``; logs each skipped row and each mapped description.

    Raises `TableError` when the file is unreadable or lacks a column of ``LISTING_COLUMNS``.
    """
    path = Path(path)
    frame = read_csv_checked(path, what, dtype=str, keep_default_na=False)
    _require_columns(frame, LISTING_COLUMNS, what, path)
    rows, skipped, studies, first_line = [], [], {}, {}
    for line, study_text, series_text, text in zip(range(2, len(frame) + 2), frame.study_id, frame.series_id,
                                                   frame.series_description):
        study, series = _as_int(study_text), _as_int(series_text)
        if study is not None:
            studies.setdefault(study, None)
        reason = _listing_problem(study_text, series_text, (study, series), first_line)
        if reason is not None:
            skipped.append((line, study_text, series_text, reason))
            continue
        first_line[study, series] = line
        rows.append((study, series, series_type(text), text, line))
    table = pd.DataFrame(rows, columns=_LISTING_SERIES_COLUMNS).astype({"study_id": np.int64,
                                                                         "series_id": np.int64, "line": np.int64})
    mapped = {text: name for text, name in zip(table.written, table.description) if canonical_description(text)[1]}
    listing = Listing(path, table, list(studies), pd.DataFrame(skipped, columns=_SKIPPED_COLUMNS), mapped)
    _log_listing(listing, what)
    return listing


def _listing_problem(study_text: str, series_text: str, key: tuple[int | None, int | None],
                     first_line: dict) -> str | None:
    """Why a listing row cannot be used (None if it can); ``first_line``: (study, series) -> line seen on."""
    study, series = key
    if study is None:
        return _id_problem("study_id", study_text)
    if series is None:
        return _id_problem("series_id", series_text)
    if key in first_line:
        return f"series {study}/{series} listed again (first on line {first_line[key]})"
    return None


def _log_listing(listing: Listing, what: str) -> None:
    for row in listing.skipped.head(_MAX_LOGGED).itertuples(index=False):
        log.warning("%s %s line %d skipped: %s", what, listing.path, row.line, row.reason)
    if len(listing.skipped) > _MAX_LOGGED:
        log.warning("%s %s: %d more rows skipped", what, listing.path, len(listing.skipped) - _MAX_LOGGED)
    for text, name in listing.mapped.items():
        log.warning("%s %s: series description %r read as %r", what, listing.path, text, name)


# ---------------------------------------------------------------------------------------- coordinates
def read_coordinates(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train_label_coordinates.csv`` -> (usable rows, rows set aside with a ``reason``).

    Usable rows have int64 ``study_id``, ``series_id``, ``instance_number`` and numeric ``x``, ``y`` (other
    columns as written); both frames keep the file's columns and a ``line`` column. Raises `TableError`
    when the file is unreadable or lacks a column of ``COORDINATE_INPUT_COLUMNS``.
    """
    path = Path(path)
    frame = read_csv_checked(path, "label coordinates", dtype=str, keep_default_na=False)
    _require_columns(frame, COORDINATE_INPUT_COLUMNS, "label coordinates", path)
    frame.insert(0, "line", np.arange(len(frame), dtype=np.int64) + 2)
    reasons = [_coordinate_problem(row) for row in frame.itertuples(index=False)]
    bad = np.array([r is not None for r in reasons], dtype=bool)
    rejected = frame[bad].assign(reason=[r for r in reasons if r is not None])
    good = frame[~bad].copy()
    for column in ("study_id", "series_id", "instance_number"):
        good[column] = np.asarray([_as_int(v) for v in good[column]], dtype=np.int64)
    for column in ("x", "y"):
        good[column] = pd.to_numeric(good[column].str.strip())
    _spell_names(good, path)
    if len(rejected):
        log.warning("label coordinates %s: %d row(s) set aside (first: line %d, %s)", path, len(rejected),
                    rejected.line.iloc[0], rejected.reason.iloc[0])
    return good.reset_index(drop=True), rejected.reset_index(drop=True)


def _coordinate_problem(row) -> str | None:
    problems = [_id_problem(name, getattr(row, name)) for name in ("study_id", "series_id", "instance_number")
                if _as_int(getattr(row, name)) is None]
    problems += [f"{name} {_quoted(getattr(row, name))} is not a number" for name in ("x", "y")
                 if _as_float(getattr(row, name)) is None]
    if canonical_condition(row.condition) is None:
        problems.append(f"unknown condition {_quoted(row.condition)} (conditions: {', '.join(CONDITION_NAMES)})")
    if canonical_level(row.level) is None:
        problems.append(f"unknown level {_quoted(row.level)} (levels: {', '.join(LEVEL_NAMES)})")
    return "; ".join(problems) or None


def _spell_names(rows: pd.DataFrame, path: Path) -> None:
    """Write the usable rows' condition and level in the competition's spelling (in place), warning once per
    variant met."""
    for column, canonical in (("condition", canonical_condition), ("level", canonical_level)):
        written = rows[column].tolist()
        spelled = [canonical(text) for text in written]
        variants = Counter((w, s) for w, s in zip(written, spelled) if w != s)
        for (text, name), count in variants.items():
            log.warning("label coordinates %s: %s %r read as %r (%d row(s))", path, column, text, name, count)
        rows[column] = spelled
