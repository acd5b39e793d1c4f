"""The metric tables of a grading run: out-of-fold scores per fold and part beside the class prior and, on
synthetic data, the Bayes-optimal oracle (and the share of the prior-to-oracle gap the model closes); the test
submission against the synthetic test labels; each study's own score and grades; calibration before and after.

Rows are scored by the calibration's rule (:func:`scorable`); a table that cannot be scored gets NaN scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from spine.baselines import class_priors
from spine.calibrate import _scorable as calibration_scorable  # the calibration's rule for which rows are scored
from spine.calibrate import cross_fitted
from spine.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, PROB_COLUMNS, SEVERITIES, parse_row_id
from spine.io.tables import read_train_labels
from spine.metric import EPS, PARTS, score
from spine.run_folder import SUBMISSION_CSV, TEST_CSV, RunFolderError, read_calibration
from spine.synth.labels import oracle_submission

__all__ = ["SCORE_COLUMNS", "calibration_scores", "grade_table", "grading_scores", "oracle_predictions",
           "prior_predictions", "scorable", "study_scores", "test_scores"]

SCORE_COLUMNS = ["score", *PARTS]


def _column(rid: str) -> str:
    """The train.csv label column of a row id (``<study>_<condition>_<level>``)."""
    return rid.split("_", 1)[1]


def scorable(predictions: pd.DataFrame, labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels, submission) of the rows the metric scores, by the calibration's rule (raises ValueError when
    ``predictions`` cannot be scored)."""
    return calibration_scorable(predictions[["row_id", *PROB_COLUMNS]], labels)


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
    keys = [parse_row_id(r) for r in ids]
    rows = pd.DataFrame({"study_id": [k[0] for k in keys], "condition": [k[1] for k in keys],
                         "level": [k[2] for k in keys], "narrowing": [narrowing[r] for r in ids]})
    return oracle_submission(rows, sigma), ""  # optimal for the metric on exactly these rows


def grading_scores(oof: pd.DataFrame, labels: pd.DataFrame, data_dir: Path | None = None
                   ) -> tuple[pd.DataFrame, str]:
    """(metrics table, note): per fold and over all folds, the model's OOF score and parts beside the class
    prior's (fitted on the labels of the studies outside the fold) and the oracle's on the same rows, and the
    share of the prior-to-oracle gap the model closes (``(prior - model) / (prior - oracle)``).

    Columns ``fold`` (a number or ``all``), ``what`` (model | prior | oracle | gap closed), ``rows``, ``studies``
    and ``SCORE_COLUMNS``. The note says why there is no oracle ('' when there is one).
    """
    folds = sorted(int(f) for f in oof["fold"].dropna().unique()) if "fold" in oof.columns else []
    kept, submission = scorable(oof, labels)
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
    if data_dir is None or not (data_dir / "test_labels.csv").is_file():
        return None, ""  # real data: the test labels are hidden
    path = next((run / n for n in (SUBMISSION_CSV, TEST_CSV) if (run / n).is_file()), None)
    if path is None:
        return None, "the run has no submission.csv or test.csv: no test row"
    try:
        truth = read_train_labels(data_dir / "test_labels.csv")
        kept, submission = scorable(pd.read_csv(path, dtype={"row_id": str}), truth)
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
    kept, submission = scorable(oof, labels)
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
    notes = []
    kept, submission = scorable(oof, labels)
    rows = [{"what": "before (uncalibrated OOF)", **_scores(kept, submission)}]
    calibrated = None
    try:
        calibration = read_calibration(run)
    except RunFolderError as err:  # named in the message
        calibration = None
        notes.append(f"calibration.json unreadable: {err}")
    params = None
    if calibration is None and not notes:
        notes.append("the run has no calibration.json")
    if calibration is not None:
        params = calibration.to_dict()
        calibrated = calibration.apply(oof[["row_id", *PROB_COLUMNS]])
        rows.append({"what": "after, the run's calibration.json (in sample: fitted on this OOF)",
                     **_scores(kept, scorable(calibrated, kept)[1])})
    folds = oof["fold"].dropna().nunique() if "fold" in oof.columns else 0
    if folds >= 2:
        honest = cross_fitted(oof[["row_id", *PROB_COLUMNS, "fold"]], labels)
        rows.append({"what": "after, cross-fitted (each fold calibrated by a fit on the others)",
                     **_scores(kept, scorable(honest, kept)[1])})
    else:
        notes.append(f"{folds} fold(s) out of fold: no cross-fitted estimate (the in-sample one is optimistic)")
    return pd.DataFrame(rows, columns=["what", *SCORE_COLUMNS]), params, calibrated, notes

