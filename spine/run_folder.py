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
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spine.cache import CACHE_JSON as CACHE_INFO
from spine.calibrate import Calibration
from spine.cli import _first_line
from spine.constants import LABEL_COLUMNS, PROB_COLUMNS
from spine.errors import SpineError, one_line
from spine.run_config import STAGES, TrainConfig, merge_stage

__all__ = ["CACHE_JSON", "CALIBRATION_JSON", "CHECKPOINT", "CONFIG_YAML", "METRICS_JSON", "MODEL_JSON",
           "MODEL_WEIGHTS", "OOF_CSV", "PRIORS_JSON", "RUN_JSON", "SUBMISSION_CSV", "TEST_CSV", "RunFolderError",
           "fold_dirs", "load_run_config", "missing_model_files", "read_cache_info", "read_calibration",
           "read_model_json", "read_priors"]

CONFIG_YAML, RUN_JSON, METRICS_JSON = "config.yaml", "run.json", "metrics.json"
CACHE_JSON = CACHE_INFO  # the training cache's cache.json, copied: inference builds its volumes the same way
OOF_CSV, TEST_CSV, SUBMISSION_CSV = "oof.csv", "test.csv", "submission.csv"
CALIBRATION_JSON, PRIORS_JSON = "calibration.json", "priors.json"
CHECKPOINT = "checkpoint.pt"  # training state of an unfinished fold (spine.train.checkpoint)
MODEL_WEIGHTS, MODEL_JSON = "model.safetensors", "model.json"  # a finished fold's model


class RunFolderError(SpineError, FileNotFoundError):
    """A run folder that cannot be used: no config.yaml, or a file of it that is damaged (not YAML / JSON, not
    the schema, unusable values). The message is one line naming the file and why (exit code 1).

    A FileNotFoundError, as the missing config.yaml always was, so that callers that catch that keep working.
    """


def _damaged(path: Path, err: BaseException | str) -> RunFolderError:
    """The RunFolderError of a damaged run-folder file: ``<path>: <why>``, one line."""
    why = err if isinstance(err, str) else f"{type(err).__name__}: {one_line(err, 300)}"
    return RunFolderError(f"damaged run-folder file {path}: {why}")


def _read_json(path: Path) -> object:
    """The JSON of a run-folder file; RunFolderError when it cannot be read or is not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _damaged(path, err) from err


def load_run_config(run_dir) -> TrainConfig:
    """The validated config of a run: ``<run_dir>/config.yaml`` as written by ``spine-train``.

    Raises RunFolderError when the folder has no config.yaml, or one that is not YAML, names no known stage or
    does not validate against the schema (the message names the file).
    """
    path = Path(run_dir) / CONFIG_YAML
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a run folder (no {CONFIG_YAML})")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as err:  # ValueError: not text
        raise _damaged(path, f"not valid YAML ({type(err).__name__}: {one_line(err, 300)})") from err
    if not isinstance(raw, dict):
        raise _damaged(path, f"a {type(raw).__name__}, not a mapping of keys")
    stage = raw.pop("stage", {}) or {}
    if not isinstance(stage, dict):
        raise _damaged(path, f"stage is a {type(stage).__name__}, not a mapping of keys")
    name = stage.get("name")
    if name not in STAGES:
        raise _damaged(path, f"stage.name {name!r} is not a stage; stages: {', '.join(STAGES)}")
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), raw))
        cfg.stage = OmegaConf.to_object(merge_stage(STAGES[name][0], stage))
    except Exception as err:  # noqa: BLE001 - any schema failure is a bad run folder
        raise _damaged(path, _first_line(err)) from err
    return cfg


def read_cache_info(run_dir) -> dict | None:
    """The training cache's ``cache.json`` as the run recorded it, None when the run has none.

    Raises RunFolderError when it is not a JSON object.
    """
    path = Path(run_dir) / CACHE_JSON
    if not path.is_file():
        return None
    info = _read_json(path)
    if not isinstance(info, dict):
        raise _damaged(path, "not a JSON object")
    return info


def fold_dirs(run_dir) -> list[Path]:
    """The ``fold<k>`` folders of a run, in fold order (finished or not)."""
    folds = (d for d in Path(run_dir).glob("fold*") if d.is_dir() and d.name[4:].isdigit())
    return sorted(folds, key=lambda d: int(d.name[4:]))


def missing_model_files(fold) -> list[str]:
    """The files of a finished fold's model that ``fold`` lacks (empty: the fold is finished)."""
    return [name for name in (MODEL_WEIGHTS, MODEL_JSON) if not (Path(fold) / name).is_file()]


def read_model_json(fold) -> tuple[str, dict]:
    """(registered model name, constructor kwargs) of a finished fold; build it with
    ``spine.models.create_model(name, weights=fold / MODEL_WEIGHTS, **kwargs)``.

    Raises RunFolderError when model.json is missing, not JSON, or lacks the name or a kwargs mapping.
    """
    path = Path(fold) / MODEL_JSON
    described = _read_json(path)
    try:
        return str(described["name"]), dict(described.get("kwargs", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise _damaged(path, f"no model name and kwargs ({type(err).__name__}: {one_line(err, 100)})") from err


def read_calibration(run_dir) -> Calibration | None:
    """The grading run's :class:`spine.calibrate.Calibration`, None when it has no calibration.json.

    Raises RunFolderError for an unreadable or unusable one.
    """
    path = Path(run_dir) / CALIBRATION_JSON
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(path)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise _damaged(path, err) from err


def read_priors(run_dir) -> np.ndarray | None:
    """(25, 3) class priors of the grading run's priors.json in ``LABEL_COLUMNS`` x ``PROB_COLUMNS`` order, rows
    normalised; None when the run has none.

    Raises RunFolderError for an unreadable or unusable one (not JSON, a key or column missing, a probability
    that is not finite and non-negative, a row summing to 0).
    """
    path = Path(run_dir) / PRIORS_JSON
    if not path.is_file():
        return None
    data = _read_json(path)
    try:
        columns = list(data.get("columns", PROB_COLUMNS))
        order = [columns.index(c) for c in PROB_COLUMNS]
        table = np.array([[float(data["priors"][key][i]) for i in order] for key in LABEL_COLUMNS])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise _damaged(path, err) from err
    if not np.isfinite(table).all() or (table < 0).any() or (table.sum(1) <= 0).any():
        raise _damaged(path, "probabilities must be finite, non-negative, with positive row sums")
    return table / table.sum(1, keepdims=True)
