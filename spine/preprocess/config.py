"""Typed configuration of ``python -m spine.preprocess`` (``configs/preprocess/preprocess.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from spine.config import require_range

SPLITS = ("train", "test", "all")

# Defaults of the stack selection and the sampler (spine/preprocess/volume.py and spine/data/volume.py explain
# them; they import them from here so that composing a config stays free of heavy imports).
DEFAULT_MIN_SLICES = 2
DEFAULT_MAX_GAP_FACTOR = 2.5  # bridge one missing slice (gap 2x the step), not separate blocks


@dataclass
class PreprocessConfig:
    data_dir: str = "data/synth"  # RSNA-layout folder
    cache_dir: str = "cache"  # the cache is written to cache_dir/<cache id>/
    split: str = "train"  # train | test | all
    workers: int = 0  # processes; 0 = one per CPU core; 1 = in this process
    overwrite: bool = False  # rebuild series that are already complete
    progress: bool = True  # progress bar on a terminal; in a log file, a line every ~10%
    min_slices: int = DEFAULT_MIN_SLICES  # stacks with fewer slices are left out
    max_gap_factor: float = DEFAULT_MAX_GAP_FACTOR  # wider slice gaps (x median step) are not interpolated
    n_folds: int = 5  # cross-validation folds of folds.csv (stratified by grades)
    fold_seed: int = 0  # seed of the fold assignment

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        require_range(self, "workers fold_seed", 0)  # numpy refuses a negative seed (after every series is done)
        require_range(self, "min_slices max_gap_factor", 1)
        require_range(self, "n_folds", 2)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.split == "all" else (self.split,)
