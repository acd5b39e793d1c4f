"""Landmark heatmaps -> world LPS mm points: the one decoder of the landmark models' outputs.

Used by the landmark stage (validation and test predictions, :mod:`spine.train.landmarks`) and by
``spine-predict`` alike. A landmark model (:mod:`spine.models.landmarks`) returns ``(B, K, *cells)`` logits on
a sampling grid (:class:`spine.data.grid.SamplingGrid`: ``world = origin + matrix @ index``); the decoder takes
the soft-argmax of each heatmap in grid-index units (over the whole grid, or around its peak only), maps it to
world LPS mm through each item's grid, and undoes a left-right mirrored grid by swapping the left/right points
back, so the result names the patient's own sides whatever the grid was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spine.data.landmarks import point_names
from spine.data.transforms import lr_swap_permutation
from spine.losses import local_soft_argmax, soft_argmax

__all__ = ["DECODE_METHODS", "LandmarkDecoder", "decode_landmarks"]

DECODE_METHODS = ("global", "local")


def decode_landmarks(outputs: torch.Tensor, grid_matrix, grid_origin, flip=None, *, grid_size: Sequence[int],
                     spacing_mm: Sequence[float], method: str = "global", radius_mm: float = 12.0,
                     swap: Sequence[int] | None = None) -> np.ndarray:
    """``(B, K, 3)`` float64 world LPS mm of the heatmaps ``outputs`` ``(B, K, *cells)``.

    Args:
        grid_matrix, grid_origin: ``(B, 3, 3)`` and ``(B, 3)`` of each item's grid (tensors or arrays).
        flip: ``(B,)`` bools, True where the grid was mirrored left-right (None: no item was).
        grid_size, spacing_mm: the grid's size (voxels) and spacing (mm) along its axes.
        method: ``global`` (soft-argmax over the grid) or ``local`` (within ``radius_mm`` of each peak).
        swap: each point's left/right twin (:func:`spine.data.transforms.lr_swap_permutation`), applied to
            mirrored items; None when the points have no sides.
    """
    if method == "local":
        coords = local_soft_argmax(outputs, grid_size, [float(radius_mm) / float(v) for v in spacing_mm])
    elif method == "global":
        coords, _ = soft_argmax(outputs, grid_size)
    else:
        raise ValueError(f"decode method must be one of {', '.join(DECODE_METHODS)}, got {method!r}")
    matrix = torch.as_tensor(grid_matrix).detach().double().cpu()
    origin = torch.as_tensor(grid_origin).detach().double().cpu()
    world = (torch.einsum("bij,bkj->bki", matrix, coords.detach().double().cpu()) + origin[:, None, :]).numpy()
    if swap is not None and flip is not None:
        flips = torch.as_tensor(flip).detach().cpu().numpy().astype(bool).reshape(-1)
        if flips.any():
            world[flips] = world[flips][:, np.asarray(swap)]
    return world


@dataclass(frozen=True)
class LandmarkDecoder:
    """:func:`decode_landmarks` with the settings of one landmark stage config (:meth:`from_stage`)."""

    grid_size: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    method: str = "global"
    radius_mm: float = 12.0
    swap: tuple[int, ...] | None = None

    @classmethod
    def from_stage(cls, stage) -> LandmarkDecoder:
        """The decoder of a landmark stage config (``spine.run_config.LandmarkStageConfig``: grid, decode,
        decode_radius_mm, conditions), as its training decoded it."""
        sided = any(c.startswith(("left", "right")) for c in stage.conditions)
        swap = tuple(int(i) for i in lr_swap_permutation(point_names(stage.conditions))) if sided else None
        return cls(tuple(int(v) for v in stage.grid.size), tuple(float(v) for v in stage.grid.spacing_mm),
                   str(stage.decode), float(stage.decode_radius_mm), swap)

    def __call__(self, outputs: torch.Tensor, grid_matrix, grid_origin, flip=None) -> np.ndarray:
        """``(B, K, 3)`` world LPS mm, the patient's left/right (see :func:`decode_landmarks`)."""
        return decode_landmarks(outputs, grid_matrix, grid_origin, flip, grid_size=self.grid_size,
                                spacing_mm=self.spacing_mm, method=self.method, radius_mm=self.radius_mm,
                                swap=self.swap)
