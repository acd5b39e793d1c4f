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
- confusion and reliability plots (:mod:`spine.train.plots`), reliability also after calibration;
- the ``worst`` OOF studies by their own metric: predicted against true grades, what the model saw (views or
  crops, built by the training builders from the cache at the landmark run's OOF points, as validation did),
  predicted against true points over sagittal slices.

Landmark run (the run itself, or the grading run's): metrics per fold (:func:`spine.train.landmarks.
landmark_metrics`), errors per level and condition group; a landmark run alone also gets its worst studies by
mean point error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import (CONDITION_GROUP, CONDITION_NAMES, CONDITIONS, LABEL_COLUMNS, LEVEL_NAMES, LEVELS,
                             PROB_COLUMNS, SEVERITIES)
from spine.metric import EPS, PARTS, score
from spine.report import figures as F

log = logging.getLogger(__name__)

__all__ = ["Report", "ReportError", "StudyPage", "gather", "grading_scores", "oracle_predictions",
           "study_scores"]

SCORE_COLUMNS = ["score", *PARTS]
_COND = dict(zip(CONDITION_NAMES, CONDITIONS))
_LEVEL = dict(zip(LEVEL_NAMES, LEVELS))
_SERIES_SHORT = {"Sagittal T1": "T1", "Sagittal T2/STIR": "T2", "Axial T2": "ax T2"}  # crop channels
_VIEW_SERIES = {"Sagittal T1": "T1", "Sagittal T2/STIR": "T2", "Axial T2": "T2"}  # after the view's plane


class ReportError(Exception):
    """The run folder cannot be reported on at all (not a run folder, unreadable config)."""


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


# ------------------------------------------------------------------------------------------------- scoring
def _column(rid: str) -> str:
    """The train.csv label column of a row id (``<study>_<condition>_<level>``)."""
    return rid.split("_", 1)[1]


def _scorable(predictions: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    from spine.calibrate import _scorable as scorable  # the calibration's rule for which rows are scored

    return scorable(predictions[["row_id", *PROB_COLUMNS]], labels)


def _scores(labels: pd.DataFrame, submission: pd.DataFrame) -> dict[str, float]:
    try:
        return score(labels, submission)
    except ValueError:
        return {k: float("nan") for k in SCORE_COLUMNS}


def prior_predictions(row_ids, priors: np.ndarray) -> pd.DataFrame:
    """Submission rows ``row_ids`` predicting the (25, 3) ``priors`` (LABEL_COLUMNS order)."""
    index = {c: n for n, c in enumerate(LABEL_COLUMNS)}
    ids = list(row_ids)
    table = priors[[index[_column(r)] for r in ids]] if ids else np.zeros((0, 3))
    return pd.DataFrame({"row_id": ids, **dict(zip(PROB_COLUMNS, table.T))})


def oracle_predictions(row_ids, data_dir: Path | None) -> tuple[pd.DataFrame | None, str]:
    """(Bayes-optimal probabilities of ``row_ids``, "") from a synthetic dataset's ``truth.csv`` (latent
    narrowing) and ``dataset.json`` (the label noise), or (None, why not)."""
    from spine.synth.labels import oracle_probabilities

    if data_dir is None:
        return None, "no data_dir"
    truth_path, card_path = data_dir / "truth.csv", data_dir / "dataset.json"
    if not truth_path.is_file():
        return None, f"{truth_path} does not exist (not synthetic data): no oracle"
    try:
        sigma = float(json.loads(card_path.read_text())["config"]["label_noise"])
        truth = pd.read_csv(truth_path)
        narrowing = dict(zip(truth.study_id.astype(str) + "_" + truth.condition + "_" + truth.level,
                             truth.narrowing.astype(float)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return None, f"oracle unavailable: {card_path.name} / {truth_path.name} unreadable ({err})"
    ids = list(row_ids)
    lacking = [r for r in ids if r not in narrowing]
    if lacking:
        return None, f"{truth_path} lacks {len(lacking)} of the {len(ids)} scored rows (e.g. {lacking[0]}): no oracle"
    probs = oracle_probabilities(np.array([narrowing[r] for r in ids]), sigma).reshape(len(ids), 3)
    return pd.DataFrame({"row_id": ids, **dict(zip(PROB_COLUMNS, probs.T))}), ""


def grading_scores(oof: pd.DataFrame, labels: pd.DataFrame, data_dir: Path | None = None
                   ) -> tuple[pd.DataFrame, str]:
    """(metrics table, note): per fold and over all folds, the model's OOF score and parts beside the class
    prior's (fitted on the labels of the studies outside the fold) and the oracle's on the same rows, and the
    share of the prior-to-oracle gap the model closes (``(prior - model) / (prior - oracle)``).

    Columns ``fold`` (a number or ``all``), ``what`` (model | prior | oracle | gap closed), ``rows``, ``studies``
    and ``SCORE_COLUMNS``. The note says why there is no oracle ('' when there is one).
    """
    from spine.baselines import class_priors

    folds = sorted(int(f) for f in oof["fold"].dropna().unique()) if "fold" in oof.columns else []
    kept, submission = _scorable(oof, labels)
    oracle_all, note = oracle_predictions(submission.row_id, data_dir)
    fold_of = dict(zip(oof.row_id, oof["fold"])) if "fold" in oof.columns else {}
    fold = submission.row_id.map(fold_of).to_numpy()
    study = submission.row_id.str.split("_", n=1).str[0]
    prior_all = prior_predictions(submission.row_id, class_priors(labels))
    for f in folds:  # each fold's rows: the prior of the labels outside that fold
        inside = fold == f
        outside = labels[~labels.study_id.astype(str).isin(set(study[inside]))]
        if len(outside):
            prior_all.loc[inside, list(PROB_COLUMNS)] = prior_predictions(
                submission.row_id[inside], class_priors(outside))[list(PROB_COLUMNS)].to_numpy()
    rows = []
    for name in [*folds, "all"]:
        sel = (fold == name) if name != "all" else np.ones(len(submission), bool)
        ids = set(study[sel])
        lab = kept[kept.study_id.astype(str).isin(ids)]
        common = {"fold": name, "rows": int(sel.sum()), "studies": len(ids)}
        model = _scores(lab, submission[sel])
        prior = _scores(lab, prior_all[sel])
        rows += [{**common, "what": "model", **model}, {**common, "what": "prior", **prior}]
        if oracle_all is not None:
            oracle = _scores(lab, oracle_all[sel])
            rows.append({**common, "what": "oracle", **oracle})
            rows.append({**common, "what": "gap closed", **{k: _gap(prior[k], model[k], oracle[k])
                                                            for k in SCORE_COLUMNS}})
    return pd.DataFrame(rows, columns=["fold", "what", "rows", "studies", *SCORE_COLUMNS]), note


def _gap(prior: float, model: float, oracle: float) -> float:
    gap = prior - oracle
    return float((prior - model) / gap) if math.isfinite(gap) and gap > 1e-12 and math.isfinite(model) \
        else float("nan")


def test_scores(run: Path, labels: pd.DataFrame, data_dir: Path | None) -> tuple[pd.DataFrame | None, str]:
    """The run's test submission (``submission.csv``, else ``test.csv``) against ``test_labels.csv`` of a
    synthetic dataset, beside the class prior of all training labels and ``oracle_submission.csv``: rows with
    ``fold = test`` as in :func:`grading_scores`, or (None, why not)."""
    from spine.baselines import class_priors

    if data_dir is None or not (data_dir / "test_labels.csv").is_file():
        return None, ""  # real data: the test labels are hidden
    path = next((run / n for n in ("submission.csv", "test.csv") if (run / n).is_file()), None)
    if path is None:
        return None, "the run has no submission.csv or test.csv: no test row"
    try:
        from spine.io.tables import read_train_labels

        truth = read_train_labels(data_dir / "test_labels.csv")
        kept, submission = _scorable(pd.read_csv(path, dtype={"row_id": str}), truth)
    except (OSError, ValueError, KeyError) as err:
        return None, f"test row unavailable: {err}"
    if submission.empty:
        return None, f"{path.name} has no row of the studies in test_labels.csv"
    common = {"fold": f"test ({path.name})", "rows": len(submission),
              "studies": int(submission.row_id.str.split("_", n=1).str[0].nunique())}
    model = _scores(kept, submission)
    prior = _scores(kept, prior_predictions(submission.row_id, class_priors(labels)))
    rows = [{**common, "what": "model", **model}, {**common, "what": "prior", **prior}]
    oracle_path = data_dir / "oracle_submission.csv"
    if oracle_path.is_file():
        oracle_sub = pd.read_csv(oracle_path, dtype={"row_id": str}).set_index("row_id")
        if set(submission.row_id) <= set(oracle_sub.index):
            oracle = _scores(kept, oracle_sub.loc[submission.row_id, list(PROB_COLUMNS)].reset_index())
            rows += [{**common, "what": "oracle", **oracle},
                     {**common, "what": "gap closed", **{k: _gap(prior[k], model[k], oracle[k])
                                                         for k in SCORE_COLUMNS}}]
    return pd.DataFrame(rows), ""


def study_scores(oof: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The metric of each OOF study on its own: ``study_id, fold`` + ``SCORE_COLUMNS``, worst first."""
    kept, submission = _scorable(oof, labels)
    fold_of = dict(zip(oof.row_id, oof["fold"])) if "fold" in oof.columns else {}
    study = submission.row_id.str.split("_", n=1).str[0]
    by_study = kept.assign(key=kept.study_id.astype(str)).groupby("key")
    rows = []
    for key, sub in submission.groupby(study, sort=False):
        if key not in by_study.groups:
            continue
        fold = fold_of.get(sub.row_id.iloc[0])
        rows.append({"study_id": int(key), "fold": None if fold is None or pd.isna(fold) else int(fold),
                     **_scores(by_study.get_group(key).drop(columns="key"), sub)})
    frame = pd.DataFrame(rows, columns=["study_id", "fold", *SCORE_COLUMNS])
    return frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def grade_table(study: int, oof: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Predicted against true grades of one study: ``condition, level, true`` (a grade or ''), the three
    probabilities and ``loss`` (the metric's ``-log p[true]``, NaN where unlabelled), 25 rows."""
    predicted = oof.set_index("row_id")
    row = labels[labels.study_id.astype(np.int64) == int(study)]
    rows = []
    for condition in CONDITIONS:
        for level in LEVELS:
            rid = f"{study}_{condition}_{level}"
            true = row.iloc[0][f"{condition}_{level}"] if len(row) else None
            true = true if isinstance(true, str) and true in SEVERITIES else ""
            p = predicted.loc[rid, list(PROB_COLUMNS)].to_numpy(float) if rid in predicted.index \
                else np.full(3, np.nan)
            q = np.clip(p, EPS, 1 - EPS)
            q = q / q.sum()
            loss = float(-np.log(q[SEVERITIES.index(true)])) if true and np.isfinite(q).all() else float("nan")
            rows.append({"condition": condition, "level": level, "true": true,
                         **dict(zip(PROB_COLUMNS, p.tolist())), "loss": loss})
    return pd.DataFrame(rows)


def calibration_scores(oof: pd.DataFrame, labels: pd.DataFrame, run: Path
                       ) -> tuple[pd.DataFrame, dict | None, pd.DataFrame | None, list[str]]:
    """(table, the run's calibration.json, calibrated OOF or None, notes): the metric of the uncalibrated OOF,
    after the run's calibration (in sample: fitted on this OOF) and cross-fitted (two or more folds)."""
    from spine.calibrate import cross_fitted
    from spine.run_folder import read_calibration

    notes = []
    kept, submission = _scorable(oof, labels)
    rows = [{"what": "before (uncalibrated OOF)", **_scores(kept, submission)}]
    calibrated = None
    try:
        calibration = read_calibration(run)
    except (ValueError, KeyError) as err:
        calibration = None
        notes.append(f"calibration.json unreadable: {err}")
    params = None
    if calibration is None and not notes:
        notes.append("the run has no calibration.json")
    if calibration is not None:
        params = calibration.to_dict()
        calibrated = calibration.apply(oof[["row_id", *PROB_COLUMNS]])
        rows.append({"what": "after, the run's calibration.json (in sample: fitted on this OOF)",
                     **_scores(kept, _scorable(calibrated, kept)[1])})
    folds = oof["fold"].dropna().nunique() if "fold" in oof.columns else 0
    if folds >= 2:
        honest = cross_fitted(oof[["row_id", *PROB_COLUMNS, "fold"]], labels)
        rows.append({"what": "after, cross-fitted (each fold calibrated by a fit on the others)",
                     **_scores(kept, _scorable(honest, kept)[1])})
    else:
        notes.append(f"{folds} fold(s) out of fold: no cross-fitted estimate (the in-sample one is optimistic)")
    return pd.DataFrame(rows, columns=["what", *SCORE_COLUMNS]), params, calibrated, notes


# ------------------------------------------------------------------------------------------------ landmarks
def point_errors(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Predicted points joined to the label points (``truth``: :func:`spine.train.landmarks.truth_frame`):
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


LANDMARK_KEYS = ["n_points", "median_mm", "p90_mm", "within_5mm", "within_10mm", "level_acc"]


def landmark_fold_metrics(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """:func:`spine.train.landmarks.landmark_metrics` per fold and over all folds (``LANDMARK_KEYS``)."""
    from spine.train.landmarks import landmark_metrics

    folds = sorted(int(f) for f in predicted["fold"].dropna().unique()) if "fold" in predicted.columns else []
    rows = []
    for fold in [*folds, "all"]:
        part = predicted if fold == "all" else predicted[predicted["fold"] == fold]
        m = landmark_metrics(part, truth)
        rows.append({"fold": fold, "studies": int(part.study_id.nunique()),
                     **{k: m.get(k, np.nan) for k in LANDMARK_KEYS}, "n_points": int(m.get("n_points", 0))})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ gathering
class _Sources:
    """What the report reads, opened once: the run, its landmark run, the cache, the data folder."""

    def __init__(self, cfg) -> None:
        from spine.config import ConfigError
        from spine.run_folder import load_run_config, read_cache_info

        self.cfg = cfg
        self.run = Path(cfg.run)
        self._volumes: dict = {}
        try:
            self.tcfg = load_run_config(self.run)
        except (FileNotFoundError, ConfigError) as err:
            raise ReportError(str(err)) from None
        self.stage = self.tcfg.stage.name
        self.info = read_cache_info(self.run) or {}
        self.data_dir = self._data_dir()
        self.cache, self.cache_note = self._cache()
        self.landmark_run, self.landmark_note = self._landmark_run()

    def _data_dir(self) -> Path | None:
        text = self.cfg.data_dir or self.info.get("data_dir", "")
        if not text:
            return None
        path = Path(text)
        return path if path.is_dir() else None

    def _cache(self):
        from spine.preprocess.cache import Cache, CacheError

        where = self.cfg.cache_dir or self.tcfg.cache_dir
        if not where:
            return None, "no cache_dir (the run's config names none): no images"
        cache_id = self.info.get("cache_id", "")
        tried = []
        for candidate in ([Path(where) / cache_id] if cache_id else []) + [Path(where)]:
            try:
                cache = Cache.open(candidate)
            except (CacheError, FileNotFoundError, OSError) as err:
                tried.append(str(err))
                continue
            if cache_id and cache.cache_id != cache_id:
                tried.append(f"{cache.root} is cache {cache.cache_id}, the run trained on {cache_id}")
                continue
            return cache, ""
        return None, f"the run's cache cannot be opened ({'; '.join(tried)}): no images, no label points"

    def _landmark_run(self) -> tuple[Path | None, str]:
        if self.stage == "landmarks":
            return self.run, ""
        text = self.cfg.landmarks or self.tcfg.landmarks
        if not text:
            return None, ("no landmark run: the grading run's config names none (its validation inputs were "
                          "taken at the label points); landmarks=<run> adds one")
        path = Path(text)
        if not (path / "oof.csv").is_file():
            return None, f"landmark run {path} has no oof.csv"
        return path, ""

    def labels(self) -> pd.DataFrame | None:
        from spine.io.tables import read_train_labels

        stage_labels = getattr(self.tcfg.stage, "labels", "")
        path = Path(stage_labels) if stage_labels else (self.data_dir / "train.csv" if self.data_dir else None)
        if path is None or not path.is_file():
            return None
        return read_train_labels(path)

    # ---- per study
    def volume(self, study: int, description: str, percentiles=(1.0, 99.0)):
        """(the study's first ok series of that type, '') or (None, why not); each series loaded once."""
        key = (int(study), description, tuple(float(p) for p in percentiles))
        if key not in self._volumes:
            self._volumes[key] = self._load_volume(study, description, percentiles)
        return self._volumes[key]

    def _load_volume(self, study: int, description: str, percentiles):
        if self.cache is None:
            return None, "no cache"
        ids = self.cache.series_of(study, description)
        if not ids:
            return None, f"study {study} has no {description} series in the cache"
        try:
            return self.cache.load_volume(study, ids[0], percentiles), ""
        except (KeyError, OSError, ValueError) as err:
            return None, f"{description} series {ids[0]} unreadable: {err}"


def gather(cfg) -> Report:
    """Everything the page shows; raises :class:`ReportError` only when ``cfg.run`` is no run folder."""
    src = _Sources(cfg)
    run = src.run
    report = Report(run=run, stage=src.stage, created=datetime.now().isoformat(timespec="seconds"),
                    config_text=(run / "config.yaml").read_text(), data_dir=src.data_dir,
                    cache_root=src.cache.root if src.cache is not None else None, landmark_run=src.landmark_run)
    if (run / "metrics.json").is_file():
        report.metrics_json = (run / "metrics.json").read_text()
    if src.landmark_run is not None and src.landmark_run != run and (src.landmark_run / "config.yaml").is_file():
        report.landmark_config_text = (src.landmark_run / "config.yaml").read_text()
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


def _landmark_sections(report: Report, src: _Sources) -> pd.DataFrame | None:
    from spine.train.landmarks import truth_frame

    if src.landmark_run is None:
        report.missing["landmarks"] = src.landmark_note
        return None
    path = src.landmark_run / "oof.csv"
    if not path.is_file():
        report.missing["landmarks"] = f"{path} does not exist (no finished fold)"
        return None
    predicted = pd.read_csv(path)
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


def _grading_sections(report: Report, src: _Sources, landmark_oof: pd.DataFrame | None) -> None:
    from spine.train.plots import plot_confusion, plot_reliability

    cfg = src.cfg
    path = src.run / "oof.csv"
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
    oof = pd.read_csv(path, dtype={"row_id": str})
    try:
        _scorable(oof, labels)
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
            _guarded(_grading_images, page, src, landmark_oof)
            _guarded(_point_images, page, src, landmark_oof)
            report.worst.append(page)


def _worst_landmark_studies(report: Report, src: _Sources, predicted: pd.DataFrame | None) -> None:
    from spine.train.landmarks import truth_frame

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
        _guarded(_point_images, page, src, predicted)
        report.worst.append(page)


# ------------------------------------------------------------------------------------------------ images
def _guarded(draw, page: StudyPage, *args) -> None:
    """``draw(page, *args)``; a failure becomes a note of the study (one odd study never costs the report)."""
    try:
        draw(page, *args)
    except Exception as err:  # noqa: BLE001
        log.warning("study %s: %s failed: %s: %s", page.study_id, draw.__name__.strip("_"), type(err).__name__, err)
        page.notes.append(f"{draw.__name__.strip('_').replace('_', ' ')} failed: {type(err).__name__}: {err}")


def _study_points(study: int, src: _Sources, predicted: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) (K, L, 3) points of one study, LPS mm, NaN where missing."""
    from spine.data.grading import point_table

    empty = np.full((len(CONDITIONS), len(LEVELS), 3), np.nan)
    pred = point_table(predicted[predicted.study_id == study], [study])[0] if predicted is not None else empty
    coordinates = src.cache.coordinates if src.cache is not None else None
    true = point_table(coordinates[coordinates.study_id == study], [study])[0] if coordinates is not None else empty
    return pred, true


def _reads_views(src: _Sources) -> bool:
    from spine.run_folder import MODEL_JSON, fold_dirs, read_model_json

    for fold in fold_dirs(src.run):
        if (fold / MODEL_JSON).is_file():
            return "view_shape" in read_model_json(fold)[1]
    from spine.models import model_arguments

    return "view_shape" in model_arguments(src.tcfg.model.name)


def _grading_images(page: StudyPage, src: _Sources, landmark_oof: pd.DataFrame | None) -> None:
    """What the grading model saw of the study: its views or crops, built from the cache by the training
    builders at the landmark run's OOF points (the label points where it has none, as validation did)."""
    from spine.data.crops import build_crops, fill_centres, level_axes, level_centres
    from spine.data.views import ViewSet, build_views

    if src.cache is None:
        page.notes.append(f"no model inputs: {src.cache_note}")
        return
    s = src.tcfg.stage
    pred, true = _study_points(page.study_id, src, landmark_oof)
    if np.isfinite(pred).all(-1).any():
        points, where = pred, "at the landmark run's out-of-fold points"
    else:
        points, where = true, "at the label points (no landmark prediction for this study)"
    if not np.isfinite(points).all(-1).any():
        page.notes.append("no model inputs: the study has neither predicted nor label points")
        return
    try:
        views = ViewSet.from_config(s.views) if _reads_views(src) else None
    except (ValueError, TypeError, KeyError) as err:
        page.notes.append(f"no model inputs: the run's views do not build ({err})")
        return
    percentiles = tuple(float(p) for p in s.percentiles)
    series = views.series if views is not None else list(s.series)
    volumes = {}
    for description in series:
        volumes[description], why = src.volume(page.study_id, description, percentiles)
        if volumes[description] is None:
            page.notes.append(f"{why}: its images are blank (as the model saw them)")
    if all(v is None for v in volumes.values()):
        page.notes.append("no model inputs: none of the run's series is in the cache for this study")
        return
    title = f"study {page.study_id}: the model's input {where}"
    grades = page.grades.set_index(["condition", "level"]) if page.grades is not None else None
    if views is not None:
        images, _ = build_views(volumes, points, views, s.crop.align)
        names = [f"{'sag' if spec.plane == 'sagittal' else 'ax'} {_VIEW_SERIES.get(spec.series, spec.series)}"
                 for condition in CONDITIONS for spec in views.groups[CONDITION_GROUP[condition]]]
        cells = {}
        if grades is not None:
            for lv, level in enumerate(LEVELS):
                for k, condition in enumerate(CONDITIONS):
                    g = grades.loc[(condition, level)]
                    if g["true"]:
                        p = float(g[PROB_COLUMNS[SEVERITIES.index(g["true"])]])
                        cells[(lv, k)] = f"{F.GRADE_SHORT[SEVERITIES.index(g['true'])]} p={p:.2f}"
                    else:
                        cells[(lv, k)] = "unlabelled"
        page.figures[f"views (middle slice of each; under each condition: true grade, its predicted "
                     f"probability) {where}"] = F.views_figure(images, names, cells, title, src.cfg.dpi)
    else:
        centres = fill_centres(level_centres(points))
        crops, _ = build_crops([volumes[d] for d in series], centres, level_axes(centres, s.crop.align),
                               s.crop.size, s.crop.mm)
        page.figures[f"crops (mid-sagittal and mid-axial slice of each channel) {where}"] = F.crops_figure(
            crops, [_SERIES_SHORT.get(d, d) for d in series], title, src.cfg.dpi)


_PANELS = (("spinal_canal_stenosis", "Sagittal T2/STIR", "canal on the Sagittal T2/STIR"),
           ("left_neural_foraminal_narrowing", "Sagittal T1", "left foramen on the Sagittal T1"),
           ("right_neural_foraminal_narrowing", "Sagittal T1", "right foramen on the Sagittal T1"))


def _point_images(page: StudyPage, src: _Sources, predicted: pd.DataFrame | None) -> None:
    """Predicted against true points over sagittal slices through them, and the per-point errors."""
    if src.cache is None:
        page.notes.append(f"no points over images: {src.cache_note}")
        return
    if predicted is None:
        page.notes.append("no predicted points: no landmark run (the true points are drawn alone)")
    pred, true = _study_points(page.study_id, src, predicted)
    rows = []
    for k, condition in enumerate(CONDITIONS):
        for lv, level in enumerate(LEVELS):
            if np.isfinite(pred[k, lv]).all() and np.isfinite(true[k, lv]).all():
                rows.append({"condition": condition, "level": level,
                             "error_mm": float(np.linalg.norm(pred[k, lv] - true[k, lv]))})
    page.point_errors = pd.DataFrame(rows, columns=["condition", "level", "error_mm"])
    panels = []
    for condition, description, name in _PANELS:
        k = CONDITIONS.index(condition)
        panel = {"title": name}
        reference = true[k] if np.isfinite(true[k]).all(-1).any() else pred[k]
        finite = reference[np.isfinite(reference).all(-1)]
        volume, why = src.volume(page.study_id, description)
        if not len(finite):
            panel["missing"] = "no point of this condition"
        elif volume is None:
            panel["missing"] = why
        else:
            grid = F.sagittal_grid(finite.mean(axis=0))
            panel["image"] = volume.sample(grid)[0][0]
            panel["true"], panel["pred"] = grid.world_to_index(true[k]), grid.world_to_index(pred[k])
            panel["levels"] = np.arange(len(LEVELS))
            if not np.isfinite(panel["pred"]).all(-1).any() and predicted is not None:
                panel["title"] += " (no prediction)"
        if volume is None and len(finite):
            page.notes.append(why)
        panels.append(panel)
    page.figures["predicted (x) against true (o) points over sagittal slices sampled from the cache through the "
                 "true points"] = F.points_figure(panels, f"study {page.study_id}", src.cfg.dpi)
