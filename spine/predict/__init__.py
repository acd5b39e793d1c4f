"""Inference: ``spine-predict`` (:mod:`.__main__`) and its config schema (:mod:`.config`), the run over a
listing (`predict`, :mod:`.run`), the `Predictor` of one study (:mod:`.predictor`, with its landmark and grading
steps in :mod:`.landmarks` and :mod:`.grading`), run folders loaded for inference (:mod:`.runs`), volumes
(`load_volumes`, :mod:`.volumes`), the listing (`read_listing`, :mod:`.listing`) and a study's answer and log
line (`StudyInfo`, `Issue`, :mod:`.study`). See docs/inference.md. Nothing here imports :mod:`spine.train`.
Names are imported on first use, so the CLI starts fast."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Issue": "spine.predict.study",
    "PredictConfig": "spine.predict.config",
    "PredictError": "spine.predict.study",
    "Predictor": "spine.predict.predictor",
    "Run": "spine.predict.run_folders",
    "StudyInfo": "spine.predict.study",
    "load_run": "spine.predict.run_folders",
    "load_volumes": "spine.predict.volumes",
    "predict": "spine.predict.run",
    "read_listing": "spine.predict.listing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spine.predict' has no attribute {name!r}")
