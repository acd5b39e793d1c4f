"""Typed configuration of ``python -m spine.preprocess`` (``configs/preprocess/preprocess.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "test", "all")

# Defaults of the volume builder (spine/preprocess/volume.py explains them; it imports them from here so that
# composing a config stays free of heavy imports).
DEFAULT_SPACING_MM: dict[str, tuple[float, float, float]] = {  # (x, y, z) mm per series type
    "sagittal_t1": (3.0, 0.8, 0.8),
    "sagittal_t2_stir": (3.0, 0.8, 0.8),
    "axial_t2": (0.8, 0.8, 3.0),
    "other": (1.0, 1.0, 1.0),
}
DEFAULT_MIN_SLICES = 2
DEFAULT_MAX_GAP_FACTOR = 2.5  # bridge one missing slice (gap 2x the step), not separate blocks
DEFAULT_MAX_VOXELS = 64_000_000  # 256 MB of float32: refuse a grid larger than this


def _spacing(key: str):
    return field(default_factory=lambda: list(DEFAULT_SPACING_MM[key]))


@dataclass
class SpacingConfig:
    """Grid spacing (x, y, z) mm per series type; the reasons for the defaults are in spine/preprocess/volume.py."""

    sagittal_t1: list[float] = _spacing("sagittal_t1")  # x, y, z mm: thick left-right, fine in-plane
    sagittal_t2_stir: list[float] = _spacing("sagittal_t2_stir")  # x, y, z mm
    axial_t2: list[float] = _spacing("axial_t2")  # x, y, z mm: fine in-plane, thick along the spine
    other: list[float] = _spacing("other")  # any other series description

    def as_dict(self) -> dict[str, tuple[float, float, float]]:
        return {key: tuple(float(v) for v in getattr(self, key)) for key in DEFAULT_SPACING_MM}


@dataclass
class PreprocessConfig:
    data_dir: str = "data/synth"  # RSNA-layout folder
    cache_dir: str = "cache"  # the cache is written to cache_dir/<cache id>/
    split: str = "train"  # train | test | all
    workers: int = 0  # processes; 0 = one per CPU core; 1 = in this process
    threads: int = 0  # SimpleITK threads per worker; 0 = cores / workers
    overwrite: bool = False  # rebuild series that are already complete
    progress: bool = True  # progress bar on a terminal; in a log file, a line every ~10%
    spacing: SpacingConfig = field(default_factory=SpacingConfig)
    min_slices: int = DEFAULT_MIN_SLICES  # stacks with fewer slices are left out
    max_gap_factor: float = DEFAULT_MAX_GAP_FACTOR  # wider slice gaps (x median step) are not interpolated
    max_voxels: int = DEFAULT_MAX_VOXELS  # larger grids are refused (bounds memory per worker)
    n_folds: int = 5  # cross-validation folds of folds.csv (stratified by grades)
    fold_seed: int = 0  # seed of the fold assignment

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        for key, values in self.spacing.as_dict().items():
            if len(values) != 3 or min(values) <= 0:
                raise ValueError(f"spacing.{key} must be three positive numbers (x, y, z mm), got {list(values)}")
        if self.workers < 0 or self.threads < 0 or self.min_slices < 1 or self.n_folds < 2:
            raise ValueError("workers and threads must be >= 0, min_slices >= 1, n_folds >= 2")
        if self.max_gap_factor < 1:
            raise ValueError(f"max_gap_factor must be >= 1, got {self.max_gap_factor}")

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.split == "all" else (self.split,)
