"""The label model of the synthetic studies and the oracle: frequencies, noise, and a bound no submission beats
in expectation (spine/synth/labels.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine.baselines import class_prior_submission
from spine.constants import (
    CONDITIONS,
    LEVELS,
    PROB_COLUMNS,
    SEVERITIES,
    label_column,
    study_row_ids,
)
from spine.metric import score
from spine.synth import labels as label_model


def test_label_frequencies_are_close_to_the_real_data():
    rng = np.random.default_rng(1)
    per_condition = {c: [] for c in CONDITIONS}
    for _ in range(3000):
        narrowing = label_model.sample_narrowing(rng)
        for c in CONDITIONS:
            per_condition[c].append(label_model.read_label(narrowing[c], 0.1, rng))
    grades = np.stack([np.stack(v) for v in per_condition.values()])  # (condition, study, level)
    overall = np.bincount(grades.ravel(), minlength=3) / grades.size
    assert np.allclose(overall, [0.77, 0.16, 0.065], atol=0.025), overall
    severe_by_level = (grades == 2).mean(axis=(0, 1))
    assert severe_by_level[3:].min() > severe_by_level[:2].max()  # severe concentrated at L4/L5, L5/S1


def test_oracle_beats_the_class_prior_on_many_studies():
    """Labels drawn from the noise model: the oracle's expected score is far below the prior's."""
    rng = np.random.default_rng(2)
    rows, oracle = [], []
    for study in range(400):
        narrowing = label_model.sample_narrowing(rng)
        label = {"study_id": study}
        for c in CONDITIONS:
            grades = label_model.read_label(narrowing[c], 0.1, rng)
            label.update({f"{c}_{lv}": SEVERITIES[g] for lv, g in zip(LEVELS, grades)})
            oracle.append(label_model.label_probabilities(narrowing[c], 0.1))
        rows.append(label)
    labels = pd.DataFrame(rows)
    probs = np.concatenate(oracle).reshape(-1, 3)
    oracle_sub = pd.DataFrame({"row_id": [r for s in labels.study_id for r in study_row_ids(s)],
                               **dict(zip(PROB_COLUMNS, probs.T))})
    prior = class_prior_submission(labels, labels.study_id)
    oracle_score, prior_score = score(labels, oracle_sub)["score"], score(labels, prior)["score"]
    assert oracle_score < 0.6 * prior_score, (oracle_score, prior_score)


def test_label_probabilities_are_exact_under_the_noise_model():
    rng = np.random.default_rng(3)
    n = np.full(200_000, 0.42)
    observed = np.bincount(label_model.read_label(n, 0.1, rng), minlength=3) / n.size
    assert np.allclose(observed, label_model.label_probabilities(0.42, 0.1), atol=0.005)


def test_oracle_is_better_than_the_prior_and_than_a_noisy_oracle():
    """Bayes-optimality on a few hundred label-only studies (with labels left out as the generator does): the
    oracle scores below the class prior and below oracles computed from a perturbed narrowing."""
    from spine.synth.generate import _missing_labels

    rng = np.random.default_rng(7)
    rows, truth = [], []
    for study in range(300):
        narrowing = label_model.sample_narrowing(rng)
        missing = _missing_labels(rng, 0.1)
        label = {"study_id": study}
        for c in CONDITIONS:
            grades = label_model.read_label(narrowing[c], 0.1, rng)
            label.update({label_column(c, lv): None if (c, lv) in missing else SEVERITIES[g]
                          for lv, g in zip(LEVELS, grades)})
        truth.append(np.stack([narrowing[c] for c in CONDITIONS]))
        rows.append(label)
    labels = pd.DataFrame(rows)
    row_ids = [r for s in labels.study_id for r in study_row_ids(s)]

    keys = [(s, c, lv) for s in labels.study_id for c in CONDITIONS for lv in LEVELS]

    def submission(narrowing: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame(keys, columns=["study_id", "condition", "level"])
        oracle = label_model.oracle_submission(frame.assign(narrowing=np.clip(narrowing, 0, 1).reshape(-1)), 0.1)
        assert list(oracle.row_id) == row_ids
        return oracle

    n = np.stack(truth)
    oracle = score(labels, submission(n))["score"]
    prior = score(labels, class_prior_submission(labels, labels.study_id))["score"]
    noisy = [score(labels, submission(n + np.random.default_rng(s).normal(0, 0.08, n.shape)))["score"]
             for s in range(3)]
    assert oracle < 0.7 * prior and oracle < min(noisy), (oracle, prior, noisy)


# ------------------------------------------------------------------------- the oracle is a true bound
def _truth_frame(n_studies: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for study in range(n_studies):
        narrowing = label_model.sample_narrowing(rng)
        rows += [(5000 + study, c, lv, narrowing[c][i]) for c in CONDITIONS for i, lv in enumerate(LEVELS)]
    return pd.DataFrame(rows, columns=["study_id", "condition", "level", "narrowing"])


def _expected_score(truth: pd.DataFrame, submission: pd.DataFrame, sigma: float) -> float:
    """The metric's expectation over the label noise, each part as E[Sum w l] / E[Sum w] (exact given n)."""
    from spine.constants import CONDITION_GROUP

    q = label_model.label_probabilities(truth.narrowing.to_numpy(), sigma)
    p = submission[list(PROB_COLUMNS)].to_numpy()
    w = np.array([1.0, 2.0, 4.0])
    group = truth.condition.map(CONDITION_GROUP).to_numpy()
    parts = [float((q * w * -np.log(p))[group == g].sum() / (q * w)[group == g].sum())
             for g in ("spinal", "foraminal", "subarticular")]
    loss = weight = 0.0
    for study in truth.study_id.unique():
        rows = np.flatnonzero((group == "spinal") & (truth.study_id.to_numpy() == study))
        no_severe, all_normal = np.prod(1 - q[rows, 2]), np.prod(q[rows, 0])
        a, b = 1 - no_severe, 2 * (no_severe - all_normal) + all_normal
        m = p[rows, 2].max()
        loss += -4 * a * np.log(m) - b * np.log(1 - m)
        weight += 4 * a + b
    return float(np.mean(parts + [loss / weight]))


def test_the_oracle_minimises_the_expected_metric():
    """Against the label distributions themselves (the former oracle), their weighted version (each row's own
    optimum, blind to the any-severe coupling) and 300 random perturbations: none has a lower expected score."""
    sigma = 0.08
    truth = _truth_frame(60, seed=11)
    oracle = label_model.oracle_submission(truth, sigma)
    best = _expected_score(truth, oracle, sigma)
    q = np.clip(label_model.label_probabilities(truth.narrowing.to_numpy(), sigma), 1e-15, None)
    q /= q.sum(axis=1, keepdims=True)
    weighted = q * [1.0, 2.0, 4.0]
    others = [q, weighted / weighted.sum(axis=1, keepdims=True)]
    rng = np.random.default_rng(0)
    probs = oracle[list(PROB_COLUMNS)].to_numpy()
    for scale in np.geomspace(1e-4, 0.3, 300):
        noisy = probs * np.exp(scale * rng.standard_normal(probs.shape))
        others.append(noisy / noisy.sum(axis=1, keepdims=True))
    for other in others:
        submission = oracle.assign(**dict(zip(PROB_COLUMNS, np.clip(other, 1e-15, None).T)))
        assert best <= _expected_score(truth, submission, sigma) + 1e-12
    assert best < _expected_score(truth, oracle.assign(**dict(zip(PROB_COLUMNS, q.T))), sigma) - 0.005


def test_the_oracle_beats_the_label_distributions_on_sampled_labels_in_every_part_but_spinal():
    """On labels drawn from the noise model, averaged over draws: the oracle is below q on the score and on every
    part; on the spinal part it may give up a little for the any-severe part (they share the spinal rows)."""
    sigma = 0.08
    truth = _truth_frame(80, seed=12)
    oracle = label_model.oracle_submission(truth, sigma)
    q = label_model.label_probabilities(truth.narrowing.to_numpy(), sigma)
    former = oracle.assign(**dict(zip(PROB_COLUMNS, q.T)))
    rng = np.random.default_rng(1)
    scores = {"oracle": [], "former": []}
    for _ in range(30):
        grades = label_model.read_label(truth.narrowing.to_numpy(), sigma, rng)
        wide = truth.assign(column=truth.condition + "_" + truth.level, grade=[SEVERITIES[g] for g in grades])
        labels = wide.pivot(index="study_id", columns="column", values="grade").reset_index()
        for name, submission in (("oracle", oracle), ("former", former)):
            scores[name].append(score(labels, submission))
    mean = {name: {k: np.mean([s[k] for s in runs]) for k in ("score", "spinal", "foraminal", "subarticular",
                                                                 "any_severe_spinal")} for name, runs in scores.items()}
    assert mean["oracle"]["score"] < mean["former"]["score"]
    for part in ("foraminal", "subarticular", "any_severe_spinal"):
        assert mean["oracle"][part] < mean["former"][part], (part, mean)




def test_reading_noise_recovers_how_noisily_a_submission_read_the_narrowing():
    """A submission made by a reader who saw the narrowing through noise r scores like the oracle's reader at
    r: reading_noise finds r back from the score (another noise draw, so within a margin); the oracle reads
    with 0."""
    truth = _truth_frame(300, seed=3)
    rng = np.random.default_rng(4)
    labels = []
    for study, rows in truth.groupby("study_id", sort=False):
        grades = label_model.read_label(rows.narrowing.to_numpy(), 0.1, rng)
        labels.append({"study_id": study, **{label_column(c, lv): SEVERITIES[g]
                                             for c, lv, g in zip(rows.condition, rows.level, grades)}})
    labels = pd.DataFrame(labels)
    oracle = score(labels, label_model.oracle_submission(truth, 0.1))["score"]
    assert label_model.reading_noise(truth, labels, 0.1, oracle) == 0.0
    r = 0.07
    read = truth.assign(narrowing=truth.narrowing + r * np.random.default_rng(9).standard_normal(len(truth)))
    noisy = score(labels, label_model.oracle_submission(read, float(np.hypot(0.1, r))))["score"]
    assert abs(label_model.reading_noise(truth, labels, 0.1, noisy) - r) < 0.015, noisy
    assert np.isnan(label_model.reading_noise(truth, labels, 0.1, 5.0))  # worse than any reader
