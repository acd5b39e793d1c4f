"""What a training stage plugs into the generic loop (:mod:`spine.train.engine`).

A stage owns its data, its loss and its evaluation; the loop owns optimisation, precision, distribution,
checkpoints and logging. ``STAGES`` in :mod:`spine.train.config` maps ``stage.name`` to a schema and a
subclass of :class:`Stage`; adding a stage (e.g. grading) means one schema, one subclass, one YAML file.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from spine.cache import FOLDS_CSV
from spine.errors import TrainingDataError
from spine.io.tables import TableError, read_train_labels

log = logging.getLogger(__name__)


class Stage:
    """Base class of a stage. Subclasses implement every method that raises ``NotImplementedError``."""

    name: str = "stage"
    monitor: str = "loss"  # the validation metric shown in the progress line and summary (lower is better)

    def __init__(self, cfg, cache) -> None:
        self.cfg, self.cache = cfg, cache

    # ---- data
    def folds(self) -> list[int]:
        """The folds of the cache's folds.csv that have studies."""
        return sorted(int(f) for f in self.cache.folds.fold.unique())

    def check_data(self) -> None:
        """Before any training: refuse a cache without a labelled study (`TrainingDataError`), and warn when the
        data folder's train.csv lists other studies than the cache's folds.csv (it changed after
        preprocessing). Stages add what their own data needs."""
        folds = self.cache.root / FOLDS_CSV
        if self.cache.folds.empty:
            raise TrainingDataError(f"nothing to train on: {folds} lists no study (was train.csv empty, or the "
                                    "train split not preprocessed? re-run python -m spine.preprocess with split=train "
                                    "or all and a train.csv that has studies)")
        self._check_train_csv_current()

    def _check_train_csv_current(self) -> None:
        data_dir = self.cache.info.get("data_dir")
        path = Path(data_dir) / "train.csv" if data_dir else None
        if path is None or not path.is_file():
            return
        try:
            labelled = set(int(s) for s in read_train_labels(path).study_id)
        except TableError as err:  # the cache's folds stand; this check only compares
            log.warning("train.csv changed since preprocessing and cannot be read now: %s", err)
            return
        cached = set(int(s) for s in self.cache.folds.study_id)
        new, gone = sorted(labelled - cached), sorted(cached - labelled)
        if new or gone:
            log.warning("%s lists %d studies, the cache's folds.csv %d: %d not in the cache (e.g. %s) are not trained "
                        "on%s; to train on train.csv as it is now, re-run python -m spine.preprocess data_dir=%s "
                        "cache_dir=%s overwrite=true (new folds), then this command", path, len(labelled), len(cached),
                        len(new), new[:3], f", {len(gone)} no longer in train.csv still are" if gone else "",
                        data_dir, self.cache.root.parent)

    def test_studies(self) -> list[int]:
        """Studies of the cache that are not in folds.csv (the test split)."""
        series, train = self.cache.series, set(int(s) for s in self.cache.folds.study_id)
        if "split" in series.columns:
            series = series[series.split == "test"]
        return sorted(set(int(s) for s in series.study_id) - train)

    def datasets(self, fold: int) -> tuple[Dataset, Dataset, Dataset | None]:
        """(train, validation, test or None) for one fold. Datasets may take ``(epoch, index)`` keys."""
        raise NotImplementedError

    # ---- model
    def model_kwargs(self) -> dict[str, Any]:
        """Constructor arguments the data decides (input channels, outputs, input size)."""
        return {}

    def train_sampler(self, dataset: Dataset, rank: int, world_size: int) -> Sampler | None:
        """A sampler of training indices for this process (with ``set_epoch``), or None for a shuffled pass."""
        return None

    def inputs(self, batch: dict) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What the model is called with: a tensor, or a tuple of positional arguments."""
        return batch["image"]

    def batch_size(self, batch: dict) -> int:
        """Number of samples in a batch (the weight of its loss in epoch means)."""
        return len(batch["study_id"])

    def loss(self, outputs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(scalar loss to minimise, detached named parts to log)."""
        raise NotImplementedError

    # ---- evaluation
    def predict(self, outputs: torch.Tensor, batch: dict) -> list[dict]:
        """Rows of the prediction table for a batch (what oof.csv and test.csv hold)."""
        raise NotImplementedError

    def evaluate(self, predictions: pd.DataFrame) -> dict[str, float]:
        """Metrics of validation predictions against the truth."""
        raise NotImplementedError

    def report(self, predictions: pd.DataFrame, dataset: Dataset, path: Path) -> None:
        """Optional picture of a validation run (written by the main process)."""

    def merge_test(self, frames: list[pd.DataFrame]) -> pd.DataFrame:
        """Ensemble the test predictions of several folds (default: concatenate)."""
        return pd.concat(frames, ignore_index=True)

    def finalize(self, run_dir: Path, oof: pd.DataFrame, test: pd.DataFrame | None) -> dict[str, float]:
        """After the folds are aggregated: run-level artefacts (calibration, plots); extra metrics to report."""
        return {}


def build_stage(cfg, cache) -> Stage:
    """Instantiate the stage named by ``cfg.stage.name``."""
    from spine.train.config import STAGES

    module, cls = STAGES[cfg.stage.name][1].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, cache)
