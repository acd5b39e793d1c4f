"""The grading dataset: for each study, the model input of every disc level and the 5 x 5 grades.

An item is a whole study (the metric's any-severe-spinal part needs all five levels of a study in one
batch). The model's input kind (:mod:`spine.data.inputs`, declared by the model) builds the ``image``:

- crops (:class:`~spine.data.inputs.CropInput`): ``image`` (L, C, X, Y, Z) = 5 levels x channels (series
  types) x one co-registered crop grid (:mod:`spine.data.crops`). Training crops move like the landmark model errs
  (:class:`RandomCropAugment`): Gaussian jitter of each centre, an occasional one-level shift, small
  rotations and zooms, and a mirror across the sagittal midline that swaps the left and right labels.
- views (:class:`~spine.data.inputs.ViewInput`): ``image`` (L, K, V, S, H, W) = levels x conditions x views x
  slices (:func:`spine.data.views.build_views`, the builder ``spine-predict`` uses too). Training points move
  like the landmark run erred (:class:`RandomPointAugment`: whole-study error draws from its out-of-fold
  predictions), plus small rotations and zooms of every view.

Points come from the labels (training) or from the landmark stage's predictions (validation, test,
inference).

Grades: ``target`` (L, K) int64, class index into ``SEVERITIES`` or -1 where unlabelled; conditions in
``CONDITIONS`` order.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from spine.constants import CONDITIONS, LEVELS, SEVERITIES, label_column, series_type
from spine.data.crops import fill_centres, level_centres
from spine.data.inputs import GradingInput
from spine.data.landmarks import truth_table
from spine.data.transforms import GridAffine, IntensityAugment, RandomGridAffine, lr_swap_permutation
from spine.data.volume import SeriesVolume

# target[:, CONDITION_SWAP] relabels the conditions of a crop mirrored left <-> right
CONDITION_SWAP = lr_swap_permutation([(c, "") for c in CONDITIONS])


# ------------------------------------------------------------------------------------------------ tables
def label_table(labels: pd.DataFrame, study_ids: Sequence[int]) -> np.ndarray:
    """``(n, L, K)`` int64 grades from train.csv-format labels: index into SEVERITIES, -1 if unlabelled
    (also for studies missing from ``labels``)."""
    out = np.full((len(study_ids), len(LEVELS), len(CONDITIONS)), -1, dtype=np.int64)
    by_study = labels.set_index(labels.study_id.astype(np.int64))
    code = {s: i for i, s in enumerate(SEVERITIES)}
    for n, study in enumerate(study_ids):
        if int(study) not in by_study.index:
            continue
        row = by_study.loc[int(study)]
        for k, condition in enumerate(CONDITIONS):
            for lv, level in enumerate(LEVELS):
                out[n, lv, k] = code.get(row.get(label_column(condition, level)), -1)
    return out


def point_table(points: pd.DataFrame, study_ids: Sequence[int]) -> np.ndarray:
    """``(n, K, L, 3)`` points of every condition and level (LPS mm, NaN where missing); ``points`` as in
    :func:`centre_table`."""
    table = truth_table(points, [int(s) for s in study_ids], CONDITIONS)  # (n, K * L, 3), conditions-major
    return table.reshape(len(study_ids), len(CONDITIONS), len(LEVELS), 3)


def landmark_errors(predicted: pd.DataFrame, truth: pd.DataFrame, study_ids: Sequence[int]) -> np.ndarray:
    """``(m, K, L, 3)`` predicted minus true points (world mm) of the studies that have both, NaN where a
    point lacks either: the landmark run's own error pattern, one row per study (level slips included)."""
    errors = point_table(predicted, study_ids) - point_table(truth, study_ids)
    return errors[np.isfinite(errors).all(-1).any(axis=(1, 2))]


def centre_table(points: pd.DataFrame, study_ids: Sequence[int]) -> np.ndarray:
    """``(n, L, 3)`` level centres (LPS mm, NaN where a study has no point at a level).

    ``points``: one row per study, condition, level with ``world_x, world_y, world_z`` (LPS mm) and the
    competition's spelling of condition and level: coordinates.csv of the cache, or the landmark stage's
    oof.csv / test.csv. Duplicate rows are averaged.
    """
    table = point_table(points, study_ids)
    return np.stack([level_centres(t) for t in table]) if len(table) else np.zeros((0, len(LEVELS), 3))


def study_weights(labels: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Sampling weight of each study: ``weights[g]`` of its worst labelled grade g (``(n,)`` float64)."""
    worst = labels.max(axis=(1, 2))
    w = np.asarray(weights, dtype=np.float64)
    return np.where(worst >= 0, w[np.clip(worst, 0, None)], w[0])


# ------------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class CropAugment:
    """Deterministic: move each level's centre, optionally to a neighbouring level's, then rotate, zoom
    and mirror every crop about its centre (``affine``, translation unused)."""

    offsets_mm: tuple[tuple[float, float, float], ...]  # (L,) world offsets added to the centres
    level_shift: tuple[int, ...]  # (L,) -1, 0 or +1: crop the level above/below instead (labels stay)
    affine: GridAffine

    def centres(self, centres: np.ndarray) -> np.ndarray:
        n = len(centres)
        source = np.clip(np.arange(n) + np.asarray(self.level_shift, dtype=int), 0, n - 1)
        return centres[source] + np.asarray(self.offsets_mm, dtype=np.float64)


@dataclass(frozen=True)
class RandomCropAugment:
    """Samples a :class:`CropAugment` mimicking the landmark model's errors, plus geometric jitter.

    ``jitter_mm``: standard deviation of the centre error per world axis (Gaussian); ``level_shift``:
    probability per level of cropping a neighbouring level; rotation, zoom and mirror as in
    :class:`~spine.data.transforms.RandomGridAffine` (one draw per study, shared by its levels).
    """

    jitter_mm: float = 2.5
    level_shift: float = 0.02
    rotate_deg: tuple[float, float, float] = (10.0, 10.0, 10.0)
    scale: float = 0.1
    flip_lr: float = 0.5

    def sample(self, rng: np.random.Generator, n_levels: int = len(LEVELS)) -> CropAugment:
        offsets = rng.normal(0.0, self.jitter_mm, (n_levels, 3))
        shift = np.where(rng.random(n_levels) < self.level_shift, rng.choice([-1, 1], n_levels), 0)
        affine = RandomGridAffine(self.rotate_deg, self.scale, (0.0, 0.0, 0.0), self.flip_lr).sample(rng)
        return CropAugment(tuple(tuple(float(v) for v in o) for o in offsets), tuple(int(s) for s in shift), affine)


@dataclass(frozen=True)
class PointAugment:
    """Deterministic: add ``offsets_mm`` (K, L, 3) world mm to the points; rotate and zoom every view about
    its centre (``affine``: its mirror and translation are unused)."""

    offsets_mm: np.ndarray
    affine: GridAffine

    def points(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) + self.offsets_mm


@dataclass(frozen=True)
class RandomPointAugment:
    """Samples a :class:`PointAugment` that moves the points like the landmark run errs.

    ``errors`` ``(m, K, L, 3)`` (:func:`landmark_errors`): one study's errors are drawn whole (so a level slip
    moves all of that level's points together, as it does in the landmark model), NaN entries replaced by
    Gaussian ``jitter_mm``; without errors every point gets Gaussian ``jitter_mm`` and, with probability
    ``level_shift`` per level, the error of a one-level slip (the neighbouring level's offset).
    ``rotate_deg`` / ``scale``: uniform rotation (per world axis) and zoom, one draw per study.
    """

    errors: np.ndarray | None = None
    jitter_mm: float = 2.5
    level_shift: float = 0.02
    rotate_deg: tuple[float, float, float] = (10.0, 10.0, 10.0)
    scale: float = 0.1

    def sample(self, rng: np.random.Generator, points: np.ndarray) -> PointAugment:
        k, n_levels = points.shape[:2]
        gauss = rng.normal(0.0, self.jitter_mm, (k, n_levels, 3))
        if self.errors is not None and len(self.errors):
            drawn = self.errors[int(rng.integers(len(self.errors)))]
            offsets = np.where(np.isfinite(drawn), drawn, gauss)
        else:
            offsets = gauss
            centres = fill_centres(level_centres(points)) if np.isfinite(points).all(-1).any() else None
            for lv in np.flatnonzero(rng.random(n_levels) < self.level_shift) if centres is not None else []:
                other = int(np.clip(lv + rng.choice([-1, 1]), 0, n_levels - 1))
                offsets[:, lv] += centres[other] - centres[lv]
        affine = RandomGridAffine(self.rotate_deg, self.scale, (0.0, 0.0, 0.0), 0.0).sample(rng)
        return PointAugment(offsets, affine)


# ---------------------------------------------------------------------------------------------- dataset
class GradingDataset(Dataset):
    """Items: ``image`` (L, ...) float32 (the input's ``item_shape`` per level), ``present`` (P,) bool,
    ``target`` (L, K) int64, ``centre`` (L, 3) LPS mm of the levels (after augmentation), ``flip`` (labels were
    mirrored left <-> right), ``study_id``, ``index``.

    Args:
        cache: a :class:`spine.cache.Cache` (volumes are read memory-mapped).
        study_ids: the studies, in item order.
        labels: ``(n, L, K)`` grades (:func:`label_table`); -1 everywhere for unlabelled (test) studies.
        centres: ``(n, L, 3)`` level centres, LPS mm, NaN rows allowed (filled along the levels); a study
            with no centre at all cannot be cropped and raises when accessed.
        reader: what the model reads (:mod:`spine.data.inputs`: a :class:`~spine.data.inputs.CropInput` or a
            :class:`~spine.data.inputs.ViewInput`); it names the series and builds every item's ``image``.
        points: ``(n, K, L, 3)`` points (LPS mm, NaN where missing); needed by inputs centred on points
            (views), else optional.
        augment, intensity: training randomness, or None (evaluation): a :class:`RandomCropAugment` for
            crops, a :class:`RandomPointAugment` for views.
        seed: with the epoch and the index, fixes each item's random draws.
    """

    def __init__(self, cache, study_ids: Sequence[int], labels: np.ndarray, centres: np.ndarray,
                 reader: GradingInput, points: np.ndarray | None = None, percentiles: Sequence[float] = (1.0, 99.0),
                 augment: RandomCropAugment | RandomPointAugment | None = None,
                 intensity: IntensityAugment | None = None, seed: int = 0, max_open: int = 256):
        self.cache = cache
        self.reader = reader
        self.points = None if points is None else np.asarray(points, dtype=np.float64)
        self.study_ids = [int(s) for s in study_ids]
        if self.points is not None and len(self.points) != len(self.study_ids):
            raise ValueError("points need one (K, L, 3) table per study")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.centres = np.asarray(centres, dtype=np.float64)
        if len(self.labels) != len(self.study_ids) or len(self.centres) != len(self.study_ids):
            raise ValueError("labels and centres need one row per study")
        self.percentiles = tuple(float(p) for p in percentiles)
        self.augment, self.intensity = augment, intensity
        self.seed, self.epoch = int(seed), 0
        ok = cache.series[cache.series.status == "ok"].sort_values("series_id")
        self._series_ids = {key: int(group.series_id.iloc[0])
                            for key, group in ok.groupby(["study_id", "description"])}
        self._volumes: OrderedDict = OrderedDict()
        self._max_open = int(max_open)

    @property
    def series(self) -> list[str]:
        """The series the input reads, in ``present`` order."""
        return self.reader.series

    def __len__(self) -> int:
        return len(self.study_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def item_seed(self, index: int, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        return zlib.crc32(f"grading/{self.seed}/{epoch}/{index}".encode())

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``dataset[index]`` or ``dataset[(epoch, index)]`` (what the training sampler yields)."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        study = self.study_ids[index]
        rng = np.random.default_rng(self.item_seed(index, epoch))
        volumes = {desc: self.volume(study, desc) for desc in self.reader.series}
        points = None if self.points is None else self.points[index]
        drawn = self.reader.draw(volumes, points, self.centres[index], rng, self.augment)
        image = torch.from_numpy(drawn.image)  # (L, ...)
        if self.intensity is not None:  # one draw per level, on its (channels, ...) 4D view
            seeds = rng.integers(2**31, size=len(image))
            image = torch.stack([self.intensity(v.reshape(-1, *v.shape[-3:]), int(s))[0].float().view(v.shape)
                                 for v, s in zip(image, seeds)])
        target = self.labels[index].copy()
        if drawn.flip:
            target = target[:, CONDITION_SWAP]  # the input's "left" half now shows the patient's right
        return {
            "image": image.contiguous(),
            "present": torch.from_numpy(drawn.present),
            "target": torch.from_numpy(target),
            "centre": torch.from_numpy(drawn.centres),
            "flip": torch.tensor(drawn.flip),
            "study_id": torch.tensor(study, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    def volume(self, study: int, description: str) -> SeriesVolume | None:
        """The study's first ok series of that type: its stacks memory-mapped, its intensity range kept."""
        series = self._series_ids.get((study, series_type(description)))
        if series is None:
            return None
        key = (study, series)
        if key not in self._volumes:
            self._volumes[key] = self.cache.load_volume(study, series, self.percentiles)
            while len(self._volumes) > self._max_open:
                self._volumes.popitem(last=False)
        self._volumes.move_to_end(key)
        return self._volumes[key]


class WeightedEpochSampler(Sampler):
    """Draws ``num_samples`` indices with replacement, probability proportional to ``weights``; the draw
    depends on (seed, epoch) only, and each of ``world_size`` processes takes every world_size-th index."""

    def __init__(self, weights: Sequence[float], num_samples: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if (self.weights < 0).any() or float(self.weights.sum()) <= 0:
            raise ValueError("sampling weights must be non-negative with a positive sum")
        total = len(self.weights) if num_samples is None else int(num_samples)
        self.per_rank = -(-total // world_size)
        self.seed, self.rank, self.world_size, self.epoch = int(seed), int(rank), int(world_size), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True,
                                  generator=generator)
        return iter(draws[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank
