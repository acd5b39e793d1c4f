"""What a training stage plugs into the generic loop (:mod:`spine.train.engine`).

A stage owns its data, its loss and its evaluation; the loop owns optimisation, precision, distribution,
checkpoints and logging. ``STAGES`` in :mod:`spine.train.config` maps ``stage.name`` to a schema and a
subclass of :class:`Stage`; adding a stage (e.g. grading) means one schema, one subclass, one YAML file.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler


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
