"""Tests of spine.baselines: uniform and class-prior submissions and their CLI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.baselines import class_prior_submission, class_priors, uniform_submission
from spine.constants import CONDITIONS, LABEL_COLUMNS, PROB_COLUMNS, SEVERITIES, label_column, row_id, study_row_ids
from spine.metric import score

NM, MOD, SEV = SEVERITIES
SPINAL, LEFT_NFN = CONDITIONS[0], CONDITIONS[1]


def hand_train() -> pd.DataFrame:
    """Four studies; spinal l1_l2 = NM, NM, MOD, NaN; left NFN l5_s1 = SEV, SEV, SEV, MOD; the rest NaN."""
    frame = pd.DataFrame({"study_id": [11, 12, 13, 14], **{c: [np.nan] * 4 for c in LABEL_COLUMNS}})
    frame[label_column(SPINAL, "l1_l2")] = [NM, NM, MOD, np.nan]
    frame[label_column(LEFT_NFN, "l5_s1")] = [SEV, SEV, SEV, MOD]
    return frame


def probs_of(sub: pd.DataFrame, rid: str) -> list[float]:
    return sub.set_index("row_id").loc[rid, list(PROB_COLUMNS)].tolist()


def test_weighted_prior_is_proportional_to_metric_weight_times_count():
    sub = class_prior_submission(hand_train(), [101], smoothing=1.0)
    assert probs_of(sub, row_id(101, SPINAL, "l1_l2")) == pytest.approx([3 / 11, 4 / 11, 4 / 11])  # (3,2,1)*(1,2,4)
    assert probs_of(sub, row_id(101, LEFT_NFN, "l5_s1")) == pytest.approx([1 / 21, 4 / 21, 16 / 21])


def test_weighted_prior_minimises_the_metric_among_constant_predictions():
    train = hand_train()
    weighted = score(train, class_prior_submission(train, train["study_id"], smoothing=0.0))
    plain = score(train, class_prior_submission(train, train["study_id"], smoothing=0.0, weighted=False))
    assert weighted["spinal"] < plain["spinal"] and weighted["foraminal"] < plain["foraminal"]


def test_prior_matches_frequencies():
    train = hand_train()
    sub = class_prior_submission(train, [101, 102], smoothing=1.0, weighted=False)
    assert list(sub.columns) == ["row_id", *PROB_COLUMNS]
    assert sub["row_id"].tolist() == study_row_ids(101) + study_row_ids(102)
    for study in (101, 102):
        assert probs_of(sub, row_id(study, SPINAL, "l1_l2")) == pytest.approx([3 / 6, 2 / 6, 1 / 6])
        assert probs_of(sub, row_id(study, LEFT_NFN, "l5_s1")) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
        assert probs_of(sub, row_id(study, SPINAL, "l2_l3")) == pytest.approx([1 / 3] * 3)  # no labels
    assert np.allclose(sub[list(PROB_COLUMNS)].sum(axis=1), 1.0)


def test_prior_without_smoothing():
    priors = class_priors(hand_train(), smoothing=0.0, weighted=False)
    assert priors.shape == (len(LABEL_COLUMNS), 3)
    assert priors[LABEL_COLUMNS.index(label_column(SPINAL, "l1_l2"))] == pytest.approx([2 / 3, 1 / 3, 0])
    assert priors[LABEL_COLUMNS.index(label_column(LEFT_NFN, "l5_s1"))] == pytest.approx([0, 1 / 4, 3 / 4])
    assert priors[LABEL_COLUMNS.index(label_column(SPINAL, "l5_s1"))] == pytest.approx([1 / 3] * 3)
    assert np.allclose(priors.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="smoothing"):
        class_priors(hand_train(), smoothing=-1.0)


def test_prior_study_ids_deduplicated_in_order_and_train_not_mutated():
    train = hand_train()
    copy = train.copy(deep=True)
    sub = class_prior_submission(train, [7, 3, 7, 3, 5])
    assert len(sub) == 3 * len(LABEL_COLUMNS)
    assert sub["row_id"].tolist() == study_row_ids(7) + study_row_ids(3) + study_row_ids(5)
    pd.testing.assert_frame_equal(train, copy)


def test_prior_rejects_bad_labels():
    train = hand_train()
    train[label_column(SPINAL, "l1_l2")] = "Mild"
    with pytest.raises(ValueError, match="Mild"):
        class_prior_submission(train, [1])


def test_uniform_submission_scores_ln3_per_group():
    sub = uniform_submission([11, 12, 13, 14])
    assert len(sub) == 4 * 25 and np.allclose(sub[list(PROB_COLUMNS)], 1 / 3)
    result = score(hand_train(), sub)
    assert result["spinal"] == pytest.approx(math.log(3))
    assert result["foraminal"] == pytest.approx(math.log(3))


def test_prior_beats_uniform_on_its_own_training_labels():
    train = hand_train()
    prior = score(train, class_prior_submission(train, train["study_id"], smoothing=0.0))
    uniform = score(train, uniform_submission(train["study_id"]))
    assert prior["spinal"] < uniform["spinal"] and prior["foraminal"] < uniform["foraminal"]


def test_cli_prior(tmp_path: Path):
    train = hand_train()
    train_csv, out_csv = tmp_path / "train.csv", tmp_path / "out.csv"
    series_csv = tmp_path / "test_series_descriptions.csv"
    train.to_csv(train_csv, index=False)
    pd.DataFrame({"study_id": [44, 44, 44, 45], "series_id": [1, 2, 3, 4],
                  "series_description": ["Sagittal T1", "Sagittal T2/STIR", "Axial T2", "Axial T2"]}
                 ).to_csv(series_csv, index=False)
    done = subprocess.run([sys.executable, "-m", "spine.baselines", "prior", "--train", str(train_csv),
                           "--studies", str(series_csv), "--out", str(out_csv)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out_csv)
    pd.testing.assert_frame_equal(written, class_prior_submission(train, [44, 45]), check_dtype=False)
    missing = subprocess.run([sys.executable, "-m", "spine.baselines", "prior", "--train", str(tmp_path / "no.csv"),
                              "--studies", str(series_csv), "--out", str(out_csv)], capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_cli_skips_bad_listing_rows_and_refuses_unusable_train_tables(tmp_path: Path):
    """The CLI reads the tables as every command does (spine.io.tables): a row with a bad id is skipped with a
    reason, never turned into row ids; a binary or duplicated train.csv is one line on stderr."""
    train = hand_train()
    train_csv, out_csv = tmp_path / "train.csv", tmp_path / "out.csv"
    series_csv = tmp_path / "test_series_descriptions.csv"
    train.to_csv(train_csv, index=False)
    series_csv.write_text("study_id,series_id,series_description\n44,1,Sagittal T1\n../../y,123,Axial T2\n"
                          "99999999999999999999999,5,Axial T2\n45.0,4,Axial T2\n")

    def baseline(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spine.baselines", *args, "--studies", str(series_csv),
                               "--out", str(out_csv)], capture_output=True, text=True, timeout=120)

    for kind in (["prior", "--train", str(train_csv)], ["uniform"]):
        done = baseline(*kind)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        written = pd.read_csv(out_csv)
        assert written.row_id.tolist() == [*study_row_ids(44), *study_row_ids(45)]
        for expected in ("line 3 skipped: study_id '../../y' is not an integer",
                         "line 4 skipped: study_id '99999999999999999999999' is out of range"):
            assert expected in done.stderr, done.stderr
    out_csv.unlink()
    for content, expected in [(bytes(range(256)) * 8, "not a CSV text file"),
                              (pd.concat([train, train.iloc[[0]].assign(**{LABEL_COLUMNS[0]: SEV})]).to_csv(
                                  index=False).encode(), "studies listed in several rows with different labels")]:
        train_csv.write_bytes(content)
        done = baseline("prior", "--train", str(train_csv))
        errors = [line for line in done.stderr.splitlines() if "warning:" not in line]
        assert done.returncode == 2 and len(errors) == 1 and expected in errors[0], done.stderr
        assert not out_csv.exists()
