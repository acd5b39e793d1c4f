"""Typed configuration of ``spine-report`` (``configs/report/report.yaml``). No torch here: a typo fails fast."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    run: str = ""  # a spine-train run folder: a grading run (the whole report) or a landmark run (its sections)
    out: str = ""  # folder for report.html; empty: <run>/report
    # The landmark run of the landmark sections and of the predicted points; empty: the one the grading run's
    # config names (a landmark run given as run is its own).
    landmarks: str = ""
    # RSNA-layout folder: train.csv (labels) and, on synthetic data, truth.csv + dataset.json (the oracle) and
    # test_labels.csv + oracle_submission.csv (the test row); empty: the data_dir recorded in the run's cache.json.
    data_dir: str = ""
    cache_dir: str = ""  # the preprocessing cache the images come from; empty: the run config's cache_dir
    worst: int = 6  # the worst out-of-fold studies shown with their images (by per-study metric or point error)
    dpi: int = 80  # resolution of the report's own figures (the confusion and reliability plots keep training's)

    def __post_init__(self) -> None:
        if not self.run:
            raise ValueError("run must name a spine-train run folder: spine-report run=runs/grading")
        if self.worst < 0:
            raise ValueError(f"worst must be >= 0, got {self.worst}")
        if not 20 <= self.dpi <= 300:
            raise ValueError(f"dpi must be in [20, 300], got {self.dpi}")
