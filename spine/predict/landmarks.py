"""The landmark step of inference: one landmark run's points of a study, with the input builder of training.

The input is the one `spine.data.landmarks.LandmarkDataset` makes: each series pooled to the grid spacing
(`prepare_volume`), the study grid centred on the first series present (`study_grid`), one normalised channel
per series (`sample_channels`); with ``tta`` also the left-right mirrored grid. Each fold model's heatmaps are
decoded to world LPS mm by the landmark stage's own decoder (:class:`spine.models.decode.LandmarkDecoder`),
which swaps the mirrored grid's left/right points back.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from spine.constants import CONDITIONS, LEVELS
from spine.data.landmarks import point_names, prepare_volume, sample_channels, study_grid
from spine.data.transforms import GridAffine
from spine.data.volume import SeriesVolume
from spine.models.decode import LandmarkDecoder
from spine.predict.run_folders import Run

__all__ = ["run_points"]


def run_points(run: Run, decoder: LandmarkDecoder, volumes: dict[str, SeriesVolume | None], device: torch.device,
               tta: bool, autocast: Callable[[], AbstractContextManager]) -> tuple[np.ndarray, np.ndarray] | None:
    """Sums ``(K = 5 conditions, L = 5 levels, 3)`` world LPS mm and counts ``(K, L, 1)`` of one landmark run's
    finite points over its folds (and the mirrored grid with ``tta``), in the patient's left/right; None when
    the study has none of the run's series."""
    s = run.cfg.stage
    inputs = list(run.inputs(volumes).values())
    if all(v is None for v in inputs):
        return None
    prepared = [None if v is None else prepare_volume(v, s.grid.spacing_mm) for v in inputs]
    grids = [study_grid(prepared, s.grid.size, s.grid.spacing_mm)]
    if tta:
        grids.append(GridAffine(flip_lr=True)(grids[0]))
    image = torch.from_numpy(np.stack([sample_channels(prepared, g) for g in grids])).to(device)
    matrix, origin = np.stack([g.matrix for g in grids]), np.stack([g.origin for g in grids])
    flip = np.array([False, True][: len(grids)])
    rows = [(CONDITIONS.index(c), LEVELS.index(lv)) for c, lv in point_names(s.conditions)]
    sums, counts = np.zeros((len(CONDITIONS), len(LEVELS), 3)), np.zeros((len(CONDITIONS), len(LEVELS), 1))
    for model in run.models:
        with torch.inference_mode():
            with autocast():
                outputs = model(image)
            world = decoder(outputs.float(), matrix, origin, flip)  # (B, K, 3), the patient's left/right
        for b in range(len(grids)):
            for k, (ci, li) in enumerate(rows):
                if np.isfinite(world[b, k]).all():
                    sums[ci, li] += world[b, k]
                    counts[ci, li] += 1
    return sums, counts
