"""The landmark run's point errors: predicted against label points (LPS mm), summarised per fold
(:func:`spine.evaluate.landmark_metrics`), per level and per condition group."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine.constants import CONDITION_GROUP, CONDITION_NAMES, CONDITIONS, LEVEL_NAMES, LEVELS
from spine.evaluate import landmark_metrics
from spine.report.contents import LANDMARK_KEYS

__all__ = ["error_summary", "landmark_fold_metrics", "point_errors"]

_COND = dict(zip(CONDITION_NAMES, CONDITIONS))
_LEVEL = dict(zip(LEVEL_NAMES, LEVELS))


def point_errors(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Predicted points joined to the label points (``truth``: :func:`spine.evaluate.truth_frame`):
    ``study_id, fold, condition, level`` (snake case), ``group``, ``error_mm``."""
    merged = predicted.merge(truth, on=["study_id", "condition", "level"], how="inner")
    error = np.linalg.norm(merged[["world_x", "world_y", "world_z"]].to_numpy(float)
                           - merged[["true_x", "true_y", "true_z"]].to_numpy(float), axis=1)
    condition = merged.condition.map(_COND)
    return pd.DataFrame({"study_id": merged.study_id.astype(np.int64),
                         "fold": merged["fold"] if "fold" in merged.columns else np.nan,
                         "condition": condition, "level": merged.level.map(_LEVEL),
                         "group": condition.map(CONDITION_GROUP), "error_mm": error})


def error_summary(errors: pd.DataFrame, by: str, keys) -> pd.DataFrame:
    """Per value of ``by`` (in ``keys`` order): n, median, p90, mean and max error (mm), share within 5 mm."""
    rows = []
    for key in keys:
        e = errors.loc[errors[by] == key, "error_mm"].to_numpy(float)
        rows.append({by: key, "n": len(e), "median_mm": float(np.median(e)) if len(e) else np.nan,
                     "p90_mm": float(np.percentile(e, 90)) if len(e) else np.nan,
                     "mean_mm": float(e.mean()) if len(e) else np.nan, "max_mm": float(e.max()) if len(e) else np.nan,
                     "within_5mm": float((e <= 5).mean()) if len(e) else np.nan})
    return pd.DataFrame(rows)


def landmark_fold_metrics(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """:func:`spine.evaluate.landmark_metrics` per fold and over all folds (``LANDMARK_KEYS``)."""
    folds = sorted(int(f) for f in predicted["fold"].dropna().unique()) if "fold" in predicted.columns else []
    rows = []
    for fold in [*folds, "all"]:
        part = predicted if fold == "all" else predicted[predicted["fold"] == fold]
        m = landmark_metrics(part, truth)
        rows.append({"fold": fold, "studies": int(part.study_id.nunique()),
                     **{k: m.get(k, np.nan) for k in LANDMARK_KEYS}, "n_points": int(m.get("n_points", 0))})
    return pd.DataFrame(rows)

