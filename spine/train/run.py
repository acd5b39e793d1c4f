"""One ``spine-train`` launch: open the cache, build the stage, train the fold(s), aggregate the run folder.

Run folder (``run_dir``)::

    config.yaml        resolved config of the latest launch
    cache.json         how the cache's volumes were made (inference rebuilds them the same way)
    fold<k>/           one self-contained fold (see spine.train.engine.fit)
    oof.csv            out-of-fold predictions of every finished fold (every training study once)
    test.csv           test predictions, merged over the finished folds (stage.merge_test)
    metrics.json       metrics of oof.csv and of each fold
    + what the stage's ``finalize`` adds (grading: calibration.json, priors.json, submission.csv, PNGs)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from spine.cache import FOLDS_CSV
from spine.cli import ConfigError, to_yaml
from spine.run_folder import CACHE_JSON, CONFIG_YAML, METRICS_JSON, OOF_CSV, TEST_CSV, fold_dirs
from spine.train import checkpoint as ckpt
from spine.train.engine import fit
from spine.train.runtime import setup_runtime, teardown


def check_model(cfg, stage) -> None:
    """Fail before any training on an unknown model or constructor argument."""
    from spine.models import model_arguments

    try:
        accepted = set(model_arguments(cfg.model.name))
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None
    from_stage = set(stage.model_kwargs())
    unknown = sorted(set(cfg.model.args) - accepted)
    if unknown:
        raise ConfigError(f"model.args: {cfg.model.name} has no argument(s) {', '.join(unknown)}; "
                          f"it accepts {', '.join(sorted(accepted - from_stage))}")
    clash = sorted(set(cfg.model.args) & from_stage)
    if clash:
        raise ConfigError(f"model.args: {', '.join(clash)} are set by the stage from the data; remove them")


def run(cfg) -> dict:
    """Train ``cfg.fold`` (or every fold) and aggregate; returns the run's metrics (main process)."""
    from spine.cache import Cache
    from spine.train.stage import build_stage

    rt = setup_runtime(cfg.device, cfg.amp, cfg.channels_last)
    try:
        cache = Cache.open(cfg.cache_dir)
        stage = build_stage(cfg, cache)
        check_model(cfg, stage)
        stage.check_data()
        folds = stage.folds() if cfg.fold == "all" else [int(cfg.fold)]
        if not set(folds) <= set(stage.folds()):
            raise ConfigError(f"fold {cfg.fold} has no studies in {cache.root / FOLDS_CSV}; folds: "
                              f"{', '.join(map(str, stage.folds()))} or all")
        run_dir = Path(cfg.run_dir)
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / CONFIG_YAML).write_text(to_yaml(cfg))
            # how the training volumes were made: inference rebuilds them the same way without the cache
            ckpt.save_json(cache.info, run_dir / CACHE_JSON)
        for fold in folds:
            fit(cfg, stage, fold, run_dir / f"fold{fold}", rt)
        summary = aggregate(stage, run_dir) if rt.is_main else {}
        rt.barrier()
        return summary
    finally:
        teardown(rt)


def aggregate(stage, run_dir: Path) -> dict:
    """Collect the finished folds of ``run_dir`` into oof.csv, test.csv and metrics.json."""
    run_dir = Path(run_dir)
    folds = [d for d in fold_dirs(run_dir) if (d / METRICS_JSON).is_file() and (d / ckpt.FINAL).is_file()]
    if not folds:
        return {}
    oof = pd.concat([pd.read_csv(d / OOF_CSV) for d in folds if (d / OOF_CSV).is_file()], ignore_index=True)
    oof.to_csv(run_dir / OOF_CSV, index=False)
    tests = [pd.read_csv(d / TEST_CSV) for d in folds if (d / TEST_CSV).is_file()]
    test = stage.merge_test(tests) if tests else None
    if test is not None:
        test.to_csv(run_dir / TEST_CSV, index=False)
    summary = {"folds": {d.name: json.loads((d / METRICS_JSON).read_text()) for d in folds},
               "oof": stage.evaluate(oof) if not oof.empty else {}}
    summary["oof"].update(stage.finalize(run_dir, oof, test))
    ckpt.save_json(summary, run_dir / METRICS_JSON)
    return summary
