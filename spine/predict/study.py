"""One study's answer and its line of the log: `Issue`, `StudyInfo`, the 25 rows (`study_frame`, `finalise`).

Shared by every step of ``spine-predict`` (:mod:`.volumes`, :mod:`.predictor`, :mod:`.run`); no torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from spine.constants import PROB_COLUMNS, study_row_ids
from spine.errors import SpineError

__all__ = ["FLOOR", "LOG_COLUMNS", "Issue", "PredictError", "StudyInfo", "finalise", "first_lines", "study_frame"]

FLOOR = 1e-6  # every written probability lies in [FLOOR, 1]
LOG_COLUMNS = ["study_id", "status", "answer", "reason", "seconds"]


class PredictError(SpineError, ValueError):
    """A configuration that cannot predict anything (no runs, a run without models, no listing)."""


@dataclass(frozen=True)
class Issue:
    """Something off in a study. ``effect``: ``note`` (answer unaffected), ``degraded`` (the model answered
    with less: a zero channel, one run fewer) or ``fatal`` (no model answer: the priors)."""

    kind: str  # short, countable: "missing Axial T2", "no landmark series", ...
    detail: str = ""
    effect: str = "degraded"

    def text(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


@dataclass
class StudyInfo:
    """One study's line of the log. ``status``: ok (the model on every input) or fallback; ``answer``: model or
    priors; ``reason``: every issue, ``; ``-separated (empty for a clean study)."""

    study_id: int
    status: str = "ok"
    answer: str = "model"
    issues: list[Issue] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reason(self) -> str:
        return "; ".join(i.text() for i in self.issues)

    def row(self) -> dict:
        return {"study_id": self.study_id, "status": self.status, "answer": self.answer, "reason": self.reason,
                "seconds": round(self.seconds, 3)}


def first_lines(text, limit: int = 160) -> str:
    """``text`` (an exception, a message) on one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finalise(probs: np.ndarray) -> np.ndarray:
    """(n, 3) rows: non-finite/negative -> 0 (an all-zero row uniform), normalised, clipped to [FLOOR, 1],
    renormalised."""
    p = np.where(np.isfinite(probs) & (probs >= 0), probs, 0.0).astype(np.float64)
    total = p.sum(1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
    p = np.clip(p, FLOOR, 1.0)
    return p / p.sum(1, keepdims=True)


def study_frame(study_id, probs: np.ndarray) -> pd.DataFrame:
    """25 rows ``row_id, normal_mild, moderate, severe`` of ``probs`` (25, 3) in LABEL_COLUMNS order."""
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(PROB_COLUMNS))
    frame.insert(0, "row_id", study_row_ids(study_id))
    return frame
