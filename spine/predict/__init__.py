"""Inference: ``spine-predict`` (:mod:`.__main__`), `Predictor` and `predict` (:mod:`.predictor`), the config
schema (:mod:`.config`). See docs/inference.md. Names are imported on first use, so the CLI starts fast."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PredictConfig": "spine.predict.config",
    "PredictError": "spine.predict.predictor",
    "Predictor": "spine.predict.predictor",
    "StudyInfo": "spine.predict.predictor",
    "load_volumes": "spine.predict.predictor",
    "predict": "spine.predict.predictor",
    "read_listing": "spine.predict.predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spine.predict' has no attribute {name!r}")
