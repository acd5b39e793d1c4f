"""A sampling grid in world space: where each voxel of a network input lies (LPS mm).

``world = origin + direction @ (index * spacing)``: the columns of ``direction`` are the world directions
of the grid axes i, j, k (orthonormal; a determinant of -1 is a mirrored grid). Every network input is
one such grid (the landmark input, a crop, a view), sampled from a series' acquired stacks by the one sampler
(`spine.data.volume.SeriesVolume.sample`), so channels line up in world space and a point's grid index and
world position convert exactly both ways.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingGrid:
    origin: np.ndarray  # (3,) LPS mm of the centre of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3) columns: world unit vectors of axes i, j, k
    spacing: np.ndarray  # (3,) mm
    size: tuple[int, int, int]  # voxels along i, j, k

    @classmethod
    def centred(cls, centre, size, spacing, direction=None) -> SamplingGrid:
        """The grid of ``size`` voxels whose middle lies at world ``centre``."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        spacing = np.asarray(spacing, dtype=np.float64)
        size = tuple(int(n) for n in size)
        half = (np.asarray(size, dtype=np.float64) - 1) / 2
        origin = np.asarray(centre, dtype=np.float64) - direction @ (half * spacing)
        return cls(origin, direction, spacing, size)  # type: ignore[arg-type]

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) index -> world linear part: ``direction * spacing`` (column j scaled by spacing[j])."""
        return self.direction * self.spacing

    @property
    def centre(self) -> np.ndarray:
        return self.index_to_world((np.asarray(self.size, dtype=np.float64) - 1) / 2)

    def index_to_world(self, index) -> np.ndarray:
        """Continuous index (..., 3) as (i, j, k) -> LPS mm (..., 3)."""
        return np.asarray(index, dtype=np.float64) @ self.matrix.T + self.origin

    def world_to_index(self, world) -> np.ndarray:
        """LPS mm (..., 3) -> continuous index (..., 3)."""
        return (np.asarray(world, dtype=np.float64) - self.origin) @ np.linalg.inv(self.matrix).T

    def contains(self, index) -> np.ndarray:
        """(...,) true where a continuous index lies within the grid's voxel centres."""
        index = np.asarray(index, dtype=np.float64)
        upper = np.asarray(self.size, dtype=np.float64) - 1
        return np.all((index >= 0) & (index <= upper), axis=-1)
