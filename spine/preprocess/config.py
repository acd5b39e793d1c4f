"""Typed configuration of ``python -m spine.preprocess`` (``configs/preprocess/preprocess.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from spine.cli import require_range
from spine.data.defaults import DEFAULT_MAX_GAP_FACTOR, DEFAULT_MIN_SLICES

SPLITS = ("train", "test", "all")



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
    # K/N: build only share K (0..N-1) of the series (those whose index in the sorted listing is K mod N), e.g.
    # one per machine into a shared cache_dir; a final run without shard then writes the tables
    shard: str = ""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        self.shard_of  # noqa: B018 - validates the shard
        require_range(self, "workers fold_seed", 0)  # numpy refuses a negative seed (after every series is done)
        require_range(self, "min_slices max_gap_factor", 1)
        require_range(self, "n_folds", 2)

    @property
    def shard_of(self) -> tuple[int, int] | None:
        """(K, N) of ``shard=K/N``, None without a shard."""
        if not self.shard:
            return None
        k, sep, n = str(self.shard).partition("/")
        if not (sep and k.strip().isdigit() and n.strip().isdigit() and 0 <= int(k) < int(n)):
            raise ValueError(f"shard must be K/N with 0 <= K < N (e.g. shard=0/4), got {self.shard!r}")
        return int(k), int(n)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test") if self.split == "all" else (self.split,)
