"""Typed configuration of ``spine-doctor`` (``configs/doctor/doctor.yaml``). No torch here: a typo fails fast.

The thresholds are those of clean data: the defaults pass on the synthetic studies of ``spine.synth``; real
labels have a few errors (levels swapped, left and right exchanged), which show as warnings up to
``max_bad_study_fraction`` and as failures beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spine.cli import require_range
from spine.device import check_device
from spine.doctor.registry import check_names

STAGE_NAMES = ("landmarks", "grading")


@dataclass
class DoctorConfig:
    cache_dir: str = "cache"  # a preprocessing cache: a cache-id folder, or a folder holding exactly one
    # A spine-train run folder: the learn and throughput checks train its config (stage, model, batch size,
    # workers). Empty: the default config of `stage` with the `train` overrides.
    run: str = ""
    stage: str = "landmarks"  # without run: the stage (landmarks | grading) the learn and throughput checks train
    # More spine-train overrides for the learn and throughput checks, e.g. [model=landmark_25d_tiny,batch_size=4]
    # (quote values holding brackets: ['stage.grid.size=[8,32,32]']).
    train: list[str] = field(default_factory=list)
    out: str = "doctor"  # folder for doctor.json and the PNGs
    checks: list[str] = field(default_factory=lambda: list(check_names()))  # which checks to run, in this order
    data_dir: str = ""  # RSNA-layout folder with the DICOM; empty: the data_dir recorded in the cache's cache.json
    labels: str = ""  # train.csv; empty: <data_dir>/train.csv
    seed: int = 0  # which studies are drawn and re-derived
    device: str = "auto"  # learn and throughput: auto (cuda if available) | cpu | cuda | cuda:N | mps

    # ---- label points on their images (label_positions, level_order, left_right)
    image_studies: int = 3  # random studies per series type whose label points are drawn (DICOM | cache) as PNGs
    dicom_studies: int = 20  # random studies whose label points are re-derived from their DICOM (all: from the cache)
    world_tol_mm: float = 0.5  # a label point's re-derived world position may differ from the cache's by this much
    level_spacing_mm: list[float] = field(default_factory=lambda: [15.0, 60.0])  # plausible distance of adjacent levels
    # The step from a level to the one above must point head-ward: its cosine with world +z at least this.
    min_headward_cos: float = 0.3
    min_left_right_mm: float = 0.0  # a left point must lie this far at +x (patient left) of its right partner
    # level_order, left_right: studies with an error up to this share of the labelled studies warn, more fail.
    max_bad_study_fraction: float = 0.05

    # ---- input fidelity
    fidelity_series: int = 100  # random series whose voxels are examined (all when fewer)
    min_distinct_values: int = 257  # fewer distinct values in a series: 8-bit or otherwise quantised input
    max_quantised_fraction: float = 0.0  # share of series that may look quantised before the check fails
    max_clipped_fraction: float = 0.005  # share of a series' non-zero voxels at its maximum: clipped above it
    warn_on_reversed: bool = False  # slice_order: also warn when InstanceNumber merely runs against the IPP order

    # ---- labels
    max_missing_fraction: float = 0.2  # share of studies missing grades or points that passes (real data: ~10 %)
    fold_balance_p: float = 0.01  # chi-square p-value of grade x fold below this: folds unbalanced (warn)
    max_fold_size_ratio: float = 1.5  # largest fold / smallest fold above this: warn

    # ---- can it learn
    learn_studies: int = 8  # training studies (unaugmented) the model must memorise
    learn_steps: int = 300  # optimiser steps (batches of the run's batch_size cycling over those studies)
    learn_lr: float = 0.0  # peak learning rate (warmup, cosine decay); 0: the run's optim.lr
    # Pass: the last tenth of the steps reaches this share of the first pass's loss (landmarks: of the point
    # error in mm, since the heatmap cross-entropy has a floor above zero).
    learn_max_ratio: float = 0.1
    learn_warn_ratio: float = 0.5  # above learn_max_ratio up to this share: warn; more: fail
    learn_time_limit_s: float = 300.0  # stop training there and judge the steps done (said in the summary)

    # ---- throughput
    throughput_batches: int = 6  # timed loader batches (after the first, which starts the workers)
    throughput_steps: int = 3  # timed training steps (after one warm-up step)

    def __post_init__(self) -> None:
        known = check_names()  # the registered checks (spine.doctor.registry), in their default order
        unknown = [c for c in self.checks if c not in known]
        if unknown:
            raise ValueError(f"checks: unknown {unknown}; checks are {', '.join(known)}")
        if self.stage not in STAGE_NAMES:
            raise ValueError(f"stage must be one of {', '.join(STAGE_NAMES)}, got {self.stage!r}")
        if len(self.level_spacing_mm) != 2 or not 0 <= self.level_spacing_mm[0] < self.level_spacing_mm[1]:
            raise ValueError(f"level_spacing_mm must be [low, high] with 0 <= low < high, got {self.level_spacing_mm}")
        require_range(self, "image_studies dicom_studies fidelity_series", 0)
        require_range(self, "learn_studies learn_steps throughput_batches throughput_steps", 1)
        if not 0 < self.learn_max_ratio <= self.learn_warn_ratio:
            raise ValueError("learn thresholds need 0 < learn_max_ratio <= learn_warn_ratio")
        require_range(self, "max_bad_study_fraction max_quantised_fraction max_clipped_fraction max_missing_fraction "
                            "fold_balance_p", 0.0, 1.0)  # shares: 20 (meaning 20 %) would pass everything
        require_range(self, "min_headward_cos", -1.0, 1.0)
        require_range(self, "seed world_tol_mm learn_lr", 0)
        require_range(self, "max_fold_size_ratio", 1.0)
        require_range(self, "learn_time_limit_s", 0.0, low_open=True)
        check_device(self.device)  # before any data is read: one line, exit code 2
