"""``spine-train stage=landmarks fold=0 cache_dir=cache run_dir=runs/landmarks [key=value ...]``.

Trains one stage of the pipeline on a preprocessing cache: ``stage=landmarks`` learns where the five disc
levels are (world mm), ``stage=grading`` the severity of the 5 conditions at each level from crops placed by a
landmark run (``landmarks=<run>``). Each fold goes to ``run_dir/fold<k>/`` (weights, checkpoint after every
epoch, metrics, out-of-fold predictions); the run folder gathers them. The keys below are those of the chosen
stage: ``stage=grading --help`` lists the grading stage's.

``fold=all`` trains every fold in turn; ``resume=true`` continues an interrupted run; under
``torchrun --nproc_per_node=N -m spine.train ...`` the run is distributed. Exit codes: 0 done,
1 the run could not start or failed (no cache, a damaged cache file, run folder in the way), 2 bad input (config,
a train.csv that cannot be used, nothing to train on). Every error is one line on stderr. See docs/training.md.
"""

from __future__ import annotations

import sys

from spine.cli import config_groups, show_help
from spine.errors import command
from spine.logs import configure as configure_logging
from spine.train.config import STAGES, TrainConfig, load_config


@command("train")
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if show_help(args, "train", TrainConfig, __doc__, prog="spine-train", nested=_stage_schema(args)):
        return 0
    configure_logging("train")
    cfg = load_config(args)
    from spine.train.run import run  # torch and friends only once the config is valid

    summary = run(cfg)  # a cache, run folder or table that cannot be used: one line (spine.errors.command)
    oof = summary.get("oof", {})
    if oof:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in oof.items() if "/" not in k)
        print(f"[train] {cfg.run_dir}: out-of-fold {shown}")
    return 0


def _stage_schema(args: list[str]) -> dict[str, type]:
    """``{"stage": schema}`` of the stage named on the command line (else the default one), for --help."""
    name = next((arg.split("=", 1)[1] for arg in args if arg.startswith("stage=")), None)
    name = name or config_groups("train")["stage"][1]
    return {"stage": STAGES[name][0]} if name in STAGES else {}


if __name__ == "__main__":
    raise SystemExit(main())
