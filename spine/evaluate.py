"""Evaluation shared by training and the report: the label points as a truth table, and the landmark metrics.

`truth_frame` and `landmark_metrics` (points in world LPS mm) are what the landmark stage reports per fold and
what ``spine-report`` recomputes per fold, level and condition group; neither imports the training code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine.constants import CONDITION_GROUP, CONDITION_NAMES, CONDITIONS, LEVEL_NAMES, LEVELS

__all__ = ["landmark_metrics", "truth_frame"]


def truth_frame(coordinates: pd.DataFrame) -> pd.DataFrame:
    """Label points as ``study_id, condition, level, true_x, true_y, true_z`` (mean of duplicate rows)."""
    if coordinates.empty:
        return pd.DataFrame(columns=["study_id", "condition", "level", "true_x", "true_y", "true_z"])
    frame = coordinates.groupby(["study_id", "condition", "level"], as_index=False)[
        ["world_x", "world_y", "world_z"]].mean()
    return frame.rename(columns={"world_x": "true_x", "world_y": "true_y", "world_z": "true_z"})


def landmark_metrics(predictions: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Errors of predicted points against labelled ones (rows joined on study, condition, level).

    - ``median_mm``, ``p90_mm``, ``within_5mm``, ``within_10mm``: over all labelled points;
      ``median_mm/<level>``, ``p90_mm/<level>``: per disc level; ``median_mm/<group>``: per condition group.
    - ``level_acc``: share of points nearer to their own level's true point than to the true points of the
      neighbouring levels of the same condition (points with no labelled neighbour are not counted).
    """
    merged = predictions.merge(truth, on=["study_id", "condition", "level"], how="inner")
    if merged.empty:
        return {"n_points": 0.0}
    pred = merged[["world_x", "world_y", "world_z"]].to_numpy(float)
    true = merged[["true_x", "true_y", "true_z"]].to_numpy(float)
    err = np.linalg.norm(pred - true, axis=1)
    out = {"n_points": float(len(err)), "median_mm": float(np.median(err)), "p90_mm": float(np.percentile(err, 90)),
           "within_5mm": float((err <= 5).mean()), "within_10mm": float((err <= 10).mean())}
    # level identification: distance to the own level vs the neighbouring levels' true points
    lookup = {(int(r.study_id), r.condition, r.level): np.array([r.true_x, r.true_y, r.true_z])
              for r in truth.itertuples(index=False)}
    correct = np.full(len(merged), np.nan)
    for i, r in enumerate(merged.itertuples(index=False)):
        li = LEVEL_NAMES.index(r.level)
        neighbours = [lookup.get((int(r.study_id), r.condition, LEVEL_NAMES[j])) for j in (li - 1, li + 1)
                      if 0 <= j < len(LEVEL_NAMES)]
        neighbours = [n for n in neighbours if n is not None]
        if neighbours:
            correct[i] = float(err[i] < min(np.linalg.norm(pred[i] - n) for n in neighbours))
    judged = correct[np.isfinite(correct)]
    out["level_acc"] = float(judged.mean()) if judged.size else float("nan")
    for level_name, level in zip(LEVEL_NAMES, LEVELS):
        sel = (merged.level == level_name).to_numpy()
        if sel.any():
            out[f"median_mm/{level}"] = float(np.median(err[sel]))
            out[f"p90_mm/{level}"] = float(np.percentile(err[sel], 90))
    group = merged.condition.map({n: CONDITION_GROUP[c] for c, n in zip(CONDITIONS, CONDITION_NAMES)})
    for name in ("spinal", "foraminal", "subarticular"):
        sel = (group == name).to_numpy()
        if sel.any():
            out[f"median_mm/{name}"] = float(np.median(err[sel]))
            out[f"level_acc/{name}"] = float(np.nanmean(correct[sel])) if np.isfinite(correct[sel]).any() \
                else float("nan")
    return out
