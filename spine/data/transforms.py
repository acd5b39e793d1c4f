"""Augmentation as random transforms that sample a deterministic twin (the torchio pattern).

- Geometry: :class:`RandomGridAffine` samples a :class:`GridAffine` (rotation, zoom, translation, left-right
  mirror) which moves the *sampling grid* in world space. The image is then resampled once through the
  moved grid, and label points follow exactly: their grid index is ``grid.world_to_index(world)``. No
  image-space warp, no second interpolation, no point-tracking approximations.
- A mirror makes the patient's left appear where the right was: whoever uses ``flip_lr`` must swap the
  left/right labels (:func:`lr_swap_permutation`); the landmark dataset does.
- Intensity: torchio ``RandomBiasField``, ``RandomGamma``, ``RandomNoise`` (:class:`IntensityAugment`),
  seeded per sample so a run is reproducible whatever the worker layout; the applied deterministic twins
  come back from ``subject.history``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spine.data.grid import SamplingGrid


def rotation_matrix(degrees) -> np.ndarray:
    """Rotation about world x, then y, then z (degrees): ``Rz @ Ry @ Rx``."""
    ax, ay, az = np.radians(np.asarray(degrees, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class GridAffine:
    """Deterministic: rotate the grid about its centre, zoom its spacing, move it, mirror its i axis."""

    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    zoom: float = 1.0  # > 1: coarser spacing, anatomy looks smaller
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flip_lr: bool = False  # mirror grid axis i (world x, patient left-right)

    def __call__(self, grid: SamplingGrid) -> SamplingGrid:
        direction = rotation_matrix(self.rotation_deg) @ grid.direction
        if self.flip_lr:
            direction = direction @ np.diag([-1.0, 1.0, 1.0])
        centre = grid.centre + np.asarray(self.translation_mm, dtype=np.float64)
        return SamplingGrid.centred(centre, grid.size, grid.spacing * self.zoom, direction)


@dataclass(frozen=True)
class RandomGridAffine:
    """Samples a :class:`GridAffine`: uniform angles in ``±rotate_deg``, zoom in ``1 ± scale``,
    translation in ``±translate_mm``, and a left-right mirror with probability ``flip_lr``."""

    rotate_deg: tuple[float, float, float] = (10.0, 5.0, 5.0)
    scale: float = 0.1
    translate_mm: tuple[float, float, float] = (6.0, 16.0, 16.0)
    flip_lr: float = 0.0

    def sample(self, rng: np.random.Generator) -> GridAffine:
        rot = rng.uniform(-1, 1, 3) * np.asarray(self.rotate_deg, dtype=np.float64)
        zoom = float(rng.uniform(1 - self.scale, 1 + self.scale))
        shift = rng.uniform(-1, 1, 3) * np.asarray(self.translate_mm, dtype=np.float64)
        flip = bool(rng.random() < self.flip_lr)
        return GridAffine(tuple(float(v) for v in rot), zoom, tuple(float(v) for v in shift), flip)


def lr_swap_permutation(point_names: list[tuple[str, str]]) -> np.ndarray:
    """For points named (condition, level): the index of each point's left/right twin (itself if midline).

    ``target[k] = original[perm[k]]`` relabels points after a mirror. Raises if a twin is missing.
    """
    index = {name: k for k, name in enumerate(point_names)}
    perm = np.arange(len(point_names))
    for k, (condition, level) in enumerate(point_names):
        for a, b in (("left_", "right_"), ("right_", "left_")):
            if condition.startswith(a):
                twin = (b + condition[len(a):], level)
                if twin not in index:
                    raise ValueError(f"{condition} at {level} has no {twin[0]} twin to swap with")
                perm[k] = index[twin]
    return perm


class IntensityAugment:
    """torchio bias field, gamma and Gaussian noise on a ``(C, X, Y, Z)`` tensor, reproducible per seed."""

    def __init__(self, bias_field: float = 0.3, gamma: float = 0.3, noise_std: float = 0.03):
        import torchio as tio

        transforms = []
        if bias_field > 0:
            transforms.append(tio.RandomBiasField(coefficients=bias_field, order=2, p=0.5, copy=False))
        if gamma > 0:
            transforms.append(tio.RandomGamma(log_gamma=gamma, p=0.5, copy=False))
        if noise_std > 0:
            transforms.append(tio.RandomNoise(std=(0.0, noise_std), p=0.5, copy=False))
        self.transform = tio.Compose(transforms, copy=False) if transforms else None

    def __call__(self, image: torch.Tensor, seed: int) -> tuple[torch.Tensor, list]:
        """Returns the transformed tensor and the deterministic twins applied (torchio history)."""
        if self.transform is None:
            return image, []
        import torchio as tio

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            subject = self.transform(tio.Subject(image=tio.ScalarImage(tensor=image)))
        return subject.image.data, list(subject.history)
