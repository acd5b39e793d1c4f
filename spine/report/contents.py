"""What a run report holds: :class:`Report` (the page's tables, PNG figures and what is missing) and
:class:`StudyPage` (one of the worst out-of-fold studies). Plain data, no HTML (:mod:`spine.report.render`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

__all__ = ["LANDMARK_KEYS", "Report", "StudyPage"]

# the landmark metrics of `Report.landmark_metrics` (`spine.report.landmark_errors.landmark_fold_metrics`)
LANDMARK_KEYS = ["n_points", "median_mm", "p90_mm", "within_5mm", "within_10mm", "level_acc"]


@dataclass
class StudyPage:
    """One of the worst out-of-fold studies."""

    study_id: int
    fold: int | None
    loss: float  # grading: the study's own metric score; landmarks: its mean point error (mm)
    parts: dict[str, float] = field(default_factory=dict)  # grading: the metric's parts on the study
    grades: pd.DataFrame | None = None  # condition, level, true, normal_mild, moderate, severe, loss
    point_errors: pd.DataFrame | None = None  # condition, level, error_mm (labelled, predicted points)
    figures: dict[str, bytes] = field(default_factory=dict)  # caption -> PNG
    notes: list[str] = field(default_factory=list)  # what is missing for this study


@dataclass
class Report:
    """The numbers and figures of one run's page (:func:`spine.report.gather.gather`)."""

    run: Path
    stage: str  # grading | landmarks
    created: str
    config_text: str
    metrics_json: str = ""  # the run's metrics.json as written by training
    landmark_run: Path | None = None
    landmark_config_text: str = ""
    data_dir: Path | None = None
    cache_root: Path | None = None
    missing: dict[str, str] = field(default_factory=dict)  # section id -> what is missing there
    metrics: pd.DataFrame | None = None  # fold, rows, studies, what (model/prior/oracle/gap closed) + scores
    calibration: pd.DataFrame | None = None  # what (before/after ...) + scores
    calibration_params: dict | None = None  # the run's calibration.json
    # PNGs by name: confusion, reliability, reliability_calibrated, landmark_errors
    figures: dict[str, bytes] = field(default_factory=dict)
    landmark_metrics: pd.DataFrame | None = None  # per fold (+ all): n_points, median_mm, p90_mm, ...
    landmark_levels: pd.DataFrame | None = None  # per level: n, median_mm, p90_mm, mean_mm, max_mm, within_5mm
    landmark_groups: pd.DataFrame | None = None  # per condition group, same columns
    worst: list[StudyPage] = field(default_factory=list)
    worst_by: str = ""  # how the worst studies were ranked
