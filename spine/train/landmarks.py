"""The landmark stage: where the label points of the five disc levels are, in world LPS mm.

Data: :class:`spine.data.landmarks.LandmarkDataset` (sagittal T2 + T1 on a coarse world grid).
Model: any registered heatmap model (``landmark_25d``, ``landmark_3d``, ...), output ``(B, K, *cells)``.
Loss: heatmap cross-entropy to a Gaussian + L1 of the soft-argmax position (:func:`spine.losses.landmark_loss`).
Predictions: one row per study and point, ``study_id, condition, level, world_x, world_y, world_z`` with the
competition's spelling of condition and level (as in coordinates.csv), so they join the label points.
Metrics (:func:`spine.evaluate.landmark_metrics`): error in mm (median, 90th percentile, per level and per condition group),
level-identification accuracy, share of points within 5 and 10 mm.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spine.cache import COORDINATES_CSV, FOLDS_CSV, UNRESOLVED_CSV
from spine.constants import CONDITION_NAMES, CONDITIONS, LEVEL_NAMES, LEVELS
from spine.data.landmarks import LandmarkDataset, point_names, studies_with_series
from spine.data.transforms import IntensityAugment, RandomGridAffine
from spine.errors import TrainingDataError
from spine.evaluate import landmark_metrics, truth_frame
from spine.losses import landmark_loss
from spine.models.decode import LandmarkDecoder
from spine.train.stage import Stage

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["study_id", "condition", "level", "world_x", "world_y", "world_z"]
_COND_NAME = dict(zip(CONDITIONS, CONDITION_NAMES))
_LEVEL_NAME = dict(zip(LEVELS, LEVEL_NAMES))


class LandmarkStage(Stage):
    name = "landmarks"
    monitor = "median_mm"

    def __init__(self, cfg, cache) -> None:
        super().__init__(cfg, cache)
        self.scfg = cfg.stage
        self.names = point_names(self.scfg.conditions)
        self.decoder = LandmarkDecoder.from_stage(self.scfg)

    # ---- data
    def datasets(self, fold: int):
        folds = self.cache.folds
        if fold not in set(int(f) for f in folds.fold):
            raise ValueError(f"fold {fold} has no studies in {self.cache.root / FOLDS_CSV} "
                             f"(folds: {sorted(set(int(f) for f in folds.fold))})")
        s = self.scfg
        train_ids, skipped_train = studies_with_series(self.cache, folds[folds.fold != fold].study_id, s.series)
        val_ids, skipped_val = studies_with_series(self.cache, folds[folds.fold == fold].study_id, s.series)
        test_ids, skipped_test = studies_with_series(self.cache, self.test_studies(), s.series)
        for what, skipped in (("train", skipped_train), ("validation", skipped_val), ("test", skipped_test)):
            if skipped:
                log.warning("%d %s studies have none of %s: left out (e.g. %s)", len(skipped), what, s.series,
                            skipped[:3])
        common = dict(cache=self.cache, series=s.series, conditions=s.conditions, grid_size=s.grid.size,
                      grid_spacing=s.grid.spacing_mm, percentiles=s.percentiles, seed=self.cfg.seed,
                      memory_mb=s.cache_mb)
        a = s.augment
        geometry = intensity = None
        if a.enabled:
            geometry = RandomGridAffine(tuple(a.rotate_deg), a.scale, tuple(a.translate_mm), a.flip_lr)
            intensity = IntensityAugment(a.bias_field, a.gamma, a.noise_std)
        train = LandmarkDataset(study_ids=train_ids, geometry=geometry, intensity=intensity, **common)
        self._check_points(train, fold)
        val = LandmarkDataset(study_ids=val_ids, **common)
        test = LandmarkDataset(study_ids=test_ids, **common) if test_ids else None
        return train, val, test

    def _check_points(self, train: LandmarkDataset, fold: int) -> None:
        """Refuse to train fold ``fold`` on no label point (`TrainingDataError`), naming where they went."""
        if np.isfinite(train.world).all(-1).any():
            return
        root = self.cache.root
        where = (f"{root / COORDINATES_CSV} has no point with a world position (see {root / UNRESOLVED_CSV} "
                 "for why)" if not np.isfinite(self.cache.coordinates[["world_x", "world_y", "world_z"]].to_numpy(
                     dtype=np.float64)).all(-1).any() else
                 f"none of {root / COORDINATES_CSV} is of conditions {list(self.scfg.conditions)} in these studies")
        raise TrainingDataError(f"fold {fold}: no label point to train the landmark stage on among its "
                                f"{len(train)} training studies: {where}")

    def model_kwargs(self) -> dict:
        return {"in_chans": len(self.scfg.series), "num_points": len(self.names),
                "grid_size": list(self.scfg.grid.size)}

    # ---- loss and predictions
    def loss(self, outputs, batch):
        s = self.scfg
        return landmark_loss(outputs, batch["target"], batch["mask"], s.grid.spacing_mm, s.grid.size,
                             sigma_mm=s.sigma_mm, l1_scale_mm=s.l1_scale_mm, heatmap_weight=s.heatmap_weight)

    def decode(self, outputs: torch.Tensor, batch: dict) -> np.ndarray:
        """(B, K, 3) predicted world LPS mm, in the patient's left/right (mirrored grids are undone): the
        decoder spine-predict uses too (:class:`spine.models.decode.LandmarkDecoder`)."""
        return self.decoder(outputs, batch["grid_matrix"], batch["grid_origin"], batch["flip"])

    def predict(self, outputs, batch) -> list[dict]:
        world = self.decode(outputs, batch)
        rows = []
        for b, study in enumerate(batch["study_id"].cpu().tolist()):
            for k, (condition, level) in enumerate(self.names):
                rows.append({"study_id": int(study), "condition": _COND_NAME[condition], "level": _LEVEL_NAME[level],
                             "world_x": world[b, k, 0], "world_y": world[b, k, 1], "world_z": world[b, k, 2]})
        return rows

    def merge_test(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """Mean position over folds."""
        frame = pd.concat(frames, ignore_index=True)
        return frame.groupby(["study_id", "condition", "level"], sort=False, as_index=False)[
            ["world_x", "world_y", "world_z"]].mean()

    # ---- evaluation
    @cached_property
    def truth(self) -> pd.DataFrame:
        return truth_frame(self.cache.coordinates)

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        return landmark_metrics(predictions, self.truth)

    def report(self, predictions: pd.DataFrame, dataset, path: Path) -> None:
        n = min(self.scfg.plot_studies, len(dataset))
        if n > 0 and not predictions.empty:
            from spine.plots import plot_landmarks

            plot_landmarks(dataset, predictions, list(range(n)), path)
