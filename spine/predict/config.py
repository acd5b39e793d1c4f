"""Typed configuration of ``spine-predict`` (``configs/predict/predict.yaml``). No torch here: a typo fails fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from spine.device import check_device

SPLITS = ("test", "train")
AMP = ("bf16", "fp16", "none")


@dataclass
class PredictConfig:
    data_dir: str = "data"  # RSNA-layout folder: <split>_series_descriptions.csv and <split>_images/
    # Run folders of spine-train: at least one landmark run and one grading run (any order). Landmark runs
    # place the crops (mean over their folds), grading runs grade them (mean over folds, then over runs).
    runs: list[str] = field(default_factory=list)
    out: str = "submission.csv"  # written atomically
    split: str = "test"  # which <split>_series_descriptions.csv / <split>_images to predict
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N | mps; one this machine has
    amp: str = "bf16"  # bf16 | fp16 | none; CUDA only
    tta: bool = False  # also the left-right mirrored inputs (left/right outputs swapped back), averaged
    batch_size: int = 32  # crops per forward pass of a grading model
    workers: int = 0  # processes reading DICOM and building volumes ahead of the models; 0 = in this process
    cache_dir: str = ""  # optional preprocessing cache: its volumes are used where it has the study
    log: str = ""  # per-study CSV log; empty: next to out, <out stem>.log.csv
    progress: bool = True  # progress bar on a terminal; in a log file, a line every ~10%

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {', '.join(AMP)}, got {self.amp!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        check_device(self.device)  # before any data is read: one line, exit code 2
