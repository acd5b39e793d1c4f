"""`Predictor`: landmark runs + grading runs -> 25 rows of probabilities per study, always.

Per study (`Predictor.predict_study`, or `Predictor.load` + `Predictor.predict_volumes`):

1. **Volumes** (:mod:`.volumes`): one `SeriesVolume` per series type the runs read, built from DICOM with the
   preprocessing of training, or taken from a preprocessing cache made with the same options.
2. **Landmarks** (:mod:`.landmarks`): each fold model of each landmark run on the input of the landmark dataset,
   decoded to world LPS mm; with ``tta`` also on the mirrored grid. Mean over all of them -> 25 points ->
   `level_centres` -> `fill_centres`; centres more than `INSIDE_MARGIN_MM` outside every volume do not count.
3. **Grading** (:mod:`.grading`): each grading run on its crops or views (mean over folds), its
   calibration.json, then mean over grading runs, rows renormalised, clipped to [1e-6, 1], renormalised.

Nothing a study holds stops the run: a study that cannot be graded gets the grading runs' training priors
(priors.json, mean over runs; uniform 1/3 without any), and its `StudyInfo` says why.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spine.cache import CacheError
from spine.constants import LABEL_COLUMNS, LEVEL_NAMES, PROB_COLUMNS
from spine.data.crops import fill_centres, level_centres
from spine.models.decode import LandmarkDecoder
from spine.predict.grading import RunFailed, grade
from spine.predict.landmarks import run_points
from spine.predict.run_folders import Run, load_run, resolve_device
from spine.predict.study import Issue, PredictError, StudyInfo, finalise, first_lines, study_frame
from spine.predict.volumes import load_volumes, open_cache

__all__ = ["INSIDE_MARGIN_MM", "Predictor"]

INSIDE_MARGIN_MM = 10.0  # a level centre this far outside every volume counts as outside

log = logging.getLogger(__name__)


class _Fatal(Exception):
    """No model answer for this study (the issue is already recorded)."""


def _usable_cache(cache_dir: str, options: dict) -> str | None:
    """``cache_dir`` when its cache can serve the runs' volumes, else None with one logged warning that names the
    file and why (the volumes are then read from DICOM: the cache is optional, every row is still written).

    A ``cache_dir`` that does not exist is a PredictError (a mistyped path, said before any work). A cache that
    cannot be opened or whose series.csv cannot be read (damaged, another cache version, several caches to
    choose from), or that was made with other stack options than the runs' training cache, is dropped.
    """
    if not Path(cache_dir).exists():
        raise PredictError(f"cache_dir={cache_dir} does not exist (leave it out to read every study from DICOM)")
    try:
        cache = open_cache(cache_dir)
        cache.series  # noqa: B018 - read and checked here once, not in every worker and study
    except (CacheError, OSError, ValueError) as exc:  # CacheError names the file; OSError: permissions and such
        log.warning(f"cache_dir={cache_dir} is not used, every volume is read from DICOM: {first_lines(exc, 400)}")
        return None
    if cache.volume_options() != options:
        log.warning(f"cache_dir={cache_dir} was made with {cache.volume_options()}, the runs' cache with "
                    f"{options}: volumes are built from DICOM")
        return None
    return cache_dir


class Predictor:
    """Landmark runs + grading runs, ready to predict studies. Build with :meth:`from_runs`."""

    def __init__(self, landmark_runs: list[Run], grading_runs: list[Run], device, amp: str = "bf16",
                 tta: bool = False, batch_size: int = 32, cache_dir: str | None = None):
        if not landmark_runs or not grading_runs:
            raise PredictError("need at least one landmark run and one grading run "
                               f"(got {len(landmark_runs)} landmark, {len(grading_runs)} grading)")
        self.landmark_runs, self.grading_runs = landmark_runs, grading_runs
        runs = [*landmark_runs, *grading_runs]
        self.device = torch.device(device)
        self.amp_dtype = None
        if self.device.type == "cuda" and amp != "none":
            self.amp_dtype = torch.bfloat16 if amp == "bf16" and torch.cuda.is_bf16_supported() else torch.float16
        self.tta, self.batch_size = bool(tta), int(batch_size)
        if self.tta and any(not run.reader.tta for run in grading_runs):
            log.info("tta: the mirrored pass applies to crop runs and landmarks; views runs already read both "
                     "sides with one mirrored head")
        # every series a study needs (runs trained on the same cache share them), built with the stack rules of
        # the first run's training cache; each run samples them with its own percentiles and slice-gap limit
        self.series = list(dict.fromkeys(d for run in runs for d in run.series))
        self.volume_options = runs[0].volume_options
        other = [run.path.name for run in runs if run.volume_options["min_slices"] != self.volume_options["min_slices"]]
        if other:
            log.warning(f"runs {', '.join(other)} were trained on a cache with another min_slices; volumes keep "
                        f"the stacks of {runs[0].path.name}'s ({self.volume_options})")
        self.cache_dir = _usable_cache(str(cache_dir), self.volume_options) if cache_dir else None
        self._decoders = [LandmarkDecoder.from_stage(run.cfg.stage) for run in landmark_runs]
        priors = [r.priors for r in grading_runs if r.priors is not None]
        self.priors = np.mean(priors, axis=0) if priors else np.full((len(LABEL_COLUMNS), len(PROB_COLUMNS)),
                                                                       1.0 / len(PROB_COLUMNS))
        self.priors_source = "priors" if priors else "uniform"

    @classmethod
    def from_runs(cls, runs: Sequence, device: str = "auto", amp: str = "bf16", tta: bool = False,
                  batch_size: int = 32, cache_dir: str | None = None) -> Predictor:
        """Load every run folder (landmark or grading, told apart by ``stage.name`` of its config.yaml)."""
        if not runs:
            raise PredictError("no runs given: runs=[<landmark run>,<grading run>,...]")
        dev = resolve_device(device)
        loaded = [load_run(r, dev) for r in runs]
        return cls([r for r in loaded if r.stage == "landmarks"], [r for r in loaded if r.stage == "grading"],
                   dev, amp, tta, batch_size, cache_dir)

    def describe(self) -> str:
        parts = [f"{run.path.name} ({run.stage}, {len(run.models)} folds)" for run in
                 (*self.landmark_runs, *self.grading_runs)]
        return f"{', '.join(parts)} on {self.device}{', tta' if self.tta else ''}"

    def fallback(self, study_id) -> pd.DataFrame:
        """The answer without a model: the grading runs' training priors (uniform without any)."""
        return study_frame(study_id, finalise(self.priors))

    # ---- one study
    def load(self, study_id, series: dict[str, Sequence]) -> tuple[dict, list[Issue]]:
        """`load_volumes` of the series every run reads, with the runs' volume options and cache."""
        return load_volumes(int(study_id), series, self.series, self.volume_options, self.cache_dir)

    def predict_study(self, study_id, series: dict[str, Sequence]) -> tuple[pd.DataFrame, StudyInfo]:
        """25 rows for a study from its series folders (description -> folders, ascending series_id), and its
        log line. Never raises for the study's content."""
        started = time.perf_counter()
        try:
            volumes, issues = self.load(study_id, series)
        except Exception as exc:  # noqa: BLE001
            volumes, issues = {}, [Issue("volumes failed", f"{type(exc).__name__}: {first_lines(exc)}", "fatal")]
        frame, info = self.predict_volumes(study_id, volumes, issues)
        info.seconds = time.perf_counter() - started
        return frame, info

    def predict_volumes(self, study_id, volumes: dict, issues: Sequence[Issue] = ()) -> tuple[pd.DataFrame,
                                                                                                   StudyInfo]:
        """25 rows from volumes already built (:meth:`load`); the priors on any failure."""
        started = time.perf_counter()
        info = StudyInfo(int(study_id), issues=list(issues))
        frame = None
        try:
            if any(i.effect == "fatal" for i in info.issues):
                raise _Fatal()
            points, _ = self.centres(volumes, info)  # raises _Fatal unless the levels lie inside the volumes
            frame = study_frame(study_id, finalise(self.grade(points, volumes, info)))
        except _Fatal:
            pass
        except Exception as exc:  # noqa: BLE001 - one study never stops the run
            info.issues.append(Issue("error", f"{type(exc).__name__}: {first_lines(exc)}", "fatal"))
        if frame is None:
            frame = self.fallback(study_id)
            info.answer = self.priors_source
            if not any(i.effect == "fatal" for i in info.issues):
                info.issues.append(Issue("no model answer", effect="fatal"))
        if any(i.effect != "note" for i in info.issues):
            info.status = "fallback"
        info.seconds = time.perf_counter() - started
        return frame, info

    # ---- landmarks
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def points(self, volumes: dict, info: StudyInfo) -> np.ndarray:
        """(K = 5 conditions, L = 5 levels, 3) world LPS mm: mean over landmark runs, folds and TTA; NaN where
        no run predicts a point. Raises _Fatal when no landmark run has an input series."""
        sums, counts, tried, failures = 0.0, 0.0, False, []
        for run, decoder in zip(self.landmark_runs, self._decoders):
            try:
                found = run_points(run, decoder, volumes, self.device, self.tta, self._autocast)
            except Exception as exc:  # noqa: BLE001 - another landmark run may still answer
                tried = True
                failures.append(f"{run.path.name}: {type(exc).__name__}: {first_lines(exc)}")
                continue
            if found is None:  # none of its series
                continue
            tried = True
            if not found[1].any():
                failures.append(f"{run.path.name}: non-finite output")
            sums, counts = sums + found[0], counts + found[1]
        if not tried:
            series = sorted({d for run in self.landmark_runs for d in run.cfg.stage.series})
            info.issues.append(Issue("no landmark series", f"none of {', '.join(series)} usable", "fatal"))
            raise _Fatal()
        answered = bool(np.any(counts))
        info.issues += [Issue("landmarks failed", detail, "degraded" if answered else "fatal") for detail in failures]
        if not answered:
            raise _Fatal()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def centres(self, volumes: dict, info: StudyInfo) -> tuple[np.ndarray, np.ndarray]:
        """The points (K, L, 3; NaN where none) and the (L, 3) level centres, LPS mm; raises _Fatal when they
        cannot be placed inside the study's volumes."""
        points = self.points(volumes, info)
        try:
            centres = fill_centres(level_centres(points))
        except ValueError as exc:
            info.issues.append(Issue("no landmarks", first_lines(exc), "fatal"))
            raise _Fatal() from None
        inside = np.zeros(len(centres), dtype=bool)
        for volume in (v for v in volumes.values() if v is not None):
            lo, hi = volume.bounds()
            inside |= np.all((centres >= lo - INSIDE_MARGIN_MM) & (centres <= hi + INSIDE_MARGIN_MM), axis=1)
        if not inside.any():
            info.issues.append(Issue("landmarks outside the volumes", "no level centre inside any series", "fatal"))
            raise _Fatal()
        if not inside.all():
            info.issues.append(Issue("landmarks outside the volumes", ", ".join(
                LEVEL_NAMES[i] for i in np.flatnonzero(~inside)), "degraded"))
        return points, centres

    # ---- grading
    def grade(self, points: np.ndarray, volumes: dict, info: StudyInfo) -> np.ndarray:
        """(25, 3) probabilities in LABEL_COLUMNS order: each grading run (mean over folds, calibrated), mean
        over runs. Raises _Fatal when no run gives finite probabilities."""
        results, failures = [], []
        for run in self.grading_runs:
            try:
                probs = grade(run, points, volumes, self.device, self.tta, self.batch_size, self._autocast)
            except RunFailed as exc:
                failures.append((str(exc), run.path.name))
                continue
            except Exception as exc:  # noqa: BLE001 - another run may still answer
                failures.append(("grading failed", f"{run.path.name}: {type(exc).__name__}: {first_lines(exc)}"))
                continue
            frame = study_frame(info.study_id, probs.transpose(1, 0, 2).reshape(-1, len(PROB_COLUMNS)))
            if run.calibration is not None:
                frame = run.calibration.apply(frame)
            results.append(frame[list(PROB_COLUMNS)].to_numpy(dtype=np.float64))
        # a failed run is a lesser answer while another run answers, and the reason for the priors otherwise
        info.issues += [Issue(kind, detail, "degraded" if results else "fatal") for kind, detail in failures]
        if not results:
            raise _Fatal()
        mean = np.mean(results, axis=0)
        return mean / mean.sum(1, keepdims=True)

