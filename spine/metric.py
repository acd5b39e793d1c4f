"""The RSNA 2024 lumbar spine competition metric (DESIGN.md section 4), its breakdown and the `spine-score` CLI.

Rules, in short:

- rows are matched by ``row_id`` in any order; submission rows for studies or rows not in ``labels`` are
  ignored; labelled rows missing from the submission are an error;
- rows whose label is NaN are dropped **before anything else is computed**, as the official harness does
  (so a submission may omit them); sample weight by true grade is 1 / 2 / 4 (``SEVERITY_WEIGHTS``);
- each group (spinal, foraminal, subarticular): weighted mean of ``-log p[y]``, with each probability row
  clipped to ``[eps, 1 - eps]`` and then renormalised to sum 1;
- ``any_severe_spinal``, one item per study that has at least one labelled spinal level, over that
  study's **labelled** spinal levels only: ``y = 1`` if any of them is Severe, ``p`` = max of the submitted
  ``severe`` over them (clipped to ``[eps, 1 - eps]``, not renormalised), ``w`` = max of their weights;
  weighted binary log loss. The ``severe`` of an unlabelled spinal level (say L5/S1 not visible) plays no
  part, however large;
- ``score`` = mean of the four parts. A part with no scored rows is NaN and ``score`` is the mean of the
  remaining parts; labels with no scored row at all are an error.

Only pandas and numpy are imported, so ``spine-score`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from spine.constants import (
    CONDITION_GROUP,
    CONDITIONS,
    GROUPS,
    LEVELS,
    PROB_COLUMNS,
    SEVERITIES,
    SEVERITY_WEIGHTS,
)
from spine.io.tables import labels_to_long  # the train.csv format -> one row per label

EPS: float = float(np.finfo(np.float64).eps)
ANY_SEVERE: str = "any_severe_spinal"
PARTS: tuple[str, ...] = (*GROUPS, ANY_SEVERE)  # the four averaged parts, in score order
SPINAL: str = next(c for c in CONDITIONS if CONDITION_GROUP[c] == "spinal")
_COLUMN_KEYS: tuple[tuple[str, str], ...] = tuple((c, lv) for c in CONDITIONS for lv in LEVELS)  # LABEL_COLUMNS

_MAX_EXAMPLES = 5


def _examples(items: Iterable[object], fmt: Callable[[object], str] = repr) -> str:
    """Up to five items for an error message, plus how many were left off."""
    items = list(items)
    shown = ", ".join(fmt(x) for x in items[:_MAX_EXAMPLES])
    more = len(items) - _MAX_EXAMPLES
    return shown + (f" (and {more} more)" if more > 0 else "")


def _submission_probs(submission: pd.DataFrame) -> pd.DataFrame:
    """Checked copy of the submission: float probabilities indexed by row_id (values not yet checked)."""
    expected = ["row_id", *PROB_COLUMNS]
    missing = [c for c in expected if c not in submission.columns]
    extra = [c for c in submission.columns if c not in expected]
    if missing or extra:
        raise ValueError(f"submission: columns must be {expected}; missing {missing}, extra {extra}")
    ids = submission["row_id"].astype(str).str.strip()
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"submission: duplicate row_id: {_examples(dup)}")
    try:
        probs = submission.loc[:, list(PROB_COLUMNS)].astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"submission: probabilities must be numbers ({err})") from None
    probs.index = pd.Index(ids.to_numpy(), name="row_id")
    return probs


def _joined(labels: pd.DataFrame, submission: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scored label rows with their submitted probabilities, and the scored spinal rows any_severe uses.

    Returns ``(scored, spinal)``: ``scored`` has the columns of :func:`labels_to_long` (NaN labels dropped
    first, like the official harness) plus ``weight`` and ``PROB_COLUMNS``; ``spinal`` is its spinal canal
    rows, with ``study_id, row_id, severity, weight, severe``.
    """
    long = labels_to_long(labels)
    probs = _submission_probs(submission)
    needed = long[long["severity"].notna()]
    absent = needed.loc[~needed["row_id"].isin(probs.index), "row_id"].tolist()
    if absent:
        raise ValueError(f"submission: {len(absent)} rows needed for scoring are missing: {_examples(absent)}")

    p = probs.loc[needed["row_id"]].to_numpy()
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    if bad.any():
        raise ValueError("submission: probabilities must be finite and >= 0; bad rows: "
                         + _examples(needed["row_id"].to_numpy()[bad]))

    scored = needed.reset_index(drop=True)
    scored[list(PROB_COLUMNS)] = p
    scored["weight"] = np.asarray(SEVERITY_WEIGHTS, dtype=np.float64)[scored["severity"].to_numpy().astype(int)]
    spinal = scored.loc[scored["condition"] == SPINAL, ["study_id", "row_id", "severity", "weight", "severe"]]
    return scored, spinal.reset_index(drop=True)


def _row_losses(scored: pd.DataFrame, eps: float) -> np.ndarray:
    """-log p[y] per scored row, p clipped to [eps, 1 - eps] and renormalised to sum 1."""
    p = np.clip(scored[list(PROB_COLUMNS)].to_numpy(), eps, 1.0 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    y = scored["severity"].to_numpy().astype(int)
    return -np.log(p[np.arange(len(y)), y])


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    """sum(w * v) / sum(w), NaN when there is nothing to average."""
    return float(np.sum(weights * values) / np.sum(weights)) if len(values) else float("nan")


def _any_severe(spinal: pd.DataFrame, eps: float) -> float:
    """Weighted binary log loss of 'any labelled spinal level is Severe' against the max submitted severe
    of the labelled spinal levels (``spinal`` holds scored rows only)."""
    if spinal.empty:
        return float("nan")
    severe_idx = float(SEVERITIES.index("Severe"))
    per_study = spinal.assign(is_severe=spinal["severity"] == severe_idx).groupby("study_id", sort=False).agg(
        y=("is_severe", "max"), p=("severe", "max"), w=("weight", "max"))
    y = per_study["y"].to_numpy(dtype=np.float64)
    p = np.clip(per_study["p"].to_numpy(dtype=np.float64), eps, 1.0 - eps)
    loss = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    return _weighted_mean(loss, per_study["w"].to_numpy(dtype=np.float64))


def score(labels: pd.DataFrame, submission: pd.DataFrame, eps: float = EPS) -> dict[str, float]:
    """The competition metric: ``{'score', 'spinal', 'foraminal', 'subarticular', 'any_severe_spinal'}``.

    ``labels`` in train.csv format, ``submission`` in sample_submission format; neither is modified.
    A part with no scored rows is NaN and ``score`` averages the others. Raises ValueError on bad input.
    """
    scored, spinal = _joined(labels, submission)
    if scored.empty:
        raise ValueError("labels: no graded (non-NaN) rows to score")
    losses = _row_losses(scored, eps)
    group = scored["condition"].map(CONDITION_GROUP).to_numpy()
    weight = scored["weight"].to_numpy()
    parts = {g: _weighted_mean(losses[group == g], weight[group == g]) for g in GROUPS}
    parts[ANY_SEVERE] = _any_severe(spinal, eps)
    return {"score": float(np.nanmean([parts[k] for k in PARTS])), **parts}


def per_condition_level(labels: pd.DataFrame, submission: pd.DataFrame, eps: float = EPS) -> pd.DataFrame:
    """Weighted log loss per (condition, level), the breakdown of the three group losses.

    One row per condition and level, in train.csv column order, with columns ``condition, level, group,
    n`` (scored rows), ``weight`` (their summed sample weights) and ``loss`` (weighted mean of -log p[y], NaN
    where n == 0). Aggregate with ``(loss * weight).sum() / weight.sum()`` over any subset, e.g. by
    condition or by level; summed over a group this gives that group's part of :func:`score`.
    """
    scored, _ = _joined(labels, submission)
    frame = scored.assign(wloss=_row_losses(scored, eps) * scored["weight"])
    sums = frame.groupby(["condition", "level"])[["wloss", "weight"]].sum()
    counts = frame.groupby(["condition", "level"]).size()
    rows = []
    for condition, level in _COLUMN_KEYS:
        key = (condition, level)
        n = int(counts.get(key, 0))
        w = float(sums["weight"].get(key, 0.0))
        loss = float(sums["wloss"][key] / w) if n else float("nan")
        rows.append({"condition": condition, "level": level, "group": CONDITION_GROUP[condition],
                     "n": n, "weight": w, "loss": loss})
    return pd.DataFrame(rows)


def _format_table(result: dict[str, float]) -> str:
    """Human-readable two-column table of the score and its parts."""
    width = max(len(k) for k in result)
    return "\n".join(f"{k:<{width}}  {v:.6f}" for k, v in result.items())


def _read_csv(path: str, what: str, **kwargs: object) -> pd.DataFrame:
    """pd.read_csv with errors turned into ValueError naming the file."""
    try:
        return pd.read_csv(path, **kwargs)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {what} {path!r}: {err}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``spine-score SUBMISSION --labels LABELS_CSV [--json]``: print the score and its four parts."""
    parser = argparse.ArgumentParser(prog="spine-score", description="Score a submission with the RSNA 2024 "
                                     "lumbar spine metric (lower is better).")
    parser.add_argument("submission", help="submission CSV: row_id, normal_mild, moderate, severe")
    parser.add_argument("--labels", required=True, help="labels CSV in train.csv format")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        labels = _read_csv(args.labels, "labels")
        submission = _read_csv(args.submission, "submission", dtype={"row_id": str})
        result = score(labels, submission)
    except (ValueError, KeyError) as err:
        print(f"spine-score: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: (None if math.isnan(v) else v) for k, v in result.items()}))
    else:
        print(_format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
