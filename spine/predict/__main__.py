"""``spine-predict data_dir=DIR runs=[LANDMARK_RUN,GRADING_RUN,...] out=submission.csv [key=value ...]``.

Grades every study of ``<split>_series_descriptions.csv``: DICOM series -> volumes in memory (the preprocessing
of training) -> disc levels (landmark runs) -> per-level crops -> severity probabilities (grading runs, mean over
folds and runs, calibrated), 25 rows per study, written atomically to ``out``. A study that cannot be graded
gets the training priors, and the per-study log (``<out stem>.log.csv``) says why.

Also ``python -m spine.predict ...``. Keys: spine/predict/config.py; docs/inference.md. Exit codes: 0 written
(also when studies fell back to the priors: see the log), 1 nothing can be predicted (no runs, a run without
finished folds, no <split>_series_descriptions.csv), 2 bad config.
"""

from __future__ import annotations

import sys

from spine.cli import compose_or_code
from spine.errors import command
from spine.predict.config import PredictConfig


@command("predict")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = compose_or_code("predict", args, PredictConfig, __doc__, prog="spine-predict")
    if isinstance(cfg, int):
        return cfg
    from spine.predict.run import predict  # torch and friends only once the config is valid

    predict(cfg)  # a PredictError (nothing can be predicted) is one line, exit code 1 (spine.errors.command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
