"""Quality benchmark: the two-stage pipeline (landmarks -> grading) on the `small` synthetic preset.

    .venv/bin/python benchmarks/quality.py [--data DIR] [--cache DIR] [--runs DIR] [--landmarks RUN]
                                           [--landmark-epochs N] [override ...]

Makes the dataset and the cache if they are missing, trains the landmark stage on every fold (or uses
``--landmarks``), then the grading stage on every fold with ``experiment=grading_cpu`` (overrides go to
spine-train), and prints, lower is better (the competition metric):

- held-out test studies: class prior (fitted on train.csv), the model (folds averaged, calibrated:
  the run's submission.csv), the oracle (Bayes-optimal from the true narrowing, oracle_submission.csv),
  and the share of the prior-to-oracle gap the model closes: (prior - model) / (prior - oracle);
- out of fold, every training study once: the same three numbers, with the prior of each fold fitted on
  the other folds, the model before and after calibration (cross-fitted), the oracle from truth.csv;
- the targets: gap closed >= 60 % on CPU-scale training, >= 90 % with a realistic (GPU) budget.
Writes ``<runs>/grading/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from landmarks import ensure_data  # noqa: E402  (benchmarks are scripts, not a package)

BIN = Path(sys.executable).parent


def train(args: list[str]) -> float:
    print("$ spine-train " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([str(BIN / "spine-train"), *args, "progress=false", "tensorboard=false"], check=True)
    return time.perf_counter() - started


def oracle_from_truth(data: Path, study_ids) -> pd.DataFrame:
    """The Bayes-optimal submission of ``study_ids`` from truth.csv (latent narrowing) and the label noise."""
    from spine.constants import PROB_COLUMNS, row_id
    from spine.synth.labels import oracle_probabilities

    sigma = json.loads((data / "dataset.json").read_text())["config"]["label_noise"]
    truth = pd.read_csv(data / "truth.csv")
    truth = truth[truth.study_id.isin([int(s) for s in study_ids])]
    probs = oracle_probabilities(truth.narrowing.to_numpy(), sigma)
    frame = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    frame.insert(0, "row_id", [row_id(s, c, lv) for s, c, lv in zip(truth.study_id, truth.condition, truth.level)])
    return frame


def fold_prior(labels: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Out-of-fold class prior: each fold's studies get the prior of the other studies' labels."""
    from spine.baselines import class_prior_submission

    parts = []
    for fold in sorted(folds.fold.unique()):
        val = folds[folds.fold == fold].study_id
        parts.append(class_prior_submission(labels[~labels.study_id.isin(val)], list(val)))
    return pd.concat(parts, ignore_index=True)


def gap(prior: float, model: float, oracle: float) -> float:
    return (prior - model) / (prior - oracle) if prior > oracle else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("bench_data/small"))
    parser.add_argument("--cache", type=Path, default=Path("bench_data/cache_small"))
    parser.add_argument("--runs", type=Path, default=Path("bench_runs/quality"))
    parser.add_argument("--landmarks", type=Path, default=None, help="an existing landmark run (fold=all)")
    parser.add_argument("--landmark-epochs", type=int, default=60)
    parser.add_argument("--fold", default="all", help="a fold number (quicker) or all")
    parser.add_argument("--grading", type=Path, default=None, help="score an existing grading run, no training")
    args, overrides = parser.parse_known_args()

    from spine.baselines import class_prior_submission
    from spine.calibrate import cross_fitted
    from spine.metric import score
    from spine.preprocess.cache import Cache

    ensure_data(args.data, args.cache)
    cache = Cache.open(args.cache)
    timings = {}
    landmarks = args.landmarks or args.runs / "landmarks"
    if args.landmarks is None and args.grading is None and not (landmarks / "oof.csv").is_file():
        timings["landmarks_s"] = train(["stage=landmarks", f"fold={args.fold}", f"cache_dir={cache.root}",
                                        f"run_dir={landmarks}", f"epochs={args.landmark_epochs}",
                                        f"val_every={args.landmark_epochs}", "experiment=bench_cpu"])
    run = args.grading or args.runs / "grading"
    if args.grading is None:
        timings["grading_s"] = train(["stage=grading", f"fold={args.fold}", "experiment=grading_cpu",
                                      f"cache_dir={cache.root}", f"landmarks={landmarks}", f"run_dir={run}", "overwrite=true", *overrides])

    labels = pd.read_csv(args.data / "train.csv")
    test_labels = pd.read_csv(args.data / "test_labels.csv")
    submission = pd.read_csv(run / "submission.csv")
    test = {"prior": score(test_labels, class_prior_submission(labels, test_labels.study_id)),
            "model": score(test_labels, submission),
            "oracle": score(test_labels, pd.read_csv(args.data / "oracle_submission.csv"))}
    oof = pd.read_csv(run / "oof.csv")
    columns = ["row_id", "normal_mild", "moderate", "severe"]
    folds = cache.folds[cache.folds.study_id.isin(oof.row_id.str.split("_").str[0].astype(int))]
    oof_labels = labels[labels.study_id.isin(folds.study_id)]
    cv = {"prior": score(oof_labels, fold_prior(labels, folds)),
          "model_uncalibrated": score(oof_labels, oof[columns]),
          "model": score(oof_labels, (cross_fitted(oof, oof_labels) if oof.fold.nunique() > 1 else oof)[columns]),
          "oracle": score(oof_labels, oracle_from_truth(args.data, folds.study_id))}
    result = {"test": test, "oof": cv, "timings": timings,
              "gap_closed_test": gap(test["prior"]["score"], test["model"]["score"], test["oracle"]["score"]),
              "gap_closed_oof": gap(cv["prior"]["score"], cv["model"]["score"], cv["oracle"]["score"]),
              "overrides": overrides}
    (run / "quality.json").write_text(json.dumps(result, indent=2))

    print(f"\n{'':<28}{'score':>8}{'spinal':>9}{'foram.':>9}{'subart.':>9}{'any_sev':>9}")
    for title, table in (("test studies", test), ("out of fold", cv)):
        for name, s in table.items():
            print(f"{title + ': ' + name:<28}{s['score']:>8.4f}{s['spinal']:>9.4f}{s['foraminal']:>9.4f}"
                  f"{s['subarticular']:>9.4f}{s['any_severe_spinal']:>9.4f}")
    print(f"\nshare of the prior-to-oracle gap closed: test {result['gap_closed_test']:.1%} "
          f"({len(test_labels)} studies), out of fold {result['gap_closed_oof']:.1%} ({len(oof_labels)} studies); "
          f"target >= 60 % on CPU, >= 90 % with a GPU budget")
    print(f"timings: {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
