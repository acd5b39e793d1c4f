"""The grading stage: severity of the 5 conditions at the 5 disc levels, from per-level multi-series crops.

Data: :class:`spine.data.grading.GradingDataset`, one item per study = 5 crops (one per level) of every
series type, co-registered. Training crops are centred on the label points (with landmark-like errors);
validation and test crops on the landmark run's predictions (``landmarks=<run>``: its oof.csv and
test.csv), so the CV score is the two-stage pipeline's.
Model: any registered grading model called as ``model(image (N, C, X, Y, Z), level (N,), present (N, C))``
returning ``(N, 5, 3)`` logits (conditions x grades); N = studies x 5 levels.
Loss: :func:`spine.losses.grading_loss` (the metric's weighted log loss per condition group + the
any-severe-spinal term; focal and BCE variants).
Predictions: submission rows ``row_id, normal_mild, moderate, severe``; metrics: the competition metric.
After the folds (``finalize``): calibration fitted on the OOF (``calibration.json``, score before / after,
cross-fitted), class priors of the training labels (``priors.json``, the inference fallback), the calibrated
test submission (``submission.csv``), confusion and reliability PNGs.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from spine.cache import FOLDS_CSV
from spine.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, PROB_COLUMNS, row_id
from spine.data.crops import level_centres
from spine.data.grading import (
    CONDITION_SWAP,
    GradingDataset,
    WeightedEpochSampler,
    label_table,
    landmark_errors,
    point_table,
    study_weights,
)
from spine.data.inputs import grading_input
from spine.data.landmarks import studies_with_series
from spine.data.transforms import IntensityAugment
from spine.errors import TrainingDataError
from spine.io.tables import TableError, read_train_labels
from spine.run_folder import CALIBRATION_JSON, OOF_CSV, PRIORS_JSON, SUBMISSION_CSV, TEST_CSV, RunFolderError
from spine.train.stage import Stage

log = logging.getLogger(__name__)



class GradingStage(Stage):
    name = "grading"
    monitor = "score"

    def __init__(self, cfg, cache) -> None:
        super().__init__(cfg, cache)
        self.scfg = cfg.stage
        self.landmark_run = Path(cfg.landmarks) if cfg.landmarks else None
        # the model declares what it reads (spine.data.inputs): per-level crops or per-condition views
        self.reader = grading_input(cfg.model.name, self.scfg)
        if self.landmark_run is not None and not (self.landmark_run / OOF_CSV).is_file():
            raise RunFolderError(f"landmarks={cfg.landmarks}: no oof.csv there (train the landmark stage "
                                    "with fold=all first, or leave landmarks empty to crop at the label points)")

    # ---- tables
    @cached_property
    def labels(self) -> pd.DataFrame:
        """train.csv of the cache's data (or ``stage.labels``), checked: `spine.io.tables.read_train_labels`
        raises TableError for unknown grades, missing label columns or a study in several differing rows."""
        path = Path(self.scfg.labels) if self.scfg.labels else Path(self.cache.info.get("data_dir", "")) / "train.csv"
        if not path.is_file():
            raise TableError(f"grading labels {path} not found: set stage.labels=<train.csv>")
        return read_train_labels(path)

    def _predicted_points(self, name: str) -> pd.DataFrame | None:
        path = self.landmark_run / name if self.landmark_run is not None else None
        return pd.read_csv(path) if path is not None and path.is_file() else None

    def _points(self, study_ids: list[int], predicted: pd.DataFrame | None, what: str,
                fallback_to_labels: bool) -> np.ndarray:
        """(n, K, L, 3) points, LPS mm: the landmark run's predictions where available, else (optionally)
        the label points."""
        labelled = point_table(self.cache.coordinates, study_ids)
        if predicted is None:
            if fallback_to_labels and study_ids:
                log.warning("%s: inputs at the label points (no landmark run given): an optimistic score", what)
            return labelled if fallback_to_labels else np.full_like(labelled, np.nan)
        points = point_table(predicted, study_ids)
        missing = ~np.isfinite(points).any(axis=(1, 2, 3))
        if missing.any() and fallback_to_labels:
            log.warning("%s: %d studies have no landmark prediction in %s: taken at their label points", what,
                        int(missing.sum()), self.landmark_run)
            points[missing] = labelled[missing]
        return points

    def _augment(self):
        """Training randomness: landmark-like point errors (views) or centre errors (crops), geometry."""
        a = self.scfg.augment
        if not a.enabled:
            return None, None
        intensity = IntensityAugment(a.bias_field, a.gamma, a.noise_std)
        return self.reader.augment(a, self._landmark_errors), intensity

    def _landmark_errors(self) -> np.ndarray | None:
        """(m, K, L, 3) the landmark run's own out-of-fold point errors (world mm; its oof.csv), or None."""
        oof = self._predicted_points(OOF_CSV)  # every out-of-fold study: the landmark model's error pattern
        errors = None if oof is None else landmark_errors(oof, self.cache.coordinates, sorted(set(oof.study_id)))
        if errors is not None and len(errors):
            log.info("training points move like the landmark run erred: %d studies' out-of-fold errors",
                     len(errors))
        return errors

    # ---- data
    def datasets(self, fold: int):
        folds, s = self.cache.folds, self.scfg
        if fold not in set(int(f) for f in folds.fold):
            raise ValueError(f"fold {fold} has no studies in {self.cache.root / FOLDS_CSV}")
        splits = {"train": folds[folds.fold != fold].study_id, "validation": folds[folds.fold == fold].study_id,
                  "test": self.test_studies()}
        oof, test = self._predicted_points(OOF_CSV), self._predicted_points(TEST_CSV)
        sources = {"train": (None, True), "validation": (oof, True), "test": (test, False)}
        common = dict(cache=self.cache, reader=self.reader, percentiles=s.percentiles, seed=self.cfg.seed)
        series = self.reader.series
        out = {}
        for what, ids in splits.items():
            ids, skipped = studies_with_series(self.cache, ids, series)
            if what == "test" and self.landmark_run is None:
                ids, skipped = [], []  # nowhere to look without predicted points
            predicted, fallback = sources[what]
            points = self._points(ids, predicted, what, fallback) if what != "train" else \
                point_table(self.cache.coordinates, ids)
            centres = np.stack([level_centres(p) for p in points]) if len(ids) else np.zeros((0, len(LEVELS), 3))
            usable = np.isfinite(centres).all(-1).any(-1)
            if not usable.all() or skipped:
                log.warning("%s: %d studies without series or points left out", what,
                            int((~usable).sum()) + len(skipped))
            ids = [i for i, ok in zip(ids, usable) if ok]
            augment, intensity = self._augment() if what == "train" else (None, None)
            out[what] = GradingDataset(study_ids=ids, labels=label_table(self.labels, ids), centres=centres[usable],
                                       points=points[usable], augment=augment, intensity=intensity, **common)
            if what == "train":
                self._check_labels(out["train"], fold)  # before the other splits say anything
        return out["train"], out["validation"], (out["test"] if len(out["test"]) else None)

    def _check_labels(self, train: GradingDataset, fold: int) -> None:
        """Refuse to train fold ``fold`` on no graded level (`TrainingDataError`), saying why there is none."""
        if len(train) and (train.labels >= 0).any():
            return
        why = (f"none of its {len(train)} training studies has a grade in train.csv" if len(train) else
               "no training study has its series and label points in the cache (coordinates.csv, series.csv)")
        raise TrainingDataError(f"fold {fold}: nothing to train the grading stage on: {why}")

    def train_sampler(self, dataset, rank: int, world_size: int):
        weights = self.scfg.sampler_weights
        if len(set(weights)) == 1:
            return None  # uniform: the engine's shuffled pass
        return WeightedEpochSampler(study_weights(dataset.labels, weights), len(dataset), self.cfg.seed, rank,
                                    world_size)

    # ---- model
    def model_kwargs(self) -> dict:
        """Levels and grades, and what the input implies (channels and crop size, or the views' shape)."""
        return {"num_levels": len(LEVELS), "num_classes": len(PROB_COLUMNS), **self.reader.model_kwargs()}

    def inputs(self, batch: dict):
        """(crops (B*L, C, X, Y, Z) or views (B*L, K, V, S, H, W), level (B*L,), present (B*L, P)): every level
        of every study."""
        return self.reader.forward_args(batch["image"], batch["present"])

    def batch_size(self, batch: dict) -> int:
        return len(batch["study_id"])

    def loss(self, outputs, batch):
        from spine.losses import grading_loss

        s = self.scfg
        logits = outputs.float().view(*batch["target"].shape, -1)  # (B, L, K, 3)
        return grading_loss(logits, batch["target"], kind=s.loss, class_weights=tuple(s.class_weights),
                            any_severe_weight=s.any_severe_weight, focal_gamma=s.focal_gamma)

    def predict(self, outputs, batch) -> list[dict]:
        from spine.losses import grading_probabilities

        target = batch["target"]
        probs = grading_probabilities(outputs.float().view(*target.shape, -1), self.scfg.loss).cpu().numpy()
        flips = batch["flip"].cpu().numpy()
        rows = []
        for b, study in enumerate(batch["study_id"].cpu().tolist()):
            p = probs[b][:, CONDITION_SWAP] if flips[b] else probs[b]  # (L, K, 3) in the patient's left/right
            for lv, level in enumerate(LEVELS):
                for k, condition in enumerate(CONDITIONS):
                    rows.append({"row_id": row_id(int(study), condition, level),
                                 **dict(zip(PROB_COLUMNS, p[lv, k].tolist()))})
        return rows

    def merge_test(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """Mean probabilities over folds, rows renormalised."""
        frame = pd.concat(frames, ignore_index=True)
        mean = frame.groupby("row_id", sort=False)[list(PROB_COLUMNS)].mean()
        mean = mean.div(mean.sum(axis=1), axis=0)
        return mean.reset_index()

    # ---- evaluation
    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        from spine.metric import score

        if predictions.empty:
            return {}
        studies = {rid.split("_", 1)[0] for rid in predictions.row_id}
        labels = self.labels[self.labels.study_id.astype(str).isin(studies)]
        return score(labels, predictions[["row_id", *PROB_COLUMNS]])

    def finalize(self, run_dir: Path, oof: pd.DataFrame, test: pd.DataFrame | None) -> dict[str, float]:
        """Priors, calibration (fitted on the whole OOF; score reported cross-fitted), plots, test submission."""
        from spine.baselines import class_priors
        from spine.calibrate import Calibration, cross_fitted, fit_calibration
        from spine.plots import plot_confusion, plot_reliability

        run_dir = Path(run_dir)
        priors = class_priors(self.labels)
        (run_dir / PRIORS_JSON).write_text(json.dumps(
            {"columns": list(PROB_COLUMNS), "priors": dict(zip(LABEL_COLUMNS, priors.round(6).tolist())),
             "source": "class_priors(train.csv): p proportional to metric weight x (count + 1)"}, indent=1))
        out: dict[str, float] = {}
        calibration = Calibration.identity()
        studies = {rid.split("_", 1)[0] for rid in oof.row_id}
        labels = self.labels[self.labels.study_id.astype(str).isin(studies)]
        if self.scfg.calibrate and not oof.empty:
            calibration = fit_calibration(oof, labels)
            if oof["fold"].nunique() >= 2:
                honest = self.evaluate(cross_fitted(oof, labels))
                out.update({f"calibrated/{k}": v for k, v in honest.items()})
        calibration.to_json(run_dir / CALIBRATION_JSON)
        if test is not None and not test.empty:
            calibration.apply(test[["row_id", *PROB_COLUMNS]]).to_csv(run_dir / SUBMISSION_CSV, index=False)
        if not oof.empty:
            plot_confusion(oof, labels, run_dir / "oof_confusion.png")
            plot_reliability(oof, labels, run_dir / "oof_reliability.png")
        return out

