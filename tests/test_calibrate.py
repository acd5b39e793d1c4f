"""Tests of spine.calibrate (calibration of OOF predictions) and the grading plots in spine.plots."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from spine.calibrate import (
    FLOOR,
    Calibration,
    _spinal_parts,
    calibration_report,
    cross_fitted,
    fit_calibration,
    labelled_predictions,
)
from spine.constants import (
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    PROB_COLUMNS,
    SEVERITIES,
    SEVERITY_WEIGHTS,
    label_column,
    row_id,
)
from spine.metric import score
from spine.plots import plot_confusion, plot_reliability

N_STUDIES = 120
KEYS = [(c, lv) for c in CONDITIONS for lv in LEVELS]  # LABEL_COLUMNS order
SPINAL = CONDITIONS[0]
COLS = list(PROB_COLUMNS)


def _synthetic(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Labels sampled from known grade probabilities q; returns (labels, r, row ids) where r ∝ q * (1, 2, 4)
    is the prediction that minimises the metric's weighted log loss, i.e. "calibrated for the metric"."""
    rng = np.random.default_rng(seed)
    studies = np.arange(N_STUDIES) + 1000
    logits = rng.normal(size=(N_STUDIES * len(KEYS), 3)) * 1.2 + np.array([1.5, 0.0, -0.8])
    q = np.exp(logits)
    q /= q.sum(axis=1, keepdims=True)
    y = (rng.random(len(q))[:, None] > q.cumsum(axis=1)).sum(axis=1).clip(0, 2)
    grades = np.array(SEVERITIES)[y.reshape(N_STUDIES, len(KEYS))]
    labels = pd.DataFrame({"study_id": studies, **{c: grades[:, j] for j, c in enumerate(LABEL_COLUMNS)}})
    r = q * np.asarray(SEVERITY_WEIGHTS)
    r /= r.sum(axis=1, keepdims=True)
    return labels, r, [row_id(s, c, lv) for s in studies for c, lv in KEYS]


LABELS, CALIBRATED, ROW_IDS = _synthetic()


def predictions(power: float = 1.0, folds: int = 3) -> pd.DataFrame:
    """Submission-format OOF of the metric-calibrated probabilities raised to ``power`` (> 1 over-confident),
    with a fold column (studies dealt round-robin)."""
    p = CALIBRATED ** power
    p /= p.sum(axis=1, keepdims=True)
    frame = pd.DataFrame(p, columns=COLS)
    frame.insert(0, "row_id", ROW_IDS)
    frame["fold"] = np.repeat(np.arange(N_STUDIES) % folds, len(KEYS))
    return frame


def submission_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["row_id", *COLS]]


@pytest.fixture(scope="module")
def over() -> tuple[pd.DataFrame, Calibration]:
    frame = predictions(3.0)
    return frame, fit_calibration(frame, LABELS)


def test_over_confident_predictions_get_temperatures_above_one_and_a_better_score(over):
    frame, calibration = over
    assert all(2.0 < t < 4.0 for t in calibration.temperature.values()), calibration.temperature
    before = score(LABELS, submission_only(frame))["score"]
    after = score(LABELS, submission_only(calibration.apply(frame)))["score"]
    assert after < before - 0.1
    assert calibration.score_before == pytest.approx(before) and calibration.score_after == pytest.approx(after)
    assert calibration.fitted_on == N_STUDIES * len(KEYS) and calibration.fitted_on_studies == N_STUDIES


def test_under_confident_predictions_get_temperatures_below_one():
    frame = predictions(1.0 / 3.0)
    calibration = fit_calibration(frame, LABELS)
    assert all(0.25 <= t < 0.5 for t in calibration.temperature.values()), calibration.temperature
    assert score(LABELS, submission_only(calibration.apply(frame)))["score"] < \
        score(LABELS, submission_only(frame))["score"]


def test_severe_scale_minimises_the_metric(over):
    frame, calibration = over
    assert calibration.any_severe_scale != 1.0

    def at(scale: float) -> float:
        changed = Calibration(temperature=calibration.temperature, any_severe_scale=scale)
        return score(LABELS, submission_only(changed.apply(frame)))["score"]

    best = at(calibration.any_severe_scale)
    assert best <= at(1.0)
    assert best <= at(calibration.any_severe_scale * 1.05) and best <= at(calibration.any_severe_scale / 1.05)


def test_calibration_objective_is_the_metric_with_unlabelled_spinal_levels():
    """Studies whose spinal L5/S1 is unlabelled and predicted with the study's largest severe: the any-severe
    rule of the metric (over labelled levels only) is the one the scale is fitted with."""
    labels = LABELS.copy()
    unlabelled = labels.study_id.to_numpy()[::3]
    labels.loc[labels.study_id.isin(unlabelled), label_column(SPINAL, "l5_s1")] = np.nan
    frame = predictions(3.0)
    ids = frame.row_id.to_numpy()
    planted = np.isin(ids, [row_id(s, SPINAL, "l5_s1") for s in unlabelled])
    before = frame.copy()
    frame.loc[planted, COLS] = [0.02, 0.03, 0.95]
    spinal = np.char.find(ids.astype(str), f"_{SPINAL}_") > 0
    for study in unlabelled[:5]:  # the planted level holds the study's largest severe
        rows = spinal & np.char.startswith(ids.astype(str), f"{study}_")
        assert frame.loc[rows & planted, "severe"].iloc[0] == frame.loc[rows, "severe"].max()
    objective = _spinal_parts(labels, ids)
    for scale in (1.0, 0.4, 2.5):
        changed = Calibration(temperature={c: 1.3 for c in CONDITIONS}, any_severe_scale=scale)
        for source in (frame, before):  # the unlabelled level's value changes neither side
            calibrated = submission_only(changed.apply(source))
            parts = score(labels, calibrated)
            assert objective(calibrated[COLS].to_numpy()) == pytest.approx(
                parts["spinal"] + parts["any_severe_spinal"], rel=1e-9, abs=1e-12), (scale, parts)
        assert score(labels, submission_only(changed.apply(frame))) == score(labels, submission_only(
            changed.apply(before)))
    calibration = fit_calibration(frame, labels)  # through the fit: its scale minimises the metric

    def at(scale: float) -> float:
        changed = Calibration(temperature=calibration.temperature, any_severe_scale=scale)
        return score(labels, submission_only(changed.apply(frame)))["score"]

    best = at(calibration.any_severe_scale)
    assert calibration.any_severe_scale != 1.0 and calibration.score_after == pytest.approx(best)
    assert best <= at(1.0) and best <= at(calibration.any_severe_scale * 1.05)
    assert best <= at(calibration.any_severe_scale / 1.05)


def test_identity_leaves_predictions_unchanged():
    frame = predictions(1.0)
    out = Calibration.identity().apply(frame)
    pd.testing.assert_frame_equal(out, frame, check_exact=False, rtol=1e-10, atol=1e-14)


def test_apply_keeps_rows_and_is_safe_on_odd_inputs(over):
    _, calibration = over
    frame = predictions(1.0).iloc[::-1].iloc[:60].copy()  # reversed order
    frame.index = np.arange(len(frame)) * 7 + 3  # non-default index
    frame.iloc[0, 1:4] = [0.0, 0.0, 1.0]  # zeros
    frame.iloc[1, 1:4] = [np.nan, np.nan, np.nan]
    frame.iloc[2, 1:4] = [-1.0, np.inf, 2.0]
    frame.iloc[3, 1:4] = [0.0, 0.0, 0.0]
    frame.iloc[4, 1:4] = [5.0, 3.0, 2.0]  # not normalised
    odd = pd.DataFrame({"row_id": [row_id(99999, SPINAL, "l1_l2"), "not_a_row_id",
                                   "abc_spinal_canal_stenosis_l4_l5", row_id(99999, CONDITIONS[3], "l5_s1")],
                        "normal_mild": [1.0, 0.2, 0.5, 0.0], "moderate": [0.0, 0.3, 0.5, 0.0],
                        "severe": [0.0, 0.5, 0.0, 1.0], "fold": [0, 1, 2, 0]}, index=[-1, -2, -3, -4])
    frame = pd.concat([frame, odd])
    out = calibration.apply(frame)
    assert list(out.columns) == list(frame.columns)
    assert out.index.equals(frame.index)
    assert out["row_id"].tolist() == frame["row_id"].tolist() and out["fold"].tolist() == frame["fold"].tolist()
    p = out[COLS].to_numpy()
    assert np.isfinite(p).all() and (p >= FLOOR).all() and (p <= 1.0).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(p[3], 1.0 / 3.0)  # an all-zero row becomes uniform
    np.testing.assert_allclose(p[frame["row_id"].tolist().index("not_a_row_id")], [0.2, 0.3, 0.5])
    assert calibration.apply(frame.iloc[:0]).empty  # no rows


def test_apply_changes_rows_as_specified():
    calibration = Calibration(temperature={c: 2.0 for c in CONDITIONS}, any_severe_scale=3.0)
    frame = pd.DataFrame({"row_id": [row_id(1, SPINAL, "l2_l3"), row_id(1, CONDITIONS[1], "l2_l3")],
                          "normal_mild": [0.64, 0.64], "moderate": [0.32, 0.32], "severe": [0.04, 0.04]})
    out = calibration.apply(frame)[COLS].to_numpy()
    tempered = np.array([0.8, np.sqrt(0.32), 0.2])
    np.testing.assert_allclose(out[1], tempered / tempered.sum())
    scaled = tempered * [1.0, 1.0, 3.0]
    np.testing.assert_allclose(out[0], scaled / scaled.sum())


def test_json_round_trip(tmp_path, over):
    frame, calibration = over
    path = tmp_path / "sub" / "calibration.json"
    calibration.to_json(path)
    loaded = Calibration.from_json(path)
    assert loaded == calibration
    pd.testing.assert_frame_equal(loaded.apply(frame), calibration.apply(frame))
    assert json.loads(path.read_text())["any_severe_scale"] == calibration.any_severe_scale
    partial = Calibration.from_json(_write(tmp_path / "partial.json", {"temperature": {SPINAL: 2.0}}))
    assert partial.temperature == {c: (2.0 if c == SPINAL else 1.0) for c in CONDITIONS}
    with pytest.raises(ValueError):
        Calibration.from_dict({"temperature": {SPINAL: -1.0}})
    with pytest.raises(ValueError):
        Calibration.from_dict({"temperature": {"elbow": 1.0}})


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_cross_fitted_calibrates_each_fold_with_the_other_folds_only():
    frame = predictions(3.0)  # 3 folds
    out = cross_fitted(frame, LABELS)
    assert out.index.equals(frame.index) and list(out.columns) == list(frame.columns)
    assert out["row_id"].tolist() == frame["row_id"].tolist() and out["fold"].tolist() == frame["fold"].tolist()
    inside = frame["fold"] == 0
    expected = fit_calibration(frame[~inside], LABELS).apply(frame[inside])
    np.testing.assert_allclose(out.loc[inside, COLS].to_numpy(), expected[COLS].to_numpy())
    # changing fold 0's labels changes nothing of fold 0's calibrated rows (only the other folds' calibration)
    shuffled = LABELS.copy()
    fold0 = np.arange(N_STUDIES) % 3 == 0
    shuffled.loc[fold0, list(LABEL_COLUMNS)] = SEVERITIES[2]
    np.testing.assert_allclose(cross_fitted(frame, shuffled).loc[inside, COLS].to_numpy(),
                               out.loc[inside, COLS].to_numpy())


def test_cross_fitted_with_one_fold_warns_and_returns_the_predictions():
    frame = predictions(3.0, folds=1)
    with pytest.warns(UserWarning, match="cannot cross-fit"):
        out = cross_fitted(frame, LABELS)
    pd.testing.assert_frame_equal(out, frame)


def test_report_scores_before_and_after():
    report = calibration_report(predictions(3.0, folds=2), LABELS)
    json.dumps(report)  # JSON-able
    assert report["rows"] == N_STUDIES * len(KEYS) and report["studies"] == N_STUDIES
    assert report["after_in_sample"]["score"] < report["before"]["score"]
    assert report["after_cross_fitted"]["score"] < report["before"]["score"]
    assert Calibration.from_dict(report["calibration"]).temperature[SPINAL] > 2.0
    assert calibration_report(predictions(3.0, folds=1), LABELS)["after_cross_fitted"] is None


def test_fit_on_partial_and_tiny_data():
    frame = predictions(3.0)
    labels = LABELS.copy()
    labels[[f"{CONDITIONS[4]}_{lv}" for lv in LEVELS]] = np.nan  # a condition without labels keeps T = 1
    calibration = fit_calibration(frame, labels)
    assert calibration.temperature[CONDITIONS[4]] == 1.0 and calibration.temperature[SPINAL] > 2.0
    # predictions for 2 studies only, some rows missing, extra unlabelled studies: no error
    few = frame[frame["row_id"].str.startswith(("1000_", "1001_"))].iloc[3:]
    few = pd.concat([few, predictions(1.0).assign(row_id=lambda f: "7" + f["row_id"]).iloc[:25]])
    small = fit_calibration(few, LABELS)
    assert small.fitted_on == 2 * len(KEYS) - 3  # study 1000 lacks 3 rows: only those labels are left out
    assert all(0.25 <= t <= 4.0 for t in small.temperature.values())
    assert fit_calibration(frame, LABELS.iloc[:0]) == Calibration.identity()  # nothing labelled
    unlabelled = LABELS.copy()
    unlabelled[list(LABEL_COLUMNS)] = np.nan
    assert fit_calibration(frame, unlabelled) == Calibration.identity()


def test_labelled_predictions_joins_labels_and_probabilities():
    frame = predictions(1.0)
    table = labelled_predictions(frame.iloc[:30], LABELS)
    assert len(table) == 30 and table["row_id"].tolist() == frame["row_id"].iloc[:30].tolist()
    assert set(table["weight"]) <= set(SEVERITY_WEIGHTS)
    np.testing.assert_allclose(table[COLS].to_numpy(), frame[COLS].to_numpy()[:30])


@pytest.mark.parametrize("plot", [plot_confusion, plot_reliability])
def test_plots_write_png(tmp_path, plot):
    frame = predictions(1.0).iloc[: 20 * len(KEYS)]  # 20 studies, 100 rows per condition
    labels = LABELS.copy()
    labels[[f"{CONDITIONS[2]}_{lv}" for lv in LEVELS]] = np.nan  # a condition with no labelled rows
    labels[[f"{CONDITIONS[3]}_{lv}" for lv in LEVELS]] = SEVERITIES[0]  # a condition with one class only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib or pandas warnings either
        for name, (preds, labs) in {"some": (frame, labels), "unlabelled": (frame, LABELS.iloc[:0]),
                                    "empty": (frame.iloc[:0], LABELS)}.items():
            path = tmp_path / "plots" / f"{name}.png"
            plot(preds, labs, path)
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
