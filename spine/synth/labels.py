"""Grades of the synthetic studies: what the image shows, what the label says, and the Bayes-optimal answer.

The label model (documented in docs/synthetic.md):
1. Each (study, condition, level) has a latent *narrowing* n in [0, 1] which the phantom renders. The true
   grade is the interval n falls in: Normal/Mild [0, 0.4), Moderate [0.4, 0.7), Severe [0.7, 1].
   n is drawn through a Gaussian copula so that degeneration is correlated within a study (one study
   factor) and between the two sides of a level (one level factor), while each condition and level keeps
   its target marginal frequency (``TARGET_FREQUENCIES``).
2. The label is a noisy reading of n: y = grade(n + e), e ~ Normal(0, sigma), sigma = ``label_noise``
   (radiologists disagree near the thresholds).
3. Hence the Bayes-optimal prediction for a study whose n is known exactly is
   P(y = k | n) = Phi((T[k+1] - n) / sigma) - Phi((T[k] - n) / sigma). That is the ``oracle``: no model that
   only sees the images can beat it in expectation, since the images are a (noisy) function of n.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from spine.constants import CONDITIONS, LEVELS

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


def oracle_probabilities(narrowing: np.ndarray, sigma: float) -> np.ndarray:
    """(..., 3) P(label = Normal/Mild, Moderate, Severe | narrowing): the Bayes-optimal prediction."""
    n = np.asarray(narrowing, dtype=np.float64)[..., None]
    cuts = np.array([-np.inf, THRESHOLDS[1], THRESHOLDS[2], np.inf])
    cdf = norm.cdf((cuts - n) / max(sigma, 1e-12))
    return np.diff(cdf, axis=-1)
