"""The landmark dataset: one study's sagittal series on a coarse world grid, and its label points.

For each study, every requested series (sagittal T2/STIR, T1) is sampled onto one
:class:`~spine.data.grid.SamplingGrid` centred on the first series present, with its axes along world
x (patient left), y (posterior), z (head), by the one sampler (`spine.data.volume.SeriesVolume.sample`).
Before that, each series' acquired stacks are box-averaged to about the grid spacing (anti-aliasing: 0.5-0.8
mm pixels, a 4 mm grid; `SeriesVolume.pooled`) and normalised robustly per series: percentiles ``p_low,
p_high`` of its positive voxels map to 0 and 1, clipped below at 0. A missing series is a channel of zeros.
The pooled series are kept in a bounded in-memory LRU per process (``memory_mb``), so later epochs skip the
disk and the pooling. The steps (`prepare_volume`, `study_grid`, `sample_channels`) are the landmark input
builder shared with ``spine-predict``, which calls them on series read from DICOM.

Points: ``conditions x LEVELS`` in that order (``point_names``); each point's world position is the mean of
its rows in coordinates.csv (NaN if unlabelled). Targets are grid indices; ``mask`` is false for
unlabelled points and for points the (augmented) grid does not contain.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from spine.constants import CONDITION_NAMES, CONDITIONS, LEVEL_NAMES, LEVELS, series_type
from spine.data.grid import SamplingGrid
from spine.data.transforms import IntensityAugment, RandomGridAffine, lr_swap_permutation
from spine.data.volume import SeriesVolume


def point_names(conditions: Sequence[str]) -> list[tuple[str, str]]:
    """(condition, level) of every landmark channel, conditions-major, in LEVELS order."""
    return [(c, lv) for c in conditions for lv in LEVELS]


def truth_table(coordinates: pd.DataFrame, study_ids: Sequence[int], conditions: Sequence[str]) -> np.ndarray:
    """(n_studies, K, 3) world LPS mm of every label point (mean over duplicate rows), NaN where unlabelled."""
    names = point_names(conditions)
    out = np.full((len(study_ids), len(names), 3), np.nan)
    if coordinates.empty:
        return out
    frame = coordinates.assign(
        cond=coordinates.condition.map(dict(zip(CONDITION_NAMES, CONDITIONS))),
        lv=coordinates.level.map(dict(zip(LEVEL_NAMES, LEVELS))))
    means = frame.groupby(["study_id", "cond", "lv"])[["world_x", "world_y", "world_z"]].mean()
    row = {int(s): i for i, s in enumerate(study_ids)}
    col = {name: k for k, name in enumerate(names)}
    for (study, cond, lv), xyz in means.iterrows():
        if int(study) in row and (cond, lv) in col:
            out[row[int(study)], col[(cond, lv)]] = xyz.to_numpy(dtype=np.float64)
    return out


class LandmarkDataset(Dataset):
    """Items: ``image`` (C, X, Y, Z) float32, ``target`` (K, 3) grid index (NaN unlabelled), ``mask`` (K,),
    ``world`` (K, 3) true LPS mm, ``grid_origin`` (3,), ``grid_matrix`` (3, 3) (index -> world),
    ``flip`` (points were relabelled left <-> right), ``study_id``, ``index``.

    Args:
        cache: a :class:`spine.cache.Cache`.
        study_ids: the studies, in item order. Studies without any requested series should be left out
            by the caller (:func:`studies_with_series`).
        geometry: a ``RandomGridAffine`` (training) or None (evaluation: the plain centred grid).
        intensity: an ``IntensityAugment`` or None.
        seed: with the epoch (``set_epoch``) and the index, fixes each item's random transforms.
    """

    def __init__(self, cache, study_ids: Sequence[int], series: Sequence[str], conditions: Sequence[str],
                 grid_size: Sequence[int], grid_spacing: Sequence[float], percentiles: Sequence[float] = (1, 99),
                 geometry: RandomGridAffine | None = None, intensity: IntensityAugment | None = None,
                 seed: int = 0, memory_mb: float = 1024.0):
        self.cache = cache
        self.study_ids = [int(s) for s in study_ids]
        self.series = list(series)
        self.names = point_names(conditions)
        self.grid_size = tuple(int(n) for n in grid_size)
        self.grid_spacing = np.asarray(grid_spacing, dtype=np.float64)
        self.percentiles = tuple(float(p) for p in percentiles)
        self.geometry, self.intensity = geometry, intensity
        self.seed, self.epoch = int(seed), 0
        self.world = truth_table(cache.coordinates, self.study_ids, conditions)
        self.swap = lr_swap_permutation(self.names) if geometry is not None and geometry.flip_lr > 0 else None
        ok = cache.series[cache.series.status == "ok"].sort_values("series_id")
        self._series_ids = {key: [int(v) for v in group.series_id]
                            for key, group in ok.groupby(["study_id", "description"])}
        self._lru: OrderedDict = OrderedDict()
        self._lru_bytes, self._lru_limit = 0, float(memory_mb) * 2**20

    def __len__(self) -> int:
        return len(self.study_ids)

    def set_epoch(self, epoch: int) -> None:
        """Random transforms depend on (seed, epoch, index) only: resumable and worker-independent."""
        self.epoch = int(epoch)

    def item_seed(self, index: int, epoch: int | None = None) -> int:
        epoch = self.epoch if epoch is None else epoch
        return zlib.crc32(f"{self.seed}/{epoch}/{index}".encode())

    # ---- items
    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``dataset[index]`` or ``dataset[(epoch, index)]`` (what the training sampler yields)."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        study = self.study_ids[index]
        volumes = [self._prepared(study, desc) for desc in self.series]
        if all(v is None for v in volumes):
            raise ValueError(f"study {study} has none of the series {self.series}")
        grid = study_grid(volumes, self.grid_size, self.grid_spacing)
        rng = np.random.default_rng(self.item_seed(index, epoch))
        flip = False
        if self.geometry is not None:
            twin = self.geometry.sample(rng)
            grid, flip = twin(grid), twin.flip_lr
        image = torch.from_numpy(sample_channels(volumes, grid))
        if self.intensity is not None:
            image, _ = self.intensity(image, int(rng.integers(2**31)))
            image = image.float()
        world = self.world[index]
        if flip:
            world = world[self.swap]  # channel "left" now shows the patient's right, and so on
        target = grid.world_to_index(world)
        mask = np.isfinite(target).all(-1) & grid.contains(np.nan_to_num(target, nan=-1.0))
        return {
            "image": image.contiguous(),
            "target": torch.from_numpy(target.astype(np.float32)),
            "mask": torch.from_numpy(mask),
            "world": torch.from_numpy(world.copy()),
            "grid_origin": torch.from_numpy(grid.origin.copy()),
            "grid_matrix": torch.from_numpy(grid.matrix.copy()),
            "flip": torch.tensor(flip),
            "study_id": torch.tensor(study, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }

    # ---- volumes
    def _prepared(self, study: int, description: str) -> SeriesVolume | None:
        """The study's first series of that type pooled to the grid spacing (`prepare_volume`), or None."""
        series = self._series_ids.get((study, series_type(description)))
        if not series:
            return None
        key = (study, series[0])
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        value = self._prepare(study, series[0])
        self._lru[key] = value
        self._lru_bytes += value.nbytes
        while self._lru_bytes > self._lru_limit and len(self._lru) > 1:
            _, old = self._lru.popitem(last=False)
            self._lru_bytes -= old.nbytes
        return value

    def _prepare(self, study: int, series: int) -> SeriesVolume:
        return prepare_volume(self.cache.load_volume(study, series, self.percentiles), self.grid_spacing)


# ---- the landmark input builder, shared with spine-predict (series from the cache or read from DICOM)
def prepare_volume(volume: SeriesVolume, grid_spacing) -> SeriesVolume:
    """The series box-averaged to about ``grid_spacing`` (mm), keeping its intensity range: a small copy that
    many grids (augmented or not) are sampled from."""
    return volume.pooled(grid_spacing)


def study_grid(volumes: Sequence[SeriesVolume | None], size, spacing) -> SamplingGrid:
    """The unaugmented grid of a study: axis-aligned, centred on the first series that exists."""
    first = next(v for v in volumes if v is not None)
    return SamplingGrid.centred(first.centre, size, spacing)


def sample_channels(volumes: Sequence[SeriesVolume | None], grid: SamplingGrid) -> np.ndarray:
    """(C, X, Y, Z) float32: each series sampled (normalised) onto ``grid``; zeros for a missing one."""
    return np.stack([np.zeros(grid.size, np.float32) if v is None else v.sample(grid)[0] for v in volumes])


def studies_with_series(cache, study_ids: Sequence[int], series: Sequence[str]) -> tuple[list[int], list[int]]:
    """Split studies into (usable, skipped): usable ones have at least one requested ok series."""
    ok = cache.series[(cache.series.status == "ok") & cache.series.description.isin([series_type(d) for d in series])]
    have = set(int(s) for s in ok.study_id)
    usable = [int(s) for s in study_ids if int(s) in have]
    return usable, [int(s) for s in study_ids if int(s) not in have]
