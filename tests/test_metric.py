"""Tests of spine.metric: the competition metric, its breakdown and the spine-score CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.constants import (
    CONDITIONS,
    LABEL_COLUMNS,
    LEVELS,
    PROB_COLUMNS,
    SEVERITIES,
    SEVERITY_WEIGHTS,
    label_column,
    row_id,
    study_row_ids,
)
from spine.io.tables import labels_to_long
from spine.metric import per_condition_level, score

NM, MOD, SEV = SEVERITIES
SPINAL, LEFT_NFN, RIGHT_NFN, LEFT_SS, RIGHT_SS = CONDITIONS
EPS = sys.float_info.epsilon
PARTS = ("spinal", "foraminal", "subarticular", "any_severe_spinal")


def make_labels(grades: dict[int, dict[tuple[str, str], str]], default: str | float = np.nan) -> pd.DataFrame:
    """train.csv-format labels: {study: {(condition, level): grade}}, other cells `default`."""
    rows = []
    for study, cells in grades.items():
        row = {"study_id": study, **{c: default for c in LABEL_COLUMNS}}
        row.update({label_column(c, lv): g for (c, lv), g in cells.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=["study_id", *LABEL_COLUMNS])


def make_submission(studies, probs: dict[str, tuple[float, float, float]] | None = None,
                    default=(1 / 3, 1 / 3, 1 / 3)) -> pd.DataFrame:
    """25 rows per study, `default` probabilities except the row ids given in `probs`."""
    probs = probs or {}
    ids = [rid for s in studies for rid in study_row_ids(s)]
    return pd.DataFrame([{"row_id": rid, **dict(zip(PROB_COLUMNS, probs.get(rid, default)))} for rid in ids])


def one_hot_submission(labels: pd.DataFrame) -> pd.DataFrame:
    """Perfect prediction: one-hot on the true grade, (1, 0, 0) where the label is missing."""
    long = labels_to_long(labels)
    sev = long["severity"].fillna(0).astype(int).to_numpy()
    probs = np.eye(3)[sev]
    return pd.DataFrame({"row_id": long["row_id"], **{c: probs[:, k] for k, c in enumerate(PROB_COLUMNS)}})


def full_labels() -> pd.DataFrame:
    """Three fully labelled studies with every grade in every group."""
    rng = np.random.default_rng(0)
    grades = {}
    for study in (1001, 1002, 1003):
        grades[study] = {(c, lv): SEVERITIES[int(rng.integers(3))] for c in CONDITIONS for lv in LEVELS}
    grades[1003][(SPINAL, "l1_l2")] = SEV
    grades[1002].update({(SPINAL, lv): NM for lv in LEVELS})
    return make_labels(grades)


# -- hand-computed case ------------------------------------------------------------------------------------

def hand_case() -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = make_labels({
        1001: {(SPINAL, "l1_l2"): NM, (SPINAL, "l4_l5"): SEV, (LEFT_NFN, "l3_l4"): MOD, (RIGHT_SS, "l5_s1"): NM},
        1002: {**{(SPINAL, lv): NM for lv in LEVELS[:4]}, (SPINAL, "l5_s1"): MOD, (LEFT_NFN, "l4_l5"): SEV,
               (LEFT_SS, "l1_l2"): MOD, (RIGHT_SS, "l2_l3"): SEV},
    })
    probs = {
        row_id(1001, SPINAL, "l1_l2"): (0.7, 0.2, 0.1),
        row_id(1001, SPINAL, "l2_l3"): (0.6, 0.3, 0.1),   # unlabelled
        row_id(1001, SPINAL, "l3_l4"): (0.5, 0.3, 0.2),   # unlabelled
        row_id(1001, SPINAL, "l4_l5"): (0.2, 0.3, 0.5),
        row_id(1001, SPINAL, "l5_s1"): (0.2, 0.2, 0.6),   # unlabelled, but carries the max severe
        row_id(1001, LEFT_NFN, "l3_l4"): (0.25, 0.5, 0.25),
        row_id(1001, RIGHT_SS, "l5_s1"): (0.4, 0.2, 0.2),  # unnormalised -> 0.5
        **{row_id(1002, SPINAL, lv): (0.8, 0.15, 0.05) for lv in LEVELS[:4]},
        row_id(1002, SPINAL, "l5_s1"): (0.4, 0.4, 0.2),
        row_id(1002, LEFT_NFN, "l4_l5"): (0.1, 0.3, 0.6),
        row_id(1002, LEFT_SS, "l1_l2"): (0.3, 0.4, 0.3),
        row_id(1002, RIGHT_SS, "l2_l3"): (0.0, 0.0, 1.0),  # clipped to (eps, eps, 1-eps), renormalised
    }
    return labels, make_submission([1001, 1002], probs)


def test_hand_computed_two_studies():
    labels, sub = hand_case()
    log = math.log
    spinal = (1 * -log(0.7) + 4 * -log(0.5) + 4 * 1 * -log(0.8) + 2 * -log(0.4)) / (1 + 4 + 4 + 2)
    foraminal = (2 * -log(0.5) + 4 * -log(0.6)) / (2 + 4)
    p_clip = (1 - EPS) / (EPS + EPS + (1 - EPS))
    subarticular = (1 * -log(0.5) + 2 * -log(0.4) + 4 * -log(p_clip)) / (1 + 2 + 4)
    # 1001: y=1, p=max severe over the labelled levels l1_l2, l4_l5 = 0.5 (the unlabelled l5_s1's 0.6 is
    # dropped with its row), w=max(1, 4)=4; 1002: y=0, p=0.2, w=max(1, 2)=2
    any_severe = (4 * -log(0.5) + 2 * -log(1 - 0.2)) / (4 + 2)
    expected = {"spinal": spinal, "foraminal": foraminal, "subarticular": subarticular,
                "any_severe_spinal": any_severe}
    result = score(labels, sub)
    assert set(result) == {"score", *PARTS}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12), key
    assert result["score"] == pytest.approx(sum(expected.values()) / 4, rel=1e-12)


def test_perfect_prediction_scores_zero():
    labels = full_labels()
    result = score(labels, one_hot_submission(labels))
    for key, value in result.items():
        assert 0 <= value < 1e-6, key


def test_uniform_prediction():
    labels = full_labels()
    result = score(labels, make_submission(labels["study_id"]))
    for group in ("spinal", "foraminal", "subarticular"):
        assert result[group] == pytest.approx(math.log(3), rel=1e-12)
    # any_severe by hand: per study y = any spinal Severe, w = max spinal weight, p = 1/3
    total_w = total = 0.0
    for _, row in labels.iterrows():
        grades = [row[label_column(SPINAL, lv)] for lv in LEVELS]
        y = SEV in grades
        w = max(SEVERITY_WEIGHTS[SEVERITIES.index(g)] for g in grades)
        total += w * -(math.log(1 / 3) if y else math.log(2 / 3))
        total_w += w
    assert result["any_severe_spinal"] == pytest.approx(total / total_w, rel=1e-12)
    assert result["score"] == pytest.approx((3 * math.log(3) + total / total_w) / 4, rel=1e-12)


def test_shuffled_rows_and_extra_rows_give_same_score():
    labels, sub = hand_case()
    expected = score(labels, sub)
    shuffled = sub.sample(frac=1.0, random_state=3).reset_index(drop=True)
    extra = pd.concat([make_submission([9999], default=(0.0, 0.0, 1.0)), shuffled], ignore_index=True)
    assert score(labels, shuffled) == pytest.approx(expected, rel=1e-12)
    assert score(labels, extra) == pytest.approx(expected, rel=1e-12)
    labels_shuffled = labels.iloc[::-1].reset_index(drop=True)
    assert score(labels_shuffled, sub) == pytest.approx(expected, rel=1e-12)


def test_nan_labels_are_skipped():
    labels, sub = hand_case()
    expected = score(labels, sub)
    changed = sub.copy()
    for rid, probs in [(row_id(1001, LEFT_SS, "l1_l2"), (0.0, 0.0, 1.0)),      # NaN label, not spinal
                       (row_id(1001, SPINAL, "l2_l3"), (0.01, 0.98, 0.01))]:   # NaN spinal, severe stays low
        changed.loc[changed["row_id"] == rid, list(PROB_COLUMNS)] = probs
    assert score(labels, changed) == pytest.approx(expected, rel=1e-12)
    # unlabelled rows may even be absent, spinal ones included
    absent = sub[~sub["row_id"].isin([row_id(1001, LEFT_SS, "l1_l2"), row_id(1001, SPINAL, "l2_l3"),
                                      row_id(1001, SPINAL, "l5_s1")])]
    assert score(labels, absent) == pytest.approx(expected, rel=1e-12)


def test_unlabelled_l5_s1_with_the_largest_severe_plays_no_part_in_any_severe():
    """The official harness drops unlabelled rows first: an unlabelled L5/S1 whose ``severe`` is the study's
    largest neither raises p nor counts for y or w of the any-severe-spinal term."""
    labels = make_labels({7: {**{(SPINAL, lv): NM for lv in LEVELS[:4]}, (LEFT_NFN, "l4_l5"): MOD}})
    probs = {**{row_id(7, SPINAL, lv): (0.8, 0.1, 0.1) for lv in LEVELS[:4]},
             row_id(7, SPINAL, "l5_s1"): (0.0, 0.01, 0.99),  # unlabelled, and by far the largest severe
             row_id(7, LEFT_NFN, "l4_l5"): (0.2, 0.6, 0.2)}
    sub = make_submission([7], probs)
    result = score(labels, sub)
    assert result["any_severe_spinal"] == pytest.approx(-math.log(1 - 0.1), rel=1e-12)  # y=0, p=0.1, w=1
    without = score(labels, sub[sub["row_id"] != row_id(7, SPINAL, "l5_s1")])  # unscored rows may be omitted
    assert without == pytest.approx(result, rel=1e-12, nan_ok=True)


def test_unnormalised_rows_renormalised_for_groups_raw_severe_for_any_severe():
    labels = make_labels({7: {(SPINAL, lv): NM for lv in LEVELS}})
    probs = {row_id(7, SPINAL, lv): (0.9, 0.05, 0.05) for lv in LEVELS}
    probs[row_id(7, SPINAL, "l3_l4")] = (0.2, 0.1, 0.1)  # renormalised: (0.5, 0.25, 0.25)
    result = score(labels, make_submission([7], probs))
    assert result["spinal"] == pytest.approx((4 * -math.log(0.9) - math.log(0.5)) / 5, rel=1e-12)
    # raw severe max is 0.1 (renormalised it would be 0.25)
    assert result["any_severe_spinal"] == pytest.approx(-math.log(0.9), rel=1e-12)
    assert math.isnan(result["foraminal"]) and math.isnan(result["subarticular"])


def test_empty_group_is_nan_and_score_averages_the_rest():
    labels = make_labels({5: {(LEFT_NFN, "l4_l5"): MOD, (SPINAL, "l1_l2"): NM}})
    result = score(labels, make_submission([5]))
    assert math.isnan(result["subarticular"])
    parts = [result[k] for k in ("spinal", "foraminal", "any_severe_spinal")]
    assert result["score"] == pytest.approx(sum(parts) / 3, rel=1e-12)
    # no spinal label at all: any_severe_spinal is NaN too
    no_spinal = score(make_labels({5: {(LEFT_NFN, "l4_l5"): MOD}}), make_submission([5]))
    assert math.isnan(no_spinal["spinal"]) and math.isnan(no_spinal["any_severe_spinal"])
    assert no_spinal["score"] == pytest.approx(math.log(3), rel=1e-12)


def test_inputs_are_not_mutated():
    labels, sub = hand_case()
    sub = sub.sample(frac=1.0, random_state=1)  # non-default index and order
    labels_copy, sub_copy = labels.copy(deep=True), sub.copy(deep=True)
    score(labels, sub)
    per_condition_level(labels, sub)
    labels_to_long(labels)
    pd.testing.assert_frame_equal(labels, labels_copy)
    pd.testing.assert_frame_equal(sub, sub_copy)


def test_per_condition_level_matches_group_losses():
    labels, sub = hand_case()
    table = per_condition_level(labels, sub)
    assert len(table) == len(LABEL_COLUMNS)
    assert list(zip(table["condition"], table["level"])) == [(c, lv) for c in CONDITIONS for lv in LEVELS]
    result = score(labels, sub)
    for group, rows in table[table["n"] > 0].groupby("group"):
        assert (rows["loss"] * rows["weight"]).sum() / rows["weight"].sum() == pytest.approx(result[group])
    row = table[(table["condition"] == LEFT_NFN) & (table["level"] == "l4_l5")].iloc[0]
    assert row["n"] == 1 and row["weight"] == 4 and row["loss"] == pytest.approx(-math.log(0.6))
    assert table.loc[table["n"] == 0, "loss"].isna().all()


def test_labels_to_long():
    labels, _ = hand_case()
    long = labels_to_long(labels)
    assert list(long.columns) == ["row_id", "study_id", "condition", "level", "severity"]
    assert len(long) == 2 * len(LABEL_COLUMNS)
    assert long["row_id"].tolist() == study_row_ids(1001) + study_row_ids(1002)
    assert long.set_index("row_id").loc[row_id(1001, SPINAL, "l4_l5"), "severity"] == 2.0
    assert int(long["severity"].notna().sum()) == 4 + 8


# -- errors --------------------------------------------------------------------------------------------

def _without(sub: pd.DataFrame, *rids: str) -> pd.DataFrame:
    return sub[~sub["row_id"].isin(rids)]


def _set(sub: pd.DataFrame, rid: str, column: str, value) -> pd.DataFrame:
    out = sub.copy()
    out.loc[out["row_id"] == rid, column] = value
    return out


@pytest.mark.parametrize("mutate, match", [
    (lambda s: _without(s, row_id(1002, LEFT_NFN, "l4_l5")), r"missing.*1002_left_neural_foraminal_narrowing_l4_l5"),
    (lambda s: _without(s, row_id(1001, SPINAL, "l4_l5")), r"missing.*1001_spinal_canal_stenosis_l4_l5"),
    (lambda s: pd.concat([s, s.iloc[[3]]]), r"duplicate row_id.*" + row_id(1001, SPINAL, "l4_l5")),
    (lambda s: s.drop(columns=["moderate"]), r"columns.*missing \['moderate'\]"),
    (lambda s: s.assign(extra=1.0), r"columns.*extra \['extra'\]"),
    (lambda s: _set(s, row_id(1001, SPINAL, "l1_l2"), "severe", np.nan), r"finite.*1001_spinal_canal_stenosis_l1_l2"),
    (lambda s: _set(s, row_id(1002, RIGHT_SS, "l2_l3"), "normal_mild", np.inf), r"finite.*1002_right_sub"),
    (lambda s: _set(s, row_id(1002, SPINAL, "l5_s1"), "moderate", -0.1), r">= 0.*1002_spinal_canal_stenosis_l5_s1"),
    (lambda s: s.assign(severe="x"), r"numbers"),
])
def test_submission_errors(mutate, match):
    labels, sub = hand_case()
    with pytest.raises(ValueError, match=match):
        score(labels, mutate(sub))


def test_missing_rows_message_lists_at_most_five():
    labels, sub = hand_case()
    with pytest.raises(ValueError) as info:
        score(labels, sub[~sub["row_id"].str.startswith("1002_")])
    message = str(info.value)
    assert "8 rows" in message and "(and 3 more)" in message
    assert message.count("1002_") == 5


@pytest.mark.parametrize("mutate, match", [
    (lambda lab: lab.drop(columns=[label_column(RIGHT_SS, "l5_s1")]), r"labels: missing.*right_subarticular"),
    (lambda lab: lab.drop(columns=["study_id"]), r"labels: missing.*study_id"),
    (lambda lab: pd.concat([lab, lab.iloc[[0]]]), r"duplicate study_id.*1001"),
    (lambda lab: lab.assign(**{label_column(SPINAL, "l3_l4"): "Mild"}),
     r"not in.*1001_spinal_canal_stenosis_l3_l4: 'Mild'"),
    (lambda lab: lab.iloc[:0], r"no graded"),
])
def test_label_errors(mutate, match):
    labels, sub = hand_case()
    with pytest.raises(ValueError, match=match):
        score(mutate(labels), sub)


def test_all_nan_labels_raise():
    with pytest.raises(ValueError, match="no graded"):
        score(make_labels({1: {}}), make_submission([1]))


# -- CLI -----------------------------------------------------------------------------------------------

def _cli_commands() -> list[list[str]]:
    commands = [[sys.executable, "-m", "spine.metric"]]
    script = Path(sys.executable).parent / "spine-score"
    if script.exists():
        commands.append([str(script)])
    return commands


@pytest.fixture()
def csv_files(tmp_path: Path) -> tuple[Path, Path, dict[str, float]]:
    labels, sub = hand_case()
    labels_csv, sub_csv = tmp_path / "train.csv", tmp_path / "submission.csv"
    labels.to_csv(labels_csv, index=False)
    sub.to_csv(sub_csv, index=False)
    return labels_csv, sub_csv, score(labels, sub)


@pytest.mark.parametrize("command", _cli_commands(), ids=lambda c: Path(c[-1]).name)
def test_cli_text_and_json(command, csv_files):
    labels_csv, sub_csv, expected = csv_files
    text = subprocess.run([*command, str(sub_csv), "--labels", str(labels_csv)],
                          capture_output=True, text=True, check=True).stdout
    lines = dict(line.split() for line in text.strip().splitlines())
    assert list(lines) == ["score", *PARTS]
    for key, value in expected.items():
        assert float(lines[key]) == pytest.approx(value, abs=1e-6)
    out = subprocess.run([*command, str(sub_csv), "--labels", str(labels_csv), "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == pytest.approx(expected, rel=1e-12)


def test_cli_bad_input_exits_2(csv_files, tmp_path: Path):
    labels_csv, sub_csv, _ = csv_files
    bad = tmp_path / "bad.csv"
    pd.read_csv(sub_csv).drop(columns=["severe"]).to_csv(bad, index=False)
    for submission in (bad, tmp_path / "does_not_exist.csv"):
        done = subprocess.run([*_cli_commands()[-1], str(submission), "--labels", str(labels_csv)],
                              capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr.startswith("spine-score: error:") and len(done.stderr.strip().splitlines()) == 1
        assert "Traceback" not in done.stderr and done.stdout == ""
