"""Quality benchmark: the two-stage pipeline (landmarks -> grading) on enough synthetic studies to trust.

    .venv/bin/python benchmarks/quality.py [--n-train 400] [--n-test 200] [--generator 3] [--fold all|0]
                                           [--models views,25d,3d] [--landmarks RUN] [override ...]

Makes the dataset (``spine.synth`` preset=small, seed 1, generator ``--generator`` (3: MR physics; 2: the previous
one: the same studies, labels and points, other images), ``--n-train`` training and ``--n-test`` held-out test
studies)
and the cache if they are missing, trains the landmark stage (``experiment=bench_cpu``, every fold, or reuses
``--landmarks``), then for each model of ``--models`` the grading stage with ``experiment=grading_cpu`` and
that model's overrides (:data:`MODELS`; extra overrides go to every spine-train call). ``--fold 0`` is the quick
mode for iterating (one fold: OOF = that fold, test = its one model).

Prints, for the held-out test studies (the run's calibrated submission.csv, the fold ensemble) and out of
fold (every training study once, calibration cross-fitted), lower is better (the competition metric), side
by side: the class prior (fitted on the training labels), each model, the oracle (Bayes-optimal from the true
narrowing); then the share of the prior-to-oracle gap each model closes, (prior - model) / (prior - oracle),
overall and for each of the four parts; then each model as a reader of the latent narrowing (the noise on it at
which the Bayes-optimal answer scores as the model does: :func:`reading_noise`). Writes ``<runs>/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent
PARTS = ("score", "spinal", "foraminal", "subarticular", "any_severe_spinal")
# name -> spine-train overrides on top of experiment=grading_cpu (which is the views model)
MODELS: dict[str, list[str]] = {
    "views": [],
    "25d": ["model=grading_25d_tiny", "stage.crop.size=[32,32,32]"],
    "3d": ["model=grading_3d_small", "stage.crop.size=[32,32,32]"],
}


def train(args: list[str]) -> float:
    print("$ spine-train " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([str(BIN / "spine-train"), *args, "progress=false", "tensorboard=false"], check=True)
    return time.perf_counter() - started


def ensure_data(data: Path, cache: Path, n_train: int, n_test: int, version: int) -> None:
    from spine.cli import compose

    if not (data / "train.csv").is_file():
        from spine.synth.config import SynthConfig
        from spine.synth.generate import generate

        print(f"[bench] generating {n_train} + {n_test} studies (preset small, seed 1, generator {version}) into "
              f"{data}", flush=True)
        generate(compose("synth", ["preset=small", "seed=1", f"n_train={n_train}", f"n_test={n_test}",
                                   f"version={version}", f"out_dir={data}"], SynthConfig))
    if not any(cache.glob("*/series.csv")):
        from spine.preprocess.config import PreprocessConfig
        from spine.preprocess.run import run

        print(f"[bench] preprocessing into {cache}", flush=True)
        run(compose("preprocess", [f"data_dir={data}", f"cache_dir={cache}", "split=all", "progress=false"],
                    PreprocessConfig))


def truth_of(data: Path, study_ids) -> tuple[pd.DataFrame, float]:
    """truth.csv's rows (latent narrowing) of ``study_ids`` and the dataset's label noise."""
    sigma = json.loads((data / "dataset.json").read_text())["config"]["label_noise"]
    truth = pd.read_csv(data / "truth.csv")
    return truth[truth.study_id.isin([int(s) for s in study_ids])].reset_index(drop=True), sigma


def oracle_from_truth(data: Path, study_ids) -> pd.DataFrame:
    """The Bayes-optimal submission of ``study_ids`` from their latent narrowing and the label noise."""
    from spine.synth.labels import oracle_submission

    return oracle_submission(*truth_of(data, study_ids))


def reading_noise(data: Path, test_labels: pd.DataFrame, target: float) -> float:
    """:func:`spine.synth.labels.reading_noise` of a test score: the noise on the latent narrowing at which the
    Bayes-optimal answer scores ``target``."""
    from spine.synth.labels import reading_noise as noise

    truth, sigma = truth_of(data, test_labels.study_id)
    return noise(truth, test_labels, sigma, target)


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


def evaluate(run: Path, data: Path, cache) -> dict:
    """Test and OOF scores of one grading run with the prior and the oracle on the same studies."""
    from spine.baselines import class_prior_submission
    from spine.calibrate import cross_fitted
    from spine.metric import score

    labels = pd.read_csv(data / "train.csv")
    test_labels = pd.read_csv(data / "test_labels.csv")
    test = {"prior": score(test_labels, class_prior_submission(labels, test_labels.study_id)),
            "model": score(test_labels, pd.read_csv(run / "submission.csv")),
            "oracle": score(test_labels, pd.read_csv(data / "oracle_submission.csv"))}
    oof = pd.read_csv(run / "oof.csv")
    columns = ["row_id", "normal_mild", "moderate", "severe"]
    folds = cache.folds[cache.folds.study_id.isin(oof.row_id.str.split("_").str[0].astype(int))]
    oof_labels = labels[labels.study_id.isin(folds.study_id)]
    cv = {"prior": score(oof_labels, fold_prior(labels, folds)),
          "model_uncalibrated": score(oof_labels, oof[columns]),
          "model": score(oof_labels, (cross_fitted(oof, oof_labels) if oof.fold.nunique() > 1 else oof)[columns]),
          "oracle": score(oof_labels, oracle_from_truth(data, folds.study_id))}
    closed = {where: {p: gap(t["prior"][p], t["model"][p], t["oracle"][p]) for p in PARTS}
              for where, t in (("test", test), ("oof", cv))}
    return {"test": test, "oof": cv, "gap_closed": closed, "n_test": len(test_labels), "n_oof": len(oof_labels),
            "reading_noise": reading_noise(data, test_labels, test["model"]["score"])}


def report(results: dict[str, dict]) -> None:
    head = f"{'':<34}" + "".join(f"{p[:8]:>10}" for p in PARTS)
    for where, title in (("test", "held-out test studies"), ("oof", "out of fold")):
        first = next(iter(results.values()))
        print(f"\n{title} ({first['n_' + where]} studies), the metric (lower is better)\n{head}")
        rows = [("class prior", first[where]["prior"])]
        rows += [(f"model {name}", r[where]["model"]) for name, r in results.items()]
        rows += [("oracle", first[where]["oracle"])]
        for name, s in rows:
            print(f"{name:<34}" + "".join(f"{s[p]:>10.4f}" for p in PARTS))
        print("share of the prior-to-oracle gap closed")
        for name, r in results.items():
            print(f"{'model ' + name:<34}" + "".join(f"{r['gap_closed'][where][p]:>10.1%}" for p in PARTS))
    print("\nas a reader of the latent narrowing (test): the noise on it (thresholds 0.4 / 0.7) at which the "
          "Bayes-optimal answer scores as the model does")
    for name, r in results.items():
        print(f"{'model ' + name:<34}{r['reading_noise']:>10.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--generator", type=int, default=3, choices=(2, 3), help="the synthetic generator's version")
    parser.add_argument("--data", type=Path, default=None, help="default bench_data/q<n-train + n-test>_v<generator>")
    parser.add_argument("--cache", type=Path, default=None, help="default <data>_cache")
    parser.add_argument("--runs", type=Path, default=Path("bench_runs/quality"))
    parser.add_argument("--landmarks", type=Path, default=None, help="an existing landmark run (fold=all)")
    parser.add_argument("--landmark-epochs", type=int, default=30,
                        help="landmark epochs (generator v2 needs about 30, docs/training.md)")
    parser.add_argument("--fold", default="all", help="a fold number (quick mode) or all")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--score-only", action="store_true", help="score the existing runs, no training")
    args, overrides = parser.parse_known_args()
    data = args.data or Path(f"bench_data/q{args.n_train + args.n_test}_v{args.generator}")
    cache_dir = args.cache or Path(f"{data}_cache")
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")

    from spine.cache import Cache

    ensure_data(data, cache_dir, args.n_train, args.n_test, args.generator)
    cache = Cache.open(cache_dir)
    timings: dict[str, float] = {}
    landmarks = args.landmarks or args.runs / "landmarks"
    if not args.score_only and args.landmarks is None and not (landmarks / "oof.csv").is_file():
        timings["landmarks_s"] = train(["stage=landmarks", "fold=all", "experiment=bench_cpu", f"cache_dir={cache.root}",
                                        f"run_dir={landmarks}", f"epochs={args.landmark_epochs}",
                                        f"val_every={args.landmark_epochs}"])
    results = {}
    for name in models:
        run = args.runs / f"grading_{name}"
        if not args.score_only:
            timings[f"grading_{name}_s"] = train(["stage=grading", f"fold={args.fold}", "experiment=grading_cpu",
                                                  *MODELS[name], f"cache_dir={cache.root}", f"landmarks={landmarks}",
                                                  f"run_dir={run}", "overwrite=true", *overrides])
        results[name] = evaluate(run, data, cache)
    report(results)
    print(f"\ntimings (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    (args.runs / "quality.json").write_text(json.dumps({"results": results, "timings": timings, "fold": args.fold,
                                                        "overrides": overrides, "data": str(data)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
