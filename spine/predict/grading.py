"""The grading step of inference: one grading run's probabilities of a study, with the input builders of training.

The run's input object (`Run.reader`, :mod:`spine.data.inputs`: what its model declares it reads) builds the
study's input from the points, as `spine.data.grading.GradingDataset` does in training: crops at each level
centre (zeros and ``present = 0`` for a missing series) or per-condition views. With ``tta``, inputs that mirror
(crops) are also read mirrored (`GridAffine(flip_lr=True)`), their left/right conditions swapped back
(`CONDITION_SWAP`). Probabilities are the mean over the run's folds (`grading_probabilities` of the run's loss).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from spine.constants import CONDITIONS, PROB_COLUMNS
from spine.data.grading import CONDITION_SWAP
from spine.data.volume import SeriesVolume
from spine.losses import grading_probabilities
from spine.predict.run_folders import Run

__all__ = ["RunFailed", "grade"]

Autocast = Callable[[], AbstractContextManager]


class RunFailed(Exception):
    """One grading run could not answer; the message is the issue's kind."""


def grade(run: Run, points: np.ndarray, volumes: dict[str, SeriesVolume | None], device: torch.device,
          tta: bool, batch_size: int, autocast: Autocast) -> np.ndarray:
    """(L, K, 3) mean probabilities of one grading run's folds on the input its model reads (`Run.reader`, the
    training builder), from the (K, L, 3) ``points`` (LPS mm, NaN where missing); with ``tta`` also the
    mirrored input where the kind mirrors (crops), its left/right conditions swapped back."""
    inputs = run.inputs(volumes)
    if all(v is None for v in inputs.values()):
        raise RunFailed("no grading series")
    built = [run.reader.build(inputs, points, affine) for affine in run.reader.test_affines(tta)]
    present = built[0][1]
    image = torch.from_numpy(np.concatenate([b[0] for b in built]))  # (passes * L, ...)
    n_levels, n_items = len(built[0][0]), len(built) * len(built[0][0])
    level = torch.arange(n_levels).repeat(len(built))
    flags = torch.from_numpy(present.astype(np.float32))[None].expand(n_items, -1)
    total = None
    for model in run.models:
        probs = _fold_probabilities(model, image, level, flags, run.cfg.stage.loss, device, batch_size, autocast)
        if len(built) == 2:
            probs = (probs[:n_levels] + probs[n_levels:][:, CONDITION_SWAP]) / 2
        total = probs if total is None else total + probs
    return _checked(total / len(run.models))


def _fold_probabilities(model, image: torch.Tensor, level: torch.Tensor, flags: torch.Tensor, loss: str,
                        device: torch.device, batch_size: int, autocast: Autocast) -> np.ndarray:
    """(N, K, 3) probabilities of one fold's model on N inputs, ``batch_size`` at a time."""
    parts = []
    for start in range(0, len(image), batch_size):
        sl = slice(start, start + batch_size)
        with torch.inference_mode():
            with autocast():
                logits = model(image[sl].to(device), level[sl].to(device), flags[sl].to(device))
            parts.append(grading_probabilities(logits.float(), loss).cpu().numpy())
    return np.concatenate(parts).reshape(len(image), len(CONDITIONS), len(PROB_COLUMNS))


def _checked(mean: np.ndarray) -> np.ndarray:
    if not np.isfinite(mean).all():
        raise RunFailed("non-finite output")
    return mean
