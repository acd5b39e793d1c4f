"""Run folders ready for inference: `load_run` reads one (:mod:`spine.run_folder`) and builds its fold models.

A `Run` knows what its models read: the series types (`Run.series`), built with the options of its training
cache (`Run.volume_options`), and normalised and sampled as in training (`Run.inputs`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from spine.cache import volume_options
from spine.calibrate import Calibration
from spine.data.inputs import GradingInput, grading_input
from spine.data.volume import SeriesVolume
from spine.models import create_model
from spine.predict.study import PredictError, first_lines
from spine.run_config import TrainConfig
from spine.run_folder import (
    MODEL_WEIGHTS,
    RunFolderError,
    fold_dirs,
    load_run_config,
    missing_model_files,
    read_cache_info,
    read_calibration,
    read_model_json,
    read_priors,
)

__all__ = ["Run", "load_run"]

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A run folder ready for inference: its config, fold models, and (grading) calibration and priors."""

    path: Path
    cfg: TrainConfig
    params: dict  # cache.json params: how the training volumes were made
    models: list
    folds: list[str]
    calibration: Calibration | None = None
    priors: np.ndarray | None = None  # (25, 3) in LABEL_COLUMNS order

    @property
    def stage(self) -> str:
        return self.cfg.stage.name

    @cached_property
    def reader(self) -> GradingInput | None:
        """What a grading run's model reads (:mod:`spine.data.inputs`, declared by the model); None for a
        landmark run."""
        if self.stage != "grading":
            return None
        return grading_input(getattr(self.models[0], "spine_name", self.cfg.model.name), self.cfg.stage)

    @property
    def series(self) -> list[str]:
        """The series types the run's models read, in channel order."""
        return list(self.reader.series if self.reader is not None else self.cfg.stage.series)

    @property
    def volume_options(self) -> dict:
        """``make_volume`` options of the run's training cache (``min_slices``, ``max_gap_factor``)."""
        return volume_options(self.params)

    def inputs(self, volumes: dict[str, SeriesVolume | None]) -> dict[str, SeriesVolume | None]:
        """The run's series (`series`, in order) of ``volumes``, normalised by the run's ``stage.percentiles``
        and sampled with its cache's ``max_gap_factor``, as its training did; None where a series is missing."""
        percentiles = tuple(float(p) for p in self.cfg.stage.percentiles)
        gap = self.volume_options["max_gap_factor"]
        out = {}
        for description in self.series:
            volume = volumes.get(description)
            out[description] = None if volume is None else dataclasses.replace(
                volume, percentiles=percentiles, max_gap_factor=gap)  # the intensity ranges stay cached
        return out


def load_run(path, device) -> Run:
    """Read a run folder and build its finished fold models on ``device`` (eval mode).

    Raises PredictError when the folder is not a usable run (it does not exist, no finished fold, a fold's
    model cannot be built), RunFolderError when one of its files is missing or damaged (config.yaml, cache.json,
    model.json, calibration.json: the message names the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise PredictError(f"run folder {path} does not exist")
    cfg = load_run_config(path)
    info = read_cache_info(path)
    if info is None:
        log.warning(f"{path}: no cache.json; volumes are built with the default preprocessing options")
    params = (info or {}).get("params", {}) or {}
    models, folds = [], []
    for fold in fold_dirs(path):
        missing = missing_model_files(fold)
        if missing:
            log.warning(f"{fold}: unfinished fold (no {missing[0]}), skipped")
            continue
        name, kwargs = read_model_json(fold)
        try:
            model = create_model(name, weights=fold / MODEL_WEIGHTS, **kwargs)
        except Exception as err:  # noqa: BLE001 - a broken fold is a configuration problem
            raise PredictError(f"{fold}: cannot build the model: {first_lines(err)}") from None
        models.append(model.to(device).eval())
        folds.append(fold.name)
    if not models:
        raise PredictError(f"run {path} has no finished fold (no fold*/{MODEL_WEIGHTS})")
    run = Run(path, cfg, params, models, folds)
    if run.stage == "grading":
        run.calibration = read_calibration(path)  # a damaged one: RunFolderError (uncalibrated would be wrong)
        if run.calibration is None:
            log.warning(f"{path}: no calibration.json, probabilities are used uncalibrated")
        run.priors = _priors(path)
    return run


def _priors(path: Path) -> np.ndarray | None:
    """The grading run's priors (`read_priors`), None with a warning when absent or unusable."""
    try:
        priors = read_priors(path)
    except RunFolderError as err:  # only the fallback answer of studies without a model answer: uniform instead
        log.warning(f"{first_lines(err, 300)}; ignored")
        return None
    if priors is None:
        log.warning(f"{path}: no priors.json")
    return priors


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; PredictError for CUDA where there is none."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device={device}: CUDA is not available")
    return dev
