"""``spine-predict``'s run: every study of a listing -> the submission, the per-study log and a summary.

`predict` reads the listing (:mod:`.listing`), loads the runs (`Predictor.from_runs`), builds the studies'
volumes ahead in worker processes (:func:`.volumes.iterate_volumes`), predicts each study, writes one log line
per study as it finishes (readable mid-run) and the submission atomically, in the sample submission's row order.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from spine.cli import ConfigError
from spine.constants import PROB_COLUMNS
from spine.predict.listing import read_listing_notes, row_order, unlisted_series
from spine.predict.predictor import Predictor
from spine.predict.study import LOG_COLUMNS, Issue, StudyInfo, finalise
from spine.predict.volumes import iterate_volumes
from spine.progress import progress

__all__ = ["check_output", "log_path", "predict"]

PROJECT_STUDIES = 720  # the summary projects the run time to this many studies (a Kaggle test set)

log = logging.getLogger(__name__)


def log_path(cfg) -> Path:
    """``cfg.log``, or next to ``cfg.out``: ``submission.csv`` -> ``submission.log.csv``."""
    if cfg.log:
        return Path(cfg.log)
    out = Path(cfg.out)
    return out.with_name(f"{out.stem}.log.csv")


def predict(cfg) -> dict:
    """Predict every study of ``cfg`` (a :class:`spine.predict.config.PredictConfig`) into ``cfg.out``.

    Returns the summary (also printed as one line): studies, ok, fallback, priors (studies answered without a
    model), reasons (issue kind -> studies), seconds_per_study, projected_hours (for 720 studies), rows, out,
    log. Raises ConfigError for an output path that cannot be written (checked before any work), PredictError
    for an unusable configuration; never for a study's content.
    """
    started = time.perf_counter()
    check_output(Path(cfg.out), "out")
    check_output(log_path(cfg), "log")
    data_dir = Path(cfg.data_dir)
    studies, series, notes = read_listing_notes(data_dir, cfg.split)
    sample = data_dir / "sample_submission.csv" if cfg.split == "test" else None
    rows, studies = row_order(studies, sample)
    for study in studies:
        if study not in series:  # in the sample submission only: type its folders from the DICOM headers
            series[study] = unlisted_series(data_dir / f"{cfg.split}_images" / str(study))
    predictor = Predictor.from_runs(cfg.runs, cfg.device, cfg.amp, cfg.tta, cfg.batch_size, cfg.cache_dir or None)
    study_log = log_path(cfg)
    print(f"[predict] {len(studies)} studies of {data_dir / (cfg.split + '_series_descriptions.csv')} with "
          f"{predictor.describe()}", file=sys.stderr)
    setup_s, loop_started = time.perf_counter() - started, time.perf_counter()

    probs: dict[str, np.ndarray] = {}
    infos: list[StudyInfo] = []
    study_log.parent.mkdir(parents=True, exist_ok=True)
    bar = progress(len(studies), "predict", "study", enabled=cfg.progress)  # a bar, or a line per 10 %
    loaded = iterate_volumes(studies, series, predictor.series, predictor.volume_options, predictor.cache_dir,
                             cfg.workers)
    with open(study_log, "w", newline="") as handle:  # one line per study as it finishes: readable mid-run
        handle.write(",".join(LOG_COLUMNS) + "\n")
        for study, volumes, issues, load_s in loaded:
            if not series.get(study):
                issues = [Issue("no series", "none listed, no study folder", "fatal")]
            issues = [*notes.get(study, []), *issues]
            frame, info = predictor.predict_volumes(study, volumes, issues)
            del volumes  # the pixels of this study go before the next one is predicted
            info.seconds += load_s
            infos.append(info)
            for rid, p in zip(frame.row_id, frame[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)):
                probs[rid] = p
            pd.DataFrame([info.row()], columns=LOG_COLUMNS).to_csv(handle, header=False, index=False)
            handle.flush()
            if info.status != "ok":
                bar.write(f"[predict] {study}: {info.status} ({info.answer}): {info.reason}", file=sys.stderr)
            bar.update(1)
    bar.close()

    uniform = np.full(len(PROB_COLUMNS), 1.0 / len(PROB_COLUMNS))
    unknown = [rid for rid in rows if rid not in probs]
    if unknown:
        log.warning(f"{len(unknown)} sample-submission rows name no known condition/level "
                    f"(e.g. {unknown[0]!r}): 1/3 each")
    table = finalise(np.stack([probs.get(rid, uniform) for rid in rows])) if rows else \
        np.zeros((0, len(PROB_COLUMNS)))
    out = pd.DataFrame(table, columns=list(PROB_COLUMNS))
    out.insert(0, "row_id", rows)
    _write_atomic(out, Path(cfg.out))
    return _summary(infos, setup_s, time.perf_counter() - loop_started, Path(cfg.out), study_log, len(out), predictor)


def check_output(path: Path, key: str) -> None:
    """Raise ConfigError (exit code 2) unless a file can be written at ``path`` (the value of ``key``): not an
    existing folder, and its nearest existing ancestor a writable folder (the missing ones are created then).
    Creates nothing: it runs before any work, so that a bad path never costs a whole prediction."""
    if path.is_dir():
        raise ConfigError(f"{key}={path} is a folder: name the file to write, e.g. {key}={path / 'submission.csv'}"
                          if key == "out" else f"{key}={path} is a folder: name the file to write")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}={path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {ancestor} is not writable")


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _summary(infos: list[StudyInfo], setup_s: float, loop_s: float, out: Path, study_log: Path, n_rows: int,
             predictor: Predictor) -> dict:
    reasons: Counter = Counter()
    for info in infos:  # what decided each fallback: the fatal issues if any, else the degraded ones
        fatal = [i.kind for i in info.issues if i.effect == "fatal"]
        reasons.update(set(fatal or [i.kind for i in info.issues if i.effect == "degraded"]))
    n = len(infos)
    per_study = loop_s / max(n, 1)  # wall clock of the study loop (loading overlapped by workers included)
    projected = (setup_s + per_study * PROJECT_STUDIES) / 3600
    summary = {"studies": n, "ok": sum(i.status == "ok" for i in infos),
               "fallback": sum(i.status != "ok" for i in infos),
               "priors": sum(i.answer != "model" for i in infos), "reasons": dict(reasons.most_common()),
               "setup_seconds": setup_s, "seconds": setup_s + loop_s, "seconds_per_study": per_study,
               "projected_hours": projected, "rows": n_rows, "out": str(out), "log": str(study_log),
               "device": str(predictor.device)}
    why = ", ".join(f"{k}: {v}" for k, v in reasons.most_common())
    print(f"[predict] {n} studies: {summary['ok']} ok, {summary['fallback']} fallback"
          f"{f' ({why})' if why else ''}, {summary['priors']} answered by the priors; "
          f"{per_study:.2f} s/study on {predictor.device} after {setup_s:.1f} s of setup (projected "
          f"{projected:.2f} h for {PROJECT_STUDIES} studies); wrote {out} ({n_rows} rows), log {study_log}")
    return summary
