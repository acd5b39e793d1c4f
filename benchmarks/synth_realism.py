"""How close the synthetic studies are to the real data, in numbers.

    python benchmarks/synth_realism.py [--studies N] [--seed S] [DATA_DIR ...]

Prints (1) label frequencies from 5000 simulated studies (--studies; labels only, no images) against the real
data's overall 77/16/6 %, per condition and level; (2) for each generated dataset given: slice counts, steps, image
sizes per series type, and the scores of the oracle, the class prior and the uniform submission on its test
studies (the competition metric).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/synth_realism.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dirs", nargs="*", type=Path, metavar="DATA_DIR",
                        help="generated datasets (python -m spine.synth) to report on")
    parser.add_argument("--studies", type=int, default=5000, help="simulated studies for the label frequencies "
                        "(default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated labels (default 0)")
    args = parser.parse_args(argv)
    if args.studies < 1:
        parser.error(f"--studies must be at least 1, got {args.studies}")
    missing = [str(d) for d in args.data_dirs if not (d / "dataset.json").is_file()]
    if missing:
        parser.error(f"not a generated dataset (no dataset.json): {', '.join(missing)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    freq = label_frequencies(args.studies, seed=args.seed)
    overall = freq[list(SEVERITIES)].mean().round(3).to_dict()
    print(f"label frequencies, {args.studies} simulated studies: overall {overall} (real data about {REAL_OVERALL})")
    print(freq.to_string(index=False))
    for d in args.data_dirs:
        dataset_report(d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
