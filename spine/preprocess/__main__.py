"""``python -m spine.preprocess data_dir=... cache_dir=... [split=train|test|all] [workers=N] [overwrite=true]``.

Caches every series listed in ``<split>_series_descriptions.csv`` of an RSNA-layout folder as its acquired
stacks (each on its own grid, with every slice's true position; nothing resampled) in ``cache_dir/<cache id>/``,
with series.csv, coordinates.csv (the label points as DICOM pixel, world LPS mm, and stack voxel) and
folds.csv. A re-run skips complete series and a killed run resumes; a broken series is recorded with its
reason and the rest goes on. docs/preprocess.md.

Exit codes: 0 when at least one series has a volume, 1 when nothing could be processed or another run holds
the cache, 2 for bad input: a bad config, or a train.csv / train_label_coordinates.csv that cannot be used (one
line says why).
"""

from __future__ import annotations

import sys

from spine.cli import compose_or_exit
from spine.errors import command
from spine.preprocess.config import PreprocessConfig


@command("preprocess")
def main(argv: list[str] | None = None) -> int:
    cfg = compose_or_exit("preprocess", sys.argv[1:] if argv is None else argv, PreprocessConfig, __doc__,
                         prog="spine-preprocess")
    from spine.preprocess.run import run  # after the config: a typo or --help answers without the DICOM stack

    return run(cfg).exit_code  # a table that cannot be used: one line, exit code 2 (spine.errors.command)


if __name__ == "__main__":
    raise SystemExit(main())
