"""The grading step of inference: one grading run's probabilities of a study, with the input builders of training.

Crop runs: at each level centre the crop of ``stage.crop`` (`build_crops`, the builder of
`spine.data.grading.GradingDataset`), one channel per ``stage.series`` (zeros and ``present = 0`` for a
missing series); with ``tta`` also the mirrored crops (`GridAffine(flip_lr=True)`), whose left/right conditions
are swapped back (`CONDITION_SWAP`). Views runs: the per-condition views of `build_views`, the builder of the
views dataset. Probabilities are the mean over the run's folds (`grading_probabilities` of the run's loss).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from spine.constants import CONDITIONS, PROB_COLUMNS
from spine.data.crops import build_crops, level_axes
from spine.data.grading import CONDITION_SWAP
from spine.data.transforms import GridAffine
from spine.data.views import build_views
from spine.data.volume import SeriesVolume
from spine.losses import grading_probabilities
from spine.predict.runs import Run

__all__ = ["RunFailed", "grade_crops", "grade_views"]

Autocast = Callable[[], AbstractContextManager]


class RunFailed(Exception):
    """One grading run could not answer; the message is the issue's kind."""


def grade_crops(run: Run, centres: np.ndarray, volumes: dict[str, SeriesVolume | None], device: torch.device,
                tta: bool, batch_size: int, autocast: Autocast) -> np.ndarray:
    """(L, K, 3) mean probabilities of one crop run's folds (and mirrored crops with ``tta``) at the (L, 3)
    level ``centres`` (LPS mm)."""
    s = run.cfg.stage
    inputs = list(run.inputs(volumes).values())
    if all(v is None for v in inputs):
        raise RunFailed("no grading series")
    axes = level_axes(centres, s.crop.align)
    images = [build_crops(inputs, centres, axes, s.crop.size, s.crop.mm)]
    if tta:
        images.append(build_crops(inputs, centres, axes, s.crop.size, s.crop.mm, GridAffine(flip_lr=True)))
    present = images[0][1]
    image = torch.from_numpy(np.concatenate([crops for crops, _ in images]))
    n_levels, n_items = len(centres), len(images) * len(centres)
    level = torch.arange(n_levels).repeat(len(images))
    flags = torch.from_numpy(present.astype(np.float32))[None].expand(n_items, -1)
    total = None
    for model in run.models:
        parts = []
        for start in range(0, n_items, batch_size):
            sl = slice(start, start + batch_size)
            with torch.inference_mode():
                with autocast():
                    logits = model(image[sl].to(device), level[sl].to(device), flags[sl].to(device))
                parts.append(grading_probabilities(logits.float(), s.loss).cpu().numpy())
        probs = np.concatenate(parts).reshape(n_items, len(CONDITIONS), len(PROB_COLUMNS))
        if tta:
            probs = (probs[:n_levels] + probs[n_levels:][:, CONDITION_SWAP]) / 2
        total = probs if total is None else total + probs
    return _checked(total / len(run.models))


def grade_views(run: Run, points: np.ndarray, volumes: dict[str, SeriesVolume | None], device: torch.device,
                autocast: Autocast) -> np.ndarray:
    """(L, K, 3) mean probabilities of one views run's folds, on the views of the training builder centred on
    the (K, L, 3) ``points`` (LPS mm, NaN where missing)."""
    s = run.cfg.stage
    inputs = run.inputs(volumes)
    if all(v is None for v in inputs.values()):
        raise RunFailed("no grading series")
    views, present = build_views(inputs, points, run.views, s.crop.align)
    image = torch.from_numpy(views)  # (L, K, V, S, H, W)
    level = torch.arange(len(views))
    flags = torch.from_numpy(present.astype(np.float32))[None].expand(len(views), -1)
    total = 0.0
    for model in run.models:
        with torch.inference_mode(), autocast():
            logits = model(image.to(device), level.to(device), flags.to(device))
        total = total + grading_probabilities(logits.float(), s.loss).cpu().numpy()
    return _checked(total / len(run.models))


def _checked(mean: np.ndarray) -> np.ndarray:
    if not np.isfinite(mean).all():
        raise RunFailed("non-finite output")
    return mean
