"""Grades of the synthetic studies: what the image shows, what the label says, and the Bayes-optimal answer.

The label model (documented in docs/synthetic.md):
1. Each (study, condition, level) has a latent *narrowing* n in [0, 1] which the phantom renders. The true
   grade is the interval n falls in: Normal/Mild [0, 0.4), Moderate [0.4, 0.7), Severe [0.7, 1].
   n is drawn through a Gaussian copula so that degeneration is correlated within a study (one study
   factor) and between the two sides of a level (one level factor), while each condition and level keeps
   its target marginal frequency (``TARGET_FREQUENCIES``).
2. The label is a noisy reading of n: y = grade(n + e), e ~ Normal(0, sigma), sigma = ``label_noise``
   (radiologists disagree near the thresholds).
3. Hence, for a study whose n is known exactly, each label's distribution is
   q_k = P(y = k | n) = Phi((T[k+1] - n) / sigma) - Phi((T[k] - n) / sigma) (`label_probabilities`), and the
   labels are independent given n.
4. The ``oracle`` (`oracle_submission`) is the submission that minimises the expected competition metric given
   every n: no model that only sees the images (a noisy function of n) can beat it in expectation. It is not q
   itself: the metric weighs a row by its true grade (1 / 2 / 4), so a row's best answer is p_k = w_k q_k /
   sum_j w_j q_j; and the any-severe part scores the largest spinal ``severe`` of a study, which couples its
   five spinal rows: they are chosen together (`_spinal_study`).
5. `reading_noise` turns any score into the noise on n at which the oracle's reasoning scores the same: how
   sharply a model reads the narrowing (docs/synthetic.md, "Learning on version 3").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from spine.constants import CONDITION_GROUP, CONDITIONS, LEVELS, PROB_COLUMNS, SEVERITY_WEIGHTS, row_id

THRESHOLDS = (0.0, 0.4, 0.7, 1.0)  # narrowing interval of Normal/Mild, Moderate, Severe

# Target frequency of (Normal/Mild, Moderate, Severe) per condition and level (L1/L2 .. L5/S1): the real
# data's pattern (disease concentrated at L4/L5 and L5/S1, severe rare, about 77/16/6 % overall).
_SPINAL = ((0.94, 0.04, 0.02), (0.89, 0.07, 0.04), (0.81, 0.12, 0.07), (0.68, 0.19, 0.13), (0.93, 0.05, 0.02))
_FORAMINAL = ((0.95, 0.04, 0.01), (0.89, 0.09, 0.02), (0.76, 0.20, 0.04), (0.61, 0.32, 0.07), (0.60, 0.30, 0.10))
_SUBARTICULAR = ((0.90, 0.07, 0.03), (0.81, 0.14, 0.05), (0.73, 0.20, 0.07), (0.57, 0.30, 0.13), (0.72, 0.20, 0.08))
TARGET_FREQUENCIES: dict[str, np.ndarray] = {
    "spinal_canal_stenosis": np.array(_SPINAL),
    "left_neural_foraminal_narrowing": np.array(_FORAMINAL),
    "right_neural_foraminal_narrowing": np.array(_FORAMINAL),
    "left_subarticular_stenosis": np.array(_SUBARTICULAR),
    "right_subarticular_stenosis": np.array(_SUBARTICULAR),
}
STUDY_LOADING, LEVEL_LOADING = 0.55, 0.45  # copula loadings: correlation within a study and a level
NORMAL_SKEW = 3.0  # n = 0.4 * w**3 within Normal/Mild, w uniform


def sample_narrowing(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Latent narrowing of one study: condition -> (5,) values in [0, 1], one per level."""
    study = rng.standard_normal()
    level = rng.standard_normal(len(LEVELS))
    own = np.sqrt(1.0 - STUDY_LOADING**2 - LEVEL_LOADING**2)
    out = {}
    for condition in CONDITIONS:
        z = STUDY_LOADING * study + LEVEL_LOADING * level + own * rng.standard_normal(len(LEVELS))
        out[condition] = _quantile_to_narrowing(norm.cdf(z), TARGET_FREQUENCIES[condition])
    return out


def _quantile_to_narrowing(u: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Map uniform quantiles to narrowing so that grade k has probability freqs[:, k], linearly within."""
    cum = np.concatenate([np.zeros((len(u), 1)), np.cumsum(freqs, axis=1)], axis=1)
    cum[:, -1] = 1.0
    grade = np.clip((u[:, None] >= cum[:, 1:-1]).sum(axis=1), 0, 2)
    rows = np.arange(len(u))
    within = (u - cum[rows, grade]) / (cum[rows, grade + 1] - cum[rows, grade])
    within = np.clip(within, 0.0, 1.0)
    # Most Normal/Mild levels are clearly normal: skewing them toward 0 keeps the label noise from
    # draining the large normal class into Moderate (label frequencies stay near the targets).
    within = np.where(grade == 0, within**NORMAL_SKEW, within)
    lo, hi = np.array(THRESHOLDS[:-1])[grade], np.array(THRESHOLDS[1:])[grade]
    return lo + within * (hi - lo)


def true_grade(narrowing: np.ndarray) -> np.ndarray:
    """Grade index 0..2 of narrowing values (any shape)."""
    return np.searchsorted(np.array(THRESHOLDS[1:-1]), narrowing, side="right")


def read_label(narrowing: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """A radiologist's grade index 0..2: the grade of the narrowing plus reading noise."""
    return true_grade(narrowing + sigma * rng.standard_normal(np.shape(narrowing)))


def label_probabilities(narrowing: np.ndarray, sigma: float) -> np.ndarray:
    """(..., 3) P(label = Normal/Mild, Moderate, Severe | narrowing), under the label noise ``sigma``."""
    n = np.asarray(narrowing, dtype=np.float64)[..., None]
    cuts = np.array([-np.inf, THRESHOLDS[1], THRESHOLDS[2], np.inf])
    cdf = norm.cdf((cuts - n) / max(sigma, 1e-12))
    return np.diff(cdf, axis=-1)


_FLOOR = 1e-12  # label probabilities are kept above this (a log of 0 has no optimum)


def oracle_submission(truth: pd.DataFrame, sigma: float) -> pd.DataFrame:
    """The submission that minimises the expected competition metric of the rows of ``truth`` (``study_id``,
    ``condition``, ``level``, ``narrowing``: truth.csv's columns) given their latent narrowing and the label noise:
    ``row_id`` and ``PROB_COLUMNS``, in the order of ``truth``.

    Each part of the metric is a weighted mean, Sum w l / Sum w, over the scored rows. Its expectation is taken as
    E[Sum w l] / E[Sum w] (the denominators are sums over hundreds of rows): then a foraminal or subarticular row's
    best answer is p_k = w_k q_k / Sum_j w_j q_j, and a study's spinal rows minimise their spinal part plus
    ``c`` times the any-severe part, c = E[spinal weight] / E[any-severe weight] over these studies
    (`_spinal_study`). Scored on another set of studies, the expected-weight ratio differs a little.
    """
    q = np.clip(label_probabilities(truth["narrowing"].to_numpy(dtype=np.float64), sigma), _FLOOR, None)
    weighted = q * np.asarray(SEVERITY_WEIGHTS)
    probs = weighted / weighted.sum(axis=1, keepdims=True)
    spinal = (truth["condition"].map(CONDITION_GROUP) == "spinal").to_numpy()
    studies = [np.flatnonzero(spinal & (truth["study_id"].to_numpy() == s)) for s in pd.unique(truth["study_id"][spinal])]
    terms = [_any_severe_terms(q[rows]) for rows in studies]
    spinal_weight = float(weighted[spinal].sum())
    any_weight = float(sum(4.0 * a + b for a, b in terms))
    ratio = spinal_weight / any_weight if any_weight > 0 else 0.0
    for rows, (a, b) in zip(studies, terms):
        probs[rows] = _spinal_study(weighted[rows], a, b, ratio)
    ids = [row_id(s, c, lv) for s, c, lv in zip(truth["study_id"], truth["condition"], truth["level"])]
    return pd.DataFrame({"row_id": ids, **dict(zip(PROB_COLUMNS, probs.T))})


def reading_noise(truth: pd.DataFrame, labels: pd.DataFrame, sigma: float, target: float, seed: int = 0) -> float:
    """A submission's score ``target`` on ``labels`` (train.csv format) as a reader of the latent narrowing: the
    noise r (narrowing units; the grades' thresholds are 0.4 and 0.7 apart by 0.3) at which the Bayes-optimal
    submission from ``narrowing + r z`` (z standard normal, one fixed draw per row of ``truth``), knowing r
    (label noise ``hypot(sigma, r)``), scores ``target``. 0 where ``target`` is the oracle's score or better,
    NaN where even r = 0.5 scores better. A model that closes more of the prior-to-oracle gap reads more sharply:
    the number says how sharply, on the narrowing's own scale."""
    from scipy.optimize import brentq

    from spine.metric import score

    z = np.random.default_rng(seed).standard_normal(len(truth))

    def excess(r: float) -> float:
        read = truth.assign(narrowing=truth["narrowing"].to_numpy(dtype=np.float64) + r * z)
        return score(labels, oracle_submission(read, float(np.hypot(sigma, r))))["score"] - target

    high = 0.5
    if excess(0.0) >= 0:
        return 0.0
    if excess(high) <= 0:
        return float("nan")
    return float(brentq(excess, 0.0, high, xtol=1e-3))


def _any_severe_terms(q: np.ndarray) -> tuple[float, float]:
    """(A, B) of a study's any-severe item from its spinal rows' label distributions q (L, 3): its expected loss
    is -4 A log m - B log(1 - m) for a submitted largest ``severe`` m. A = P(any Severe) (weight 4); B = E[weight;
    no Severe]: weight 2 with some Moderate, 1 with all Normal/Mild (the item's weight is the largest of its
    rows')."""
    no_severe = float(np.prod(1.0 - q[:, 2]))
    all_normal = float(np.prod(q[:, 0]))
    return 1.0 - no_severe, 2.0 * (no_severe - all_normal) + all_normal


def _spinal_study(weighted: np.ndarray, a: float, b: float, ratio: float) -> np.ndarray:
    """(L, 3) spinal rows of one study minimising Sum_l Sum_k W_lk (-log p_lk) + ratio (-4 a log m - b log(1 - m)),
    m = max_l p_l2, W = w * q (``weighted``).

    For a given m each row is its own optimum W_l / Sum W_l where that has severe <= m, else severe = m and the
    rest in the row's proportions (cost ``_capped``, convex in m with its minimum at the row's own severe); when m
    is above every row's severe, the row that is cheapest to raise takes m. The total is minimised over m on a
    logit grid, then refined."""
    own = weighted / weighted.sum(axis=1, keepdims=True)
    severe = own[:, 2]
    least = _capped(weighted, severe)

    def total(m: np.ndarray) -> np.ndarray:  # (G,) candidate m -> (G,) objective, up to a constant
        extra = _capped(weighted, m[:, None]) - least  # (G, L)
        cost = np.where(severe > m[:, None], extra, 0.0).sum(axis=1)
        cost += np.where(m > severe.max(), extra.min(axis=1), 0.0)
        return cost + ratio * (-4.0 * a * np.log(m) - b * np.log1p(-m))

    grid = 1.0 / (1.0 + np.exp(-np.linspace(-16.0, 16.0, 641)))
    best = int(np.argmin(total(grid)))
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    m = float(minimize_scalar(lambda v: float(total(np.array([v]))[0]), bounds=(low, high), method="bounded",
                              options={"xatol": 1e-12}).x)
    out = own.copy()
    raise_one = m > severe.max()
    rows = np.flatnonzero(severe > m) if not raise_one else \
        [int(np.argmin(_capped(weighted, m) - _capped(weighted, severe)))]
    rest = weighted[:, :2] / weighted[:, :2].sum(axis=1, keepdims=True)
    for row in rows:
        out[row] = [*(1.0 - m) * rest[row], m]
    return out


def _capped(weighted: np.ndarray, m) -> np.ndarray:
    """(L,) -Sum_k W_lk log p_lk of each row with p_l2 = m (a scalar or one per row) and the other two grades
    sharing 1 - m in the row's proportions."""
    rest = weighted[:, :2].sum(axis=1)
    shares = weighted[:, :2] / rest[:, None]
    return (-weighted[:, 2] * np.log(m) - rest * np.log1p(-np.asarray(m))
            - (weighted[:, :2] * np.log(shares)).sum(axis=1))  # broadcasts: m (G, 1) gives (G, L)
