"""How close the synthetic studies are to the real data, in numbers.

    python benchmarks/synth_realism.py [DATA_DIR ...]

Prints (1) label frequencies from 5000 simulated studies (labels only, no images) against the real data's
overall 77/16/6 %, per condition and level; (2) for each generated dataset given: slice counts, steps, image
sizes per series type, and the scores of the oracle, the class prior and the uniform submission on its test
studies (the competition metric).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from spine.baselines import class_prior_submission
from spine.constants import CONDITIONS, LEVELS, SEVERITIES
from spine.metric import score
from spine.synth import labels as label_model

REAL_OVERALL = (0.77, 0.16, 0.06)


def label_frequencies(n_studies: int = 5000, sigma: float = 0.10, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grades = {c: [] for c in CONDITIONS}
    for _ in range(n_studies):
        narrowing = label_model.sample_narrowing(rng)
        for c in CONDITIONS:
            grades[c].append(label_model.read_label(narrowing[c], sigma, rng))
    rows = []
    for c in CONDITIONS:
        g = np.stack(grades[c])
        for li, lv in enumerate(LEVELS):
            freq = np.bincount(g[:, li], minlength=3) / len(g)
            rows.append({"condition": c, "level": lv, **dict(zip(SEVERITIES, freq.round(3)))})
    return pd.DataFrame(rows)


def dataset_report(data_dir: Path) -> None:
    card = json.loads((data_dir / "dataset.json").read_text())
    print(f"\n== {data_dir} (preset {card['config']['preset']}, {card['studies']}, generated in {card['seconds']} s)")
    print(pd.DataFrame(card["series"]).to_string(index=False))
    labels = pd.read_csv(data_dir / "test_labels.csv")
    train = pd.read_csv(data_dir / "train.csv")
    subs = {"oracle": pd.read_csv(data_dir / "oracle_submission.csv"),
            "class prior": class_prior_submission(train, labels.study_id),
            "uniform": pd.read_csv(data_dir / "sample_submission.csv")}
    table = pd.DataFrame({name: score(labels, sub) for name, sub in subs.items()}).T.round(4)
    print(table.to_string())


def main(argv: list[str]) -> int:
    freq = label_frequencies()
    overall = freq[list(SEVERITIES)].mean().round(3).to_dict()
    print(f"label frequencies, 5000 simulated studies: overall {overall} (real data about {REAL_OVERALL})")
    print(freq.to_string(index=False))
    for d in argv:
        dataset_report(Path(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
