"""Typed configuration of ``spine-train`` (``configs/train/train.yaml`` + groups stage/, model/, experiment/).

The schema (``TrainConfig``, the stage configs, ``STAGES``) lives in :mod:`spine.run_config`, outside the
training package, because a run folder's ``config.yaml`` is read back by inference too
(:func:`spine.run_folder.load_run_config`); its names are re-exported here. This module adds the loader of the
command line. No torch, so a bad override fails in a second.
"""

from __future__ import annotations

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spine.cli import ConfigError, _first_line, compose
from spine.device import check_device
from spine.run_config import (
    STAGES,
    CropConfig,
    GradingAugmentConfig,
    GradingStageConfig,
    GridConfig,
    LandmarkAugmentConfig,
    LandmarkStageConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    merge_stage,
)

__all__ = ["STAGES", "CropConfig", "GradingAugmentConfig", "GradingStageConfig", "GridConfig", "LandmarkAugmentConfig",
           "LandmarkStageConfig", "ModelConfig", "OptimConfig", "TrainConfig", "load_config"]


def load_config(overrides: list[str]) -> TrainConfig:
    """Compose ``configs/train`` with Hydra overrides and validate it, stage node included.

    Raises :class:`spine.cli.ConfigError` with a one-line message, also for a ``device`` this machine does
    not have (:func:`spine.device.check_device`: checked here, not in the schema, because a run folder's
    ``config.yaml`` is read back on other machines).
    """
    cfg = compose("train", overrides, TrainConfig)
    check_device(cfg.device)
    stage = dict(cfg.stage)
    name = stage.get("name")
    if name not in STAGES:
        raise ConfigError(f"stage.name {name!r} is not a stage; stages: {', '.join(STAGES)}")
    try:
        node = merge_stage(STAGES[name][0], stage)
        cfg.stage = OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        msg = (getattr(err, "msg", None) or _first_line(err)).splitlines()[0].split(" reference_type=")[0]
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{msg} (full_key: stage.{key})" if key else f"stage: {msg}") from err
    except ValueError as err:
        raise ConfigError(_first_line(err)) from err
    return cfg
