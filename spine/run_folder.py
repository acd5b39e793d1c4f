"""The run folder of ``spine-train``: which files it holds and how they are read back.

Written by training (:mod:`spine.train`), read by training itself (resume, aggregation, a grading run's landmark
run), by ``spine-predict`` and by the Kaggle packaging. Nothing of :mod:`spine.train` and no torch here, so
inference reads a run without the training code::

    <run>/config.yaml          the resolved config of the latest launch (spine.run_config.TrainConfig)
    <run>/cache.json           the training cache's cache.json: how its volumes were made (inference builds
                               its volumes the same way)
    <run>/oof.csv, test.csv    out-of-fold and test predictions merged over the finished folds
    <run>/metrics.json         metrics of oof.csv and of each fold
    <run>/calibration.json     grading: the calibration fitted on the OOF (spine.calibrate.Calibration)
    <run>/priors.json          grading: class priors of the training labels, the inference fallback
    <run>/submission.csv       grading: the calibrated test submission
    <run>/fold<k>/             one fold: config.yaml, run.json, metrics.json, oof.csv, test.csv; while training
                               checkpoint.pt + last*.safetensors (spine.train.checkpoint); when finished
                               model.safetensors (the weights) + model.json (model name and constructor kwargs)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from spine.calibrate import Calibration
from spine.config import ConfigError, _first_line
from spine.constants import LABEL_COLUMNS, PROB_COLUMNS
from spine.run_config import STAGES, TrainConfig

__all__ = ["CACHE_JSON", "CALIBRATION_JSON", "CHECKPOINT", "CONFIG_YAML", "METRICS_JSON", "MODEL_JSON",
           "MODEL_WEIGHTS", "OOF_CSV", "PRIORS_JSON", "RUN_JSON", "SUBMISSION_CSV", "TEST_CSV", "fold_dirs",
           "load_run_config", "missing_model_files", "read_cache_info", "read_calibration", "read_model_json",
           "read_priors"]

CONFIG_YAML, CACHE_JSON, RUN_JSON, METRICS_JSON = "config.yaml", "cache.json", "run.json", "metrics.json"
OOF_CSV, TEST_CSV, SUBMISSION_CSV = "oof.csv", "test.csv", "submission.csv"
CALIBRATION_JSON, PRIORS_JSON = "calibration.json", "priors.json"
CHECKPOINT = "checkpoint.pt"  # training state of an unfinished fold (spine.train.checkpoint)
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"  # a finished fold's model


def load_run_config(run_dir) -> TrainConfig:
    """The validated config of a run: ``<run_dir>/config.yaml`` as written by ``spine-train``.

    Raises FileNotFoundError when the folder has no config.yaml, ConfigError when it does not validate.
    """
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {CONFIG_YAML})")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    stage = raw.pop("stage", {}) or {}
    name = stage.get("name")
    if name not in STAGES:
        raise ConfigError(f"{path}: stage.name {name!r} is not a stage; stages: {', '.join(STAGES)}")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), raw))
        cfg.stage = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(STAGES[name][0]), stage))
    except Exception as err:  # noqa: BLE001 - any schema failure is a bad run folder
        raise ConfigError(f"{path}: {_first_line(err)}") from err
    return cfg


def read_cache_info(run_dir) -> dict | None:
    """The training cache's ``cache.json`` as the run recorded it, None when the run has none."""
    path = Path(run_dir) / CACHE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def fold_dirs(run_dir) -> list[Path]:
    """The ``fold<k>`` folders of a run, in fold order (finished or not)."""
    folds = (d for d in Path(run_dir).glob("fold*") if d.is_dir() and d.name[4:].isdigit())
    return sorted(folds, key=lambda d: int(d.name[4:]))


def missing_model_files(fold) -> list[str]:
    """The files of a finished fold's model that ``fold`` lacks (empty: the fold is finished)."""
    return [name for name in (MODEL_WEIGHTS, MODEL_JSON) if not (Path(fold) / name).is_file()]


def read_model_json(fold) -> tuple[str, dict]:
    """(registered model name, constructor kwargs) of a finished fold; build it with
    ``spine.models.create_model(name, weights=fold / MODEL_WEIGHTS, **kwargs)``."""
    described = json.loads((Path(fold) / MODEL_JSON).read_text())
    return str(described["name"]), dict(described.get("kwargs", {}))


def read_calibration(run_dir) -> Calibration | None:
    """The grading run's :class:`spine.calibrate.Calibration`, None when it has no calibration.json.

    Raises ValueError (json.JSONDecodeError included) or KeyError for an unreadable one.
    """
    path = Path(run_dir) / CALIBRATION_JSON
    return Calibration.from_json(path) if path.is_file() else None


def read_priors(run_dir) -> np.ndarray | None:
    """(25, 3) class priors of the grading run's priors.json in ``LABEL_COLUMNS`` x ``PROB_COLUMNS`` order, rows
    normalised; None when the run has none.

    Raises ValueError (json.JSONDecodeError included), KeyError, TypeError or IndexError for an unusable one.
    """
    path = Path(run_dir) / PRIORS_JSON
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    columns = list(data.get("columns", PROB_COLUMNS))
    order = [columns.index(c) for c in PROB_COLUMNS]
    table = np.array([[float(data["priors"][key][i]) for i in order] for key in LABEL_COLUMNS])
    if not np.isfinite(table).all() or (table < 0).any() or (table.sum(1) <= 0).any():
        raise ValueError("probabilities must be finite, non-negative, with positive row sums")
    return table / table.sum(1, keepdims=True)
