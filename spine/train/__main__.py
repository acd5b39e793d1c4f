"""``spine-train stage=landmarks fold=0 cache_dir=cache run_dir=runs/landmarks [key=value ...]``.

``fold=all`` trains every fold in turn; ``resume=true`` continues an interrupted run; under
``torchrun --nproc_per_node=N -m spine.train ...`` the run is distributed. Exit codes: 0 done,
1 the run could not start (no cache, run folder in the way), 2 bad config. See docs/training.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from spine.config import ConfigError
    from spine.train.config import load_config

    try:
        cfg = load_config(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from spine.train.run import run  # torch and friends only once the config is valid

    try:
        summary = run(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, FileNotFoundError) as err:
        print(f"[train] {err}", file=sys.stderr)
        return 1
    oof = summary.get("oof", {})
    if oof:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in oof.items() if "/" not in k)
        print(f"[train] {cfg.run_dir}: out-of-fold {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
