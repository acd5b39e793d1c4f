"""The numbers and figures of a run report, gathered from a run folder (and its landmark run, cache and data).

:func:`gather` returns a :class:`Report`: plain tables (pandas) and PNG bytes, no HTML (that is
:mod:`spine.report.render`). Nothing here trains or runs a model: everything comes from the files ``spine-train``
wrote (:mod:`spine.run_folder`), the labels, the cache the run trained on and, on synthetic data, the truth
behind the labels. A piece that is missing (no oracle, no landmark run, no cache, a study without a series)
never stops the report: its section says what is missing (``Report.missing``, ``StudyPage.notes``).

Grading run:

- metrics per fold and part, out of fold: the model, the class prior (fitted on the labels of the studies
  outside the fold) and, on synthetic data, the Bayes-optimal oracle (``truth.csv`` narrowing + the
  generator's label noise), all on the same scored rows, and the share of the prior-to-oracle gap the model
  closes; with ``test_labels.csv`` also the run's test submission (``submission.csv``) against the prior and
  ``oracle_submission.csv``;
- calibration: the metric of the uncalibrated OOF, of the OOF calibrated by the run's ``calibration.json``
  (fitted on that OOF: in sample) and cross-fitted (each fold calibrated by a fit on the others, two or more
  folds);
- confusion and reliability plots (:mod:`spine.plots`), reliability also after calibration;
- the ``worst`` OOF studies by their own metric: predicted against true grades, what the model saw (views or
  crops, built by the training builders from the cache at the landmark run's OOF points, as validation did),
  predicted against true points over sagittal slices.

Landmark run (the run itself, or the grading run's): metrics per fold (:func:`spine.evaluate.landmark_metrics`),
errors per level and condition group; a landmark run alone also gets its worst studies by
mean point error.

Modules: :mod:`.contents` (Report, StudyPage), :mod:`.sources` (what is read, opened once), :mod:`.scores` (the
metric tables), :mod:`.landmark_errors` (point errors), :mod:`.studies` (the images of the worst studies); this
module puts them together.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from spine.constants import LEVELS
from spine.errors import one_line
from spine.evaluate import truth_frame
from spine.metric import PARTS
from spine.plots import plot_confusion, plot_reliability
from spine.report import figures as F
from spine.report.contents import Report, StudyPage
from spine.report.landmark_errors import error_summary, landmark_fold_metrics, point_errors
from spine.report.scores import calibration_scores, grade_table, grading_scores, scorable, study_scores, test_scores
from spine.report.sources import ReportError, Sources
from spine.report.studies import grading_images, guarded, point_images
from spine.run_folder import CONFIG_YAML, METRICS_JSON, OOF_CSV

__all__ = ["ReportError", "gather"]


def gather(cfg) -> Report:
    """Everything the page shows; raises :class:`ReportError` only when ``cfg.run`` is no run folder."""
    src = Sources(cfg)
    run = src.run
    report = Report(run=run, stage=src.stage, created=datetime.now().isoformat(timespec="seconds"),
                    config_text=(run / CONFIG_YAML).read_text(), data_dir=src.data_dir,
                    cache_root=src.cache.root if src.cache is not None else None, landmark_run=src.landmark_run)
    if (run / METRICS_JSON).is_file():
        report.metrics_json = (run / METRICS_JSON).read_text()
    if src.landmark_run is not None and src.landmark_run != run and (src.landmark_run / CONFIG_YAML).is_file():
        report.landmark_config_text = (src.landmark_run / CONFIG_YAML).read_text()
    if src.data_dir is None:
        report.missing["data"] = (f"data_dir {cfg.data_dir or src.info.get('data_dir', '') or '(none recorded)'} "
                                  "is not a folder: no labels from it, no oracle")
    if src.cache is None:
        report.missing["cache"] = src.cache_note

    landmark_oof = _landmark_sections(report, src)
    if src.stage == "grading":
        _grading_sections(report, src, landmark_oof)
    elif cfg.worst > 0:
        _worst_landmark_studies(report, src, landmark_oof)
    return report


def _read_csv(path: Path, **read_csv) -> tuple[pd.DataFrame | None, str]:
    """(the table, '') or (None, why): a damaged table of the run costs its sections (listed as missing, with
    why, on the page and on stderr), not the report."""
    try:
        return pd.read_csv(path, **read_csv), ""
    except (OSError, ValueError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        return None, f"{path} is damaged ({type(err).__name__}: {one_line(err, 200)})"


def _landmark_sections(report: Report, src: Sources) -> pd.DataFrame | None:
    if src.landmark_run is None:
        report.missing["landmarks"] = src.landmark_note
        return None
    path = src.landmark_run / OOF_CSV
    if not path.is_file():
        report.missing["landmarks"] = f"{path} does not exist (no finished fold)"
        return None
    predicted, damage = _read_csv(path)
    if predicted is None:
        report.missing["landmarks"] = damage
        return None
    if src.cache is None:
        report.missing["landmarks"] = f"no label points to measure the errors against: {src.cache_note}"
        return predicted
    truth = truth_frame(src.cache.coordinates)
    errors = point_errors(predicted, truth)
    if errors.empty:
        report.missing["landmarks"] = "no predicted point of the landmark run has a label point in the cache"
        return predicted
    report.landmark_metrics = landmark_fold_metrics(predicted, truth)
    report.landmark_levels = error_summary(errors, "level", LEVELS)
    report.landmark_groups = error_summary(errors, "group", ["spinal", "foraminal", "subarticular"])
    report.figures["landmark_errors"] = F.landmark_error_figure(errors, src.cfg.dpi)
    return predicted


def _grading_sections(report: Report, src: Sources, landmark_oof: pd.DataFrame | None) -> None:
    cfg = src.cfg
    path = src.run / OOF_CSV
    try:
        labels = src.labels()
    except (OSError, ValueError) as err:
        labels, why = None, f"the labels are unreadable: {err}"
    else:
        why = "no labels: neither stage.labels nor <data_dir>/train.csv exists"
    if not path.is_file() or labels is None:
        what = f"{path} does not exist (no finished fold)" if not path.is_file() else why
        for section in ("metrics", "plots", "calibration", "worst"):
            report.missing[section] = what
        return
    oof, damage = _read_csv(path, dtype={"row_id": str})
    if oof is None:
        for section in ("metrics", "plots", "calibration", "worst"):
            report.missing[section] = damage
        return
    try:
        scorable(oof, labels)
    except ValueError as err:
        for section in ("metrics", "plots", "calibration", "worst"):
            report.missing[section] = f"{path} cannot be scored: {err}"
        return
    metrics, note = grading_scores(oof, labels, src.data_dir)
    test, test_note = test_scores(src.run, labels, src.data_dir)
    report.metrics = pd.concat([metrics, test], ignore_index=True) if test is not None else metrics
    notes = [n for n in (note, test_note) if n]
    if notes:
        report.missing["metrics"] = "; ".join(notes)
    report.figures["confusion"] = F.plot_png(plot_confusion, oof, labels)
    report.figures["reliability"] = F.plot_png(plot_reliability, oof, labels)
    table, params, calibrated, cal_notes = calibration_scores(oof, labels, src.run)
    report.calibration, report.calibration_params = table, params
    if calibrated is not None:
        report.figures["reliability_calibrated"] = F.plot_png(plot_reliability, calibrated, labels)
    if cal_notes:
        report.missing["calibration"] = "; ".join(cal_notes)
    if cfg.worst > 0:
        ranked = study_scores(oof, labels)
        report.worst_by = ("the study's own competition metric on its out-of-fold predictions (uncalibrated), "
                           "worst first")
        for row in ranked.head(cfg.worst).itertuples(index=False):
            page = StudyPage(study_id=int(row.study_id), fold=row.fold, loss=float(row.score),
                             parts={k: float(getattr(row, k)) for k in PARTS})
            page.grades = grade_table(page.study_id, oof, labels)
            guarded(grading_images, page, src, landmark_oof)
            guarded(point_images, page, src, landmark_oof)
            report.worst.append(page)


def _worst_landmark_studies(report: Report, src: Sources, predicted: pd.DataFrame | None) -> None:
    if predicted is None or src.cache is None:
        report.missing["worst"] = report.missing.get("landmarks", src.cache_note)
        return
    errors = point_errors(predicted, truth_frame(src.cache.coordinates))
    if errors.empty:
        report.missing["worst"] = "no predicted point has a label point"
        return
    ranked = errors.groupby("study_id").agg(mean=("error_mm", "mean"), fold=("fold", "first"))
    ranked = ranked.sort_values("mean", ascending=False, kind="stable")
    report.worst_by = "mean point error of the study's labelled points (mm), worst first"
    for study, row in ranked.head(src.cfg.worst).iterrows():
        page = StudyPage(study_id=int(study), fold=None if pd.isna(row["fold"]) else int(row["fold"]),
                         loss=float(row["mean"]))
        guarded(point_images, page, src, predicted)
        report.worst.append(page)
