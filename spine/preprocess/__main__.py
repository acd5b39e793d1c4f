"""``python -m spine.preprocess data_dir=... cache_dir=... [split=train|test|all] [workers=N] [overwrite=true]``.

Exit codes: 0 when at least one series has a volume, 1 when nothing could be processed, 2 for a bad config.
"""

from __future__ import annotations

import sys

from spine.config import compose_or_exit
from spine.preprocess.config import PreprocessConfig


def main(argv: list[str] | None = None) -> int:
    cfg = compose_or_exit("preprocess", sys.argv[1:] if argv is None else argv, PreprocessConfig)
    from spine.preprocess.run import run

    return run(cfg).exit_code


if __name__ == "__main__":
    raise SystemExit(main())
