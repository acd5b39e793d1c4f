"""Cross-validation folds: study_id -> fold, stratified on the labels, deterministic for a seed.

Stratification key per study: (number of Severe labels, number of Moderate labels), capped at 3 and 6 so
that rare heavy studies share a stratum. Studies are ordered by that key (ties in a seeded random order)
and dealt to the folds in turn, so every fold gets within one study of the same count of every stratum and
of the same size, also with few studies (where sklearn's StratifiedKFold warns and gives up). Folds are
written once per cache and reused by every later stage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spine.constants import LABEL_COLUMNS, SEVERITIES
from spine.io.tables import labels_to_long

__all__ = ["make_folds", "strata"]


def strata(train: pd.DataFrame) -> pd.Series:
    """Stratum of each study of train.csv (index = study_id): 10 * min(#severe, 3) + min(#moderate, 6).

    Raises ValueError (:func:`spine.io.tables.labels_to_long`) for a missing label column, a grade not in
    ``SEVERITIES`` or a study in several rows."""
    grades = labels_to_long(train)["severity"].to_numpy().reshape(len(train), len(LABEL_COLUMNS))
    severe = np.minimum((grades == SEVERITIES.index("Severe")).sum(axis=1), 3)
    moderate = np.minimum((grades == SEVERITIES.index("Moderate")).sum(axis=1), 6)
    return pd.Series(10 * severe + moderate, index=pd.Index(train["study_id"].to_numpy(), name="study_id")).astype(int)


def make_folds(train: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """``study_id, fold`` for every study of train.csv, sorted by study_id."""
    key = strata(train).sort_index()  # the order of train.csv must not matter
    rng = np.random.default_rng(seed)
    order = pd.DataFrame({"study_id": key.index.astype(np.int64), "stratum": key.to_numpy(),
                          "tie": rng.permutation(len(key))}).sort_values(["stratum", "tie"])
    start = int(rng.integers(n_folds))  # which fold the first study of the deal goes to
    order["fold"] = (start + np.arange(len(order))) % n_folds
    return order[["study_id", "fold"]].sort_values("study_id").reset_index(drop=True)
