"""Post-hoc calibration of the grade probabilities, fitted on out-of-fold (OOF) predictions.

Two kinds of correction, applied in this order by :meth:`Calibration.apply`:

1. one temperature per condition on the log-probabilities: ``p' ∝ p ** (1 / T)`` (``T > 1`` softens
   over-confident predictions, ``T < 1`` sharpens under-confident ones);
2. on the spinal canal rows only, the ``severe`` probability is multiplied by ``any_severe_scale`` and the
   row renormalised. This moves the per-study max-severe that the metric's ``any_severe_spinal`` part uses.

Frames used throughout:

- ``predictions`` / ``submission``: submission format, columns ``row_id`` and ``PROB_COLUMNS``
  (``normal_mild, moderate, severe``); other columns (e.g. ``fold``) are carried along unchanged. Row ids are
  ``{study_id}_{condition}_{level}`` (:func:`spine.constants.row_id`).
- ``labels``: train.csv format, ``study_id`` and the 25 ``LABEL_COLUMNS`` holding ``SEVERITIES`` strings or
  empty; other columns are ignored.

Fitting only uses what both frames have: labelled rows missing from the predictions are dropped (the
metric's ``any_severe_spinal`` part, like its other parts, only reads labelled rows). Prediction rows without a label (test studies, unlabelled levels) are ignored by the
fit and still calibrated by :meth:`Calibration.apply`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spine.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, PROB_COLUMNS, SEVERITIES, SEVERITY_WEIGHTS
from spine.io.tables import labels_to_long
from spine.metric import EPS, score

FLOOR: float = 1e-7  # every calibrated probability lies in [FLOOR, 1]
T_BOUNDS: tuple[float, float] = (0.25, 4.0)
SCALE_BOUNDS: tuple[float, float] = (0.25, 4.0)
SPINAL: str = CONDITIONS[0]
FOLD_COLUMN: str = "fold"
_KEYS: tuple[tuple[str, str], ...] = tuple((c, lv) for c in CONDITIONS for lv in LEVELS)  # LABEL_COLUMNS order
_SEVERE: int = PROB_COLUMNS.index("severe")


# ---------------------------------------------------------------------------------------------------------
# array helpers: every path (fit objective, apply) goes through these, so the fit optimises what apply does


def _sanitised(probs: np.ndarray) -> np.ndarray:
    """(n, 3) probabilities made usable: non-finite or negative values -> 0, rows normalised (an all-zero row
    becomes uniform), then clipped to [FLOOR, 1]."""
    p = np.where(np.isfinite(probs) & (probs >= 0), probs, 0.0).astype(np.float64)
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
    return np.clip(p, FLOOR, 1.0)


def _tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row-wise; ``p`` must be positive."""
    z = np.log(p) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _severe_scaled(p: np.ndarray, scale: float) -> np.ndarray:
    """``severe`` multiplied by ``scale``, rows renormalised."""
    q = p.copy()
    q[:, _SEVERE] *= scale
    return q / q.sum(axis=1, keepdims=True)


def _floored(p: np.ndarray) -> np.ndarray:
    """Clip to [FLOOR, 1], renormalise, clip again (rows then sum to 1 within ~1e-15)."""
    p = np.clip(p, FLOOR, 1.0)
    return np.clip(p / p.sum(axis=1, keepdims=True), FLOOR, 1.0)


def _calibrated(conditions: np.ndarray, probs: np.ndarray, temperature: dict[str, float],
                scale: float) -> np.ndarray:
    """What :meth:`Calibration.apply` does to the (n, 3) raw probabilities of rows of these conditions."""
    if not len(probs):
        return np.zeros((0, len(PROB_COLUMNS)))
    p = _sanitised(probs)
    for condition in CONDITIONS:
        rows = conditions == condition
        if rows.any():
            p[rows] = _tempered(p[rows], float(temperature.get(condition, 1.0)))
    spinal = conditions == SPINAL
    if spinal.any() and scale != 1.0:
        p[spinal] = _severe_scaled(p[spinal], float(scale))
    return _floored(p)


def _checked_probs(frame: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(row ids as stripped strings, (n, 3) float probabilities) of a submission-format frame."""
    missing = [c for c in ("row_id", *PROB_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing required columns {missing}")
    ids = frame["row_id"].astype(str).str.strip().to_numpy()
    try:
        probs = frame.loc[:, list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: probabilities must be numbers ({err})") from None
    return ids, probs


def _row_conditions(ids: np.ndarray) -> np.ndarray:
    """Condition of each row id (object array), None where the id is not ``{study}_{condition}_{level}``."""
    series = pd.Series(ids, dtype=object).astype(str)
    out = np.full(len(series), None, dtype=object)
    for condition, level in _KEYS:
        suffix = f"_{condition}_{level}"
        hit = series.str.endswith(suffix).to_numpy() & (series.str.len().to_numpy() > len(suffix))
        out[hit] = condition
    return out


# ---------------------------------------------------------------------------------------------------------
# joining predictions and labels


def labelled_predictions(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows that have a prediction: one row per (study, condition, level) with a grade.

    Columns ``row_id, study_id, condition, level, severity`` (int index into ``SEVERITIES``), ``weight``
    (the metric's sample weight 1/2/4 of the true grade) and ``PROB_COLUMNS`` as submitted (not sanitised).
    Rows in label order. Empty (with these columns) when nothing matches. Raises ValueError on bad labels
    (see :func:`spine.io.tables.labels_to_long`), missing prediction columns or duplicate prediction row ids.
    """
    ids, probs = _checked_probs(predictions, "predictions")
    dup = pd.Series(ids)[pd.Series(ids).duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"predictions: duplicate row_id: {dup[:5]}")
    long = labels_to_long(labels) if len(labels) else labels_to_long(_empty_labels())
    long = long[long["severity"].notna()].astype({"row_id": object})  # an empty frame's row_id is float64
    table = pd.DataFrame(probs, columns=list(PROB_COLUMNS)).assign(row_id=ids)
    joined = long.merge(table, on="row_id", how="inner", sort=False).reset_index(drop=True)
    joined["severity"] = joined["severity"].astype(int)
    joined.insert(joined.columns.get_loc("severity") + 1, "weight",
                  np.asarray(SEVERITY_WEIGHTS)[joined["severity"].to_numpy()])
    return joined


def _empty_labels() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ("study_id", *LABEL_COLUMNS)})


def _scorable(predictions: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels and predictions that :func:`spine.metric.score` accepts together.

    Returns ``(labels, submission)``: train.csv-format labels of the studies with at least one labelled,
    predicted row, with the cells of unpredicted rows blanked (the metric drops unlabelled rows before anything
    else, any-severe included), and the submission (``row_id`` + ``PROB_COLUMNS`` only) restricted to those
    studies.
    """
    ids, probs = _checked_probs(predictions, "predictions")
    submission = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    submission.insert(0, "row_id", ids)
    if not len(labels):
        return _empty_labels(), submission.iloc[:0]
    long = labels_to_long(labels)
    n_studies = len(long) // len(_KEYS)
    present = long["row_id"].isin(set(ids)).to_numpy().reshape(n_studies, len(_KEYS))
    severity = np.where(present, long["severity"].to_numpy().reshape(n_studies, len(_KEYS)), np.nan)
    keep = ~np.isnan(severity).all(axis=1)
    names = np.array([*SEVERITIES, None], dtype=object)
    grades = names[np.where(np.isnan(severity), len(SEVERITIES), np.nan_to_num(severity)).astype(int)]
    kept = pd.DataFrame(grades[keep], columns=list(LABEL_COLUMNS))
    kept.insert(0, "study_id", labels["study_id"].to_numpy()[keep])
    needed = set(long["row_id"].to_numpy().reshape(n_studies, len(_KEYS))[keep].reshape(-1))
    return kept, submission[submission["row_id"].isin(needed)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# the calibration


@dataclass
class Calibration:
    """Per-condition temperatures and the spinal severe scale; see the module docstring.

    ``fitted_on``: labelled rows used by the fit (0 for :meth:`identity`); ``fitted_on_studies``: their
    studies; ``score_before`` / ``score_after``: the metric on those rows before and after (in sample),
    None where not fitted.
    """

    temperature: dict[str, float]
    any_severe_scale: float = 1.0
    fitted_on: int = 0
    fitted_on_studies: int = 0
    score_before: float | None = None
    score_after: float | None = None
    rows_per_condition: dict[str, int] = field(default_factory=dict)

    @classmethod
    def identity(cls) -> Calibration:
        """T = 1 for every condition, scale 1: :meth:`apply` only sanitises and floors."""
        return cls(temperature={c: 1.0 for c in CONDITIONS})

    def apply(self, submission: pd.DataFrame) -> pd.DataFrame:
        """Calibrated copy of ``submission`` (row_id + PROB_COLUMNS, other columns kept as they are).

        Same rows, columns, index and order. Each row is first sanitised (non-finite or negative values -> 0,
        normalised, an all-zero row becomes uniform, clipped to [FLOOR, 1]), then tempered with its
        condition's temperature; spinal rows get the severe scale; finally clipped to [FLOOR, 1] and
        renormalised. Rows whose id names no known condition/level are only sanitised and floored.
        """
        ids, probs = _checked_probs(submission, "submission")
        out = submission.copy()
        out[list(PROB_COLUMNS)] = _calibrated(_row_conditions(ids), probs, self.temperature, self.any_severe_scale)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the fields of the dataclass)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; conditions missing from ``temperature`` get T = 1.

        Raises ValueError on unknown conditions or non-positive / non-finite temperatures or scale.
        """
        temperature = {c: 1.0 for c in CONDITIONS}
        unknown = [c for c in data.get("temperature", {}) if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"calibration: unknown conditions {unknown}")
        temperature.update({c: float(t) for c, t in data.get("temperature", {}).items()})
        scale = float(data.get("any_severe_scale", 1.0))
        bad = [v for v in (*temperature.values(), scale) if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"calibration: temperatures and scale must be finite and > 0, got {bad}")
        known = {"fitted_on", "fitted_on_studies", "score_before", "score_after", "rows_per_condition"}
        return cls(temperature=temperature, any_severe_scale=scale, **{k: data[k] for k in known if k in data})

    def to_json(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON (parent folder created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _bounded_argmin(objective, bounds: tuple[float, float]) -> float:
    """argmin over log x in log(bounds) of objective(x); x = 1 is kept unless strictly beaten."""
    from scipy.optimize import minimize_scalar

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    result = minimize_scalar(lambda u: objective(math.exp(u)), bounds=(lo, hi), method="bounded",
                             options={"xatol": 1e-3})
    best = math.exp(float(result.x))
    return best if float(result.fun) < objective(1.0) else 1.0


def _weighted_log_loss(p: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The metric's per-group loss (its eps clipping never binds on floored probabilities)."""
    return float(np.sum(-w * np.log(p[np.arange(len(y)), y])) / np.sum(w))


def _spinal_parts(labels: pd.DataFrame, ids: np.ndarray):
    """f(probs) = the metric's ``spinal`` + ``any_severe_spinal`` parts for (n, 3) probabilities of rows ``ids``.

    These are the only parts of :func:`spine.metric.score` that the severe scale changes, so minimising f
    minimises the score; same formulas as the metric, in numpy (the metric re-joins the frames on every call,
    which made the scale search ~50x slower). ``labels`` must come from :func:`_scorable` (every labelled
    row predicted).
    """
    long = labels_to_long(labels)
    labelled = long[(long["condition"] == SPINAL) & long["severity"].notna()]  # study by study, contiguous
    row = pd.Series(np.arange(len(ids)), index=pd.Index(ids)).loc[labelled["row_id"]].to_numpy()
    y = labelled["severity"].to_numpy().astype(int)
    w = np.asarray(SEVERITY_WEIGHTS, dtype=np.float64)[y]
    codes = pd.factorize(labelled["study_id"])[0]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, dtype=int)
    # any-severe per study over its labelled spinal levels only, as the metric (and the official harness)
    y_any = np.maximum.reduceat((y == SEVERITIES.index("Severe")).astype(np.float64), starts) if len(y) else y
    w_any = np.maximum.reduceat(w, starts) if len(w) else w

    def parts(p: np.ndarray) -> float:
        q = np.clip(p[row], EPS, 1.0 - EPS)
        q = q / q.sum(axis=1, keepdims=True)
        spinal = np.sum(-w * np.log(q[np.arange(len(y)), y])) / np.sum(w)
        m = np.clip(np.maximum.reduceat(p[row, _SEVERE], starts), EPS, 1.0 - EPS)
        any_severe = np.sum(-w_any * (y_any * np.log(m) + (1.0 - y_any) * np.log(1.0 - m))) / np.sum(w_any)
        return float(spinal + any_severe)

    return parts


def fit_calibration(predictions: pd.DataFrame, labels: pd.DataFrame, *, t_bounds: tuple[float, float] = T_BOUNDS,
                    scale_bounds: tuple[float, float] = SCALE_BOUNDS, min_rows: int = 1) -> Calibration:
    """Fit the temperatures, then the spinal severe scale, on the labelled rows of ``predictions``.

    ``predictions``: row_id + PROB_COLUMNS (other columns ignored), ``labels``: train.csv format (see the
    module docstring for which rows are used).

    - temperature of each condition: minimises that condition's weighted log loss (weights 1/2/4 by true
      grade, as in the metric) of the calibrated probabilities, bounded search over log T in
      ``log(t_bounds)``; a condition with fewer than ``min_rows`` labelled rows keeps T = 1;
    - ``any_severe_scale``: minimises :func:`spine.metric.score` of the temperature-calibrated predictions
      over ``scale_bounds`` (through its spinal and any_severe_spinal parts, the only ones the scale moves,
      computed in numpy with the metric's formulas); stays 1 without labelled spinal rows.

    A value other than 1 is only kept when it strictly lowers the in-sample objective, so the fit never makes
    the in-sample score worse. Without any labelled row the result is :meth:`Calibration.identity`.
    """
    kept_labels, submission = _scorable(predictions, labels)
    table = labelled_predictions(submission, kept_labels)
    if table.empty:
        return Calibration.identity()

    temperature, counts = {}, {}
    for condition in CONDITIONS:
        rows = table[table["condition"] == condition]
        counts[condition] = len(rows)
        if len(rows) < max(min_rows, 1):
            temperature[condition] = 1.0
            continue
        p = _sanitised(rows[list(PROB_COLUMNS)].to_numpy(dtype=np.float64))
        y, w = rows["severity"].to_numpy(), rows["weight"].to_numpy()
        temperature[condition] = _bounded_argmin(lambda t: _weighted_log_loss(_floored(_tempered(p, t)), y, w),
                                                 t_bounds)

    before_parts = _score_or_none(kept_labels, submission)
    before = before_parts["score"] if before_parts is not None else None
    scale = 1.0
    if counts[SPINAL] > 0:
        ids, raw = _checked_probs(submission, "predictions")
        conditions = _row_conditions(ids)
        objective = _spinal_parts(kept_labels, ids)
        scale = _bounded_argmin(lambda s: objective(_calibrated(conditions, raw, temperature, s)), scale_bounds)

    calibration = Calibration(temperature=temperature, any_severe_scale=scale, fitted_on=len(table),
                              fitted_on_studies=int(table["study_id"].nunique()), score_before=before,
                              rows_per_condition=counts)
    calibration.score_after = score(kept_labels, calibration.apply(submission))["score"]
    return calibration


def cross_fitted(predictions_with_fold: pd.DataFrame, labels: pd.DataFrame,
                 fold_column: str = FOLD_COLUMN, **fit_kwargs: Any) -> pd.DataFrame:
    """Honestly calibrated OOF: the rows of each fold calibrated by a fit on the other folds' rows only.

    ``predictions_with_fold``: row_id + PROB_COLUMNS + ``fold_column``; returns a copy with the same rows,
    columns and order. Rows with a missing fold are returned unchanged. With fewer than two folds nothing can
    be cross-fitted: a warning is issued and an unchanged copy returned. ``fit_kwargs`` go to
    :func:`fit_calibration`.
    """
    if fold_column not in predictions_with_fold.columns:
        raise ValueError(f"predictions: missing fold column {fold_column!r}")
    out = predictions_with_fold.copy()
    folds = out[fold_column]
    values = folds.dropna().unique().tolist()
    if len(values) < 2:
        warnings.warn(f"cross_fitted: {len(values)} fold(s), cannot cross-fit; predictions returned unchanged",
                      stacklevel=2)
        return out
    for fold in values:
        inside = (folds == fold).to_numpy()
        others = ~inside & folds.notna().to_numpy()
        calibration = fit_calibration(predictions_with_fold[others], labels, **fit_kwargs)
        calibrated = calibration.apply(predictions_with_fold[inside])
        out.loc[inside, list(PROB_COLUMNS)] = calibrated[list(PROB_COLUMNS)].to_numpy()
    return out


def _score_or_none(labels: pd.DataFrame, submission: pd.DataFrame) -> dict[str, float] | None:
    """The metric's score dict, None where it refuses the raw submission (NaN or negative probabilities, which
    :meth:`Calibration.apply` sanitises)."""
    try:
        return score(labels, submission)
    except ValueError:
        return None


def _finite_or_none(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (float(v) if math.isfinite(v) else None) for k, v in values.items()}


def calibration_report(predictions: pd.DataFrame, labels: pd.DataFrame,
                       fold_column: str = FOLD_COLUMN) -> dict[str, Any]:
    """Scores before and after calibration, JSON-able (NaN parts as None).

    Keys: ``rows`` / ``studies`` (labelled rows and studies scored), ``before``, ``after_in_sample`` (a
    calibration fitted and applied on all rows: optimistic) and ``after_cross_fitted`` (:func:`cross_fitted`,
    the honest estimate; None without at least two folds in ``fold_column``), each a
    :func:`spine.metric.score` dict; ``calibration``: the in-sample fit as :meth:`Calibration.to_dict` (the
    one to apply to test predictions). All scores use the same scorable rows (see :func:`fit_calibration`).
    ``before`` is None when the metric refuses the raw predictions (NaN or negative probabilities).
    Raises ValueError when no labelled row has a prediction.
    """
    kept_labels, submission = _scorable(predictions, labels)
    table = labelled_predictions(submission, kept_labels)
    if table.empty:
        raise ValueError("calibration_report: no labelled row has a prediction")
    calibration = fit_calibration(predictions, labels)
    before = _score_or_none(kept_labels, submission)
    report: dict[str, Any] = {
        "rows": len(table), "studies": int(table["study_id"].nunique()),
        "before": _finite_or_none(before) if before is not None else None,
        "after_in_sample": _finite_or_none(score(kept_labels, calibration.apply(submission))),
        "after_cross_fitted": None,
        "calibration": calibration.to_dict(),
    }
    if fold_column in predictions.columns and predictions[fold_column].dropna().nunique() >= 2:
        honest = cross_fitted(predictions, labels, fold_column)
        report["after_cross_fitted"] = _finite_or_none(
            score(kept_labels, _scorable(honest, kept_labels)[1]))
    return report
