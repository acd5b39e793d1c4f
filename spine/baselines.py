"""Reference submissions: uniform, and per-(condition, level) class priors from the training labels.

CLI::

    python -m spine.baselines prior   --train TRAIN_CSV --studies SERIES_DESCRIPTIONS_CSV --out OUT_CSV
    python -m spine.baselines uniform --studies SERIES_DESCRIPTIONS_CSV --out OUT_CSV
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from spine.constants import LABEL_COLUMNS, PROB_COLUMNS, SEVERITY_WEIGHTS, study_row_ids
from spine.io.tables import labels_to_long, read_listing, read_train_labels
from spine.logs import configure as configure_logging


def _unique_studies(study_ids: Iterable[object]) -> list[object]:
    """Study ids in first-seen order, without repeats (a series table lists a study once per series)."""
    ids = [int(s) if isinstance(s, (int, np.integer, float, np.floating)) and float(s).is_integer() else s
           for s in study_ids]
    return list(dict.fromkeys(ids))


def _submission(study_ids: Iterable[object], per_column: np.ndarray) -> pd.DataFrame:
    """25 rows per study in ``study_row_ids`` order; ``per_column`` is (25, 3) in LABEL_COLUMNS order."""
    studies = _unique_studies(study_ids)
    frame = pd.DataFrame(np.tile(per_column, (len(studies), 1)), columns=list(PROB_COLUMNS))
    frame.insert(0, "row_id", [rid for s in studies for rid in study_row_ids(s)])
    return frame


def uniform_submission(study_ids: Iterable[object]) -> pd.DataFrame:
    """Submission predicting 1/3 for every grade of every row of every study."""
    return _submission(study_ids, np.full((len(LABEL_COLUMNS), len(PROB_COLUMNS)), 1.0 / len(PROB_COLUMNS)))


SMOOTHING = 1.0  # Laplace smoothing of the class counts: the one default of the functions and the command line


def class_priors(train_labels: pd.DataFrame, smoothing: float = SMOOTHING, weighted: bool = True) -> np.ndarray:
    """(25, 3) grade priors per train.csv label column, NaN labels ignored, Laplace-smoothed.

    ``weighted=False``: frequencies ``p = (count + smoothing) / (n + 3 * smoothing)``.
    ``weighted=True`` (default): ``p_k`` proportional to ``w_k * (count_k + smoothing)`` with the metric's
    sample weights w = (1, 2, 4): the constant prediction that minimises the weighted log loss of each group,
    i.e. the "per-level class prior" baseline of the competition (about 0.79 on the real data). Plain
    frequencies under-predict the up-weighted Moderate and Severe grades and score worse than uniform.
    A column with no counts at all gets 1/3 each.
    """
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    severity = labels_to_long(train_labels)["severity"].to_numpy().reshape(-1, len(LABEL_COLUMNS))
    counts = np.stack([(severity == k).sum(axis=0) for k in range(len(PROB_COLUMNS))], axis=1) + smoothing
    if weighted:
        counts = counts * np.asarray(SEVERITY_WEIGHTS)
    totals = counts.sum(axis=1, keepdims=True)
    uniform = np.full_like(counts, 1.0 / len(PROB_COLUMNS), dtype=np.float64)
    return np.divide(counts, totals, out=uniform, where=totals > 0)


def class_prior_submission(train_labels: pd.DataFrame, study_ids: Iterable[object],
                           smoothing: float = SMOOTHING, weighted: bool = True) -> pd.DataFrame:
    """Submission predicting, for each study and (condition, level), the training priors (:func:`class_priors`)."""
    return _submission(study_ids, class_priors(train_labels, smoothing, weighted))


def main(argv: Sequence[str] | None = None) -> int:
    """Write a baseline submission for the study ids of a ``*_series_descriptions.csv``."""
    parser = argparse.ArgumentParser(prog="python -m spine.baselines", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    prior = sub.add_parser("prior", help="per-(condition, level) training grade frequencies")
    prior.add_argument("--train", required=True, help="train.csv")
    prior.add_argument("--smoothing", type=float, default=SMOOTHING, help=f"Laplace smoothing (default {SMOOTHING:g})")
    prior.add_argument("--frequencies", action="store_true",
                       help="plain grade frequencies instead of the metric-weighted prior")
    uniform = sub.add_parser("uniform", help="1/3 for every grade")
    for p in (prior, uniform):
        p.add_argument("--studies", required=True, help="*_series_descriptions.csv listing the study ids")
        p.add_argument("--out", required=True, help="submission CSV to write")
    args = parser.parse_args(argv)
    configure_logging("spine.baselines")
    try:  # checked tables: rows with unusable ids are skipped with a logged reason, unusable files refused
        studies = read_listing(args.studies, "study listing").studies
        if args.kind == "prior":
            result = class_prior_submission(read_train_labels(args.train), studies, args.smoothing,
                                            weighted=not args.frequencies)
        else:
            result = uniform_submission(studies)
    except (OSError, ValueError) as err:  # TableError is a ValueError
        print(f"spine.baselines: error: {err}", file=sys.stderr)
        return 2
    result.to_csv(args.out, index=False)
    print(f"wrote {len(result)} rows ({len(result) // len(LABEL_COLUMNS)} studies) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
