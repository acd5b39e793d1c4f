"""Inference: run folders -> 25 rows of probabilities per study, always, for every study.

Per study (`Predictor.predict_study`, or `load_volumes` + `Predictor.predict_volumes`):

1. **Volumes**, in memory, with the preprocessing code of training: ``read_series`` + ``make_volume`` with the
   options of the cache each run was trained on (``<run>/cache.json`` -> `volume_options`), i.e. exactly
   ``volume_from_dicom``. Several series of one type: the first one (ascending series_id) that gives a volume.
   With a preprocessing cache (``cache_dir``) made with the same options, its volumes are used instead.
2. **Landmarks**: each fold model of each landmark run on the input `LandmarkDataset` makes (`prepare_volume`
   per series, `study_grid`, `sample_channels`), decoded to world LPS mm by `LandmarkStage.decode`; with
   ``tta`` also on the left-right mirrored grid (decode swaps the points back). Mean over all of them ->
   25 points -> `level_centres` -> `fill_centres`.
3. **Grading**: for each grading run, the crops of its ``stage.crop`` at the 5 level centres, one channel
   per ``stage.series`` (zeros and ``present = 0`` for a missing series), through each fold model ->
   `grading_probabilities`; with ``tta`` also the mirrored crops (`GridAffine(flip_lr=True)`), whose
   left/right conditions are swapped back (`CONDITION_SWAP`). Mean over folds, the run's calibration.json,
   then mean over grading runs, rows renormalised, clipped to [1e-6, 1], renormalised.

Nothing a study holds stops the run: a study that cannot be graded gets the grading runs' training priors
(priors.json, mean over runs; uniform 1/3 without any), and the log says why (`StudyInfo`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import (CONDITIONS, LABEL_COLUMNS, LEVEL_NAMES, LEVELS, PROB_COLUMNS, SERIES_TYPES, parse_row_id,
                             series_type, study_row_ids)
from spine.io import tables
from spine.procs import exit_with_parent
from spine.progress import progress

__all__ = ["Issue", "PredictError", "Predictor", "StudyInfo", "Volume", "VolumeSpec", "load_volumes",
           "predict", "read_listing"]

FLOOR = 1e-6  # every written probability lies in [FLOOR, 1]
LOG_COLUMNS = ["study_id", "status", "answer", "reason", "seconds"]
PROJECT_STUDIES = 720  # the summary projects the run time to this many studies (a Kaggle test set)
INSIDE_MARGIN_MM = 10.0  # a level centre this far outside every volume counts as outside


log = logging.getLogger(__name__)

class PredictError(ValueError):
    """A configuration that cannot predict anything (no runs, a run without models, no listing)."""


# ------------------------------------------------------------------------------------------ study log
@dataclass(frozen=True)
class Issue:
    """Something off in a study. ``effect``: ``note`` (answer unaffected), ``degraded`` (the model answered
    with less: a zero channel, one run fewer) or ``fatal`` (no model answer: the priors)."""

    kind: str  # short, countable: "missing Axial T2", "no landmark series", ...
    detail: str = ""
    effect: str = "degraded"

    def text(self) -> str:
        return f"{self.kind} ({self.detail})" if self.detail else self.kind


@dataclass
class StudyInfo:
    """One study's line of the log. ``status``: ok (the model on every input) or fallback; ``answer``: model or
    priors; ``reason``: every issue, ``; ``-separated (empty for a clean study)."""

    study_id: int
    status: str = "ok"
    answer: str = "model"
    issues: list[Issue] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reason(self) -> str:
        return "; ".join(i.text() for i in self.issues)

    def row(self) -> dict:
        return {"study_id": self.study_id, "status": self.status, "answer": self.answer, "reason": self.reason,
                "seconds": round(self.seconds, 3)}


# -------------------------------------------------------------------------------------------- volumes
@dataclass(frozen=True)
class VolumeSpec:
    """One series type built with one set of volume options (what a run's cache used)."""

    description: str
    spacing_mm: tuple[float, float, float]
    min_slices: int
    max_gap_factor: float

    @classmethod
    def of(cls, description: str, params: dict) -> VolumeSpec:
        from spine.preprocess.cache import volume_options

        o = volume_options(params, description)
        return cls(description, tuple(float(v) for v in o["spacing_mm"]), int(o["min_slices"]),
                   float(o["max_gap_factor"]))

    def options(self) -> dict:
        return {"spacing_mm": self.spacing_mm, "min_slices": self.min_slices, "max_gap_factor": self.max_gap_factor}


@dataclass
class Volume:
    """A patient volume: float32 ``array`` indexed [i, j, k], LPS identity direction, ``world = origin +
    index * spacing`` (the cache's voxel frame)."""

    array: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    series_id: int | None = None
    source: str = "dicom"  # dicom | cache

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World LPS mm of the first and last voxel centres."""
        return self.origin, self.origin + (np.asarray(self.array.shape) - 1) * self.spacing


_CACHES: dict[str, object] = {}


def _open_cache(root: str):
    if root not in _CACHES:
        from spine.preprocess.cache import Cache

        _CACHES[root] = Cache.open(root)
    return _CACHES[root]


def _series_id(path) -> int | None:
    name = Path(path).name
    return int(name) if name.isdigit() else None


def _first_lines(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_volumes(study_id: int, series: dict[str, Sequence], specs: Sequence[VolumeSpec],
                 cache_root: str | None = None) -> tuple[dict[VolumeSpec, Volume | None], list[Issue]]:
    """The study's volume of each spec (None where no series of that type gives one) and the issues met.

    ``series``: series description -> series folders, in the order to try them (ascending series_id).
    Never raises for a study's content: unreadable series become None with an issue. A picklable function
    of plain arguments, so that worker processes can run it ahead of the models.
    """
    from spine.io.dicom import read_series
    from spine.preprocess.volume import make_volume

    volumes: dict[VolumeSpec, Volume | None] = {}
    issues: list[Issue] = []
    read: dict[str, object] = {}  # folder -> DicomSeries or the exception (read once for several specs)
    cache = None
    if cache_root:
        try:
            cache = _open_cache(cache_root)
        except Exception as exc:  # noqa: BLE001 - a bad cache only costs speed
            issues.append(Issue("cache unusable", _first_lines(exc), "note"))
    uses = Counter(spec.description for spec in specs)
    for spec in specs:
        uses[spec.description] -= 1
        volumes[spec] = None
        if cache is not None:
            volume = _from_cache(cache, int(study_id), spec)
            if volume is not None:
                volumes[spec] = volume
                continue
        folders = [str(p) for p in series.get(spec.description, [])]
        if not folders:
            issues.append(Issue(f"missing {spec.description}", "no such series listed"))
            continue
        failures = []
        for folder in folders:
            try:
                if folder not in read:
                    try:
                        read[folder] = read_series(folder)
                    except Exception as exc:  # noqa: BLE001 - kept, so a second spec does not read it again
                        read[folder] = exc
                dicom = read[folder]
                if isinstance(dicom, Exception):
                    raise dicom
                made = make_volume(dicom, spec.spacing_mm, min_slices=spec.min_slices,
                                   max_gap_factor=spec.max_gap_factor, description=spec.description)
            except Exception as exc:  # noqa: BLE001 - the next series of the type may do
                text = str(exc).replace(str(Path(folder)), Path(folder).name)  # no long paths in the log
                failures.append(f"series {Path(folder).name}: {_first_lines(text)}")
                continue
            import SimpleITK as sitk

            array = sitk.GetArrayFromImage(made.image).transpose(2, 1, 0)  # [k, j, i] -> [i, j, k]
            volumes[spec] = Volume(array, np.asarray(made.grid.origin, dtype=np.float64),
                                   np.asarray(made.grid.spacing, dtype=np.float64), _series_id(folder))
            skipped = getattr(dicom, "skipped", [])
            if skipped:
                first = skipped[0]
                issues.append(Issue("skipped files", f"{spec.description} series {Path(folder).name}: "
                                    f"{len(skipped)} left out, e.g. {Path(first.path).name}: "
                                    f"{_first_lines(first.reason, 80)}", "note"))
            if made.notes:  # what the volume builder left out or resampled specially: the input was altered
                issues.append(Issue("volume notes", f"{spec.description} series {Path(folder).name}: "
                                    f"{_first_lines('; '.join(made.notes), 240)}", "note"))
            break
        if not uses[spec.description]:  # no other spec needs these pixels: free them now
            for folder in folders:
                read.pop(folder, None)
        if failures and volumes[spec] is not None:
            issues.append(Issue(f"unusable {spec.description} series", "; ".join(failures)
                                + f"; used series {volumes[spec].series_id}", "note"))
        elif failures:
            issues.append(Issue(f"missing {spec.description}", "; ".join(failures)))
    # the same folder under several specs reports its skipped files once
    unique, seen = [], set()
    for issue in issues:
        if (issue.kind, issue.detail) not in seen:
            seen.add((issue.kind, issue.detail))
            unique.append(issue)
    return volumes, unique


def _from_cache(cache, study_id: int, spec: VolumeSpec) -> Volume | None:
    """The cache's volume of the study's first ok series of the type, if the cache was made like ``spec``."""
    try:
        if VolumeSpec.of(spec.description, cache.info.get("params", {})) != spec:
            return None  # made with other options than the run's training cache: build from DICOM
        ids = cache.series_of(study_id, spec.description)
        if not ids:
            return None
        grid = cache.grid(study_id, ids[0])
        array = np.asarray(cache.load_array(study_id, ids[0]), dtype=np.float32)
        return Volume(array, np.asarray(grid.origin, dtype=np.float64), np.asarray(grid.spacing, dtype=np.float64),
                      ids[0], "cache")
    except Exception:  # noqa: BLE001 - fall back to the DICOM files
        return None


# ----------------------------------------------------------------------------------------- run folders
@dataclass
class Run:
    """A run folder ready for inference: its config, fold models, and (grading) calibration and priors."""

    path: Path
    cfg: object  # spine.train.config.TrainConfig
    params: dict  # cache.json params: how the training volumes were made
    models: list
    folds: list[str]
    calibration: object | None = None  # spine.calibrate.Calibration
    priors: np.ndarray | None = None  # (25, 3) in LABEL_COLUMNS order

    @property
    def stage(self) -> str:
        return self.cfg.stage.name

    @cached_property
    def views(self):
        """The :class:`~spine.data.views.ViewSet` when the run's model reads per-condition views, else None."""
        if self.stage != "grading" or "view_shape" not in getattr(self.models[0], "spine_kwargs", {}):
            return None
        from spine.data.views import ViewSet

        return ViewSet.from_config(self.cfg.stage.views)

    @property
    def specs(self) -> list[VolumeSpec]:
        series = self.views.series if self.views is not None else self.cfg.stage.series
        return [VolumeSpec.of(d, self.params) for d in series]




def load_run(path, device) -> Run:
    """Read a run folder and build its finished fold models on ``device`` (eval mode).

    Raises PredictError when the folder is not a usable run (no config.yaml, unknown stage, no finished fold).
    """
    from spine.config import ConfigError
    from spine.models import create_model
    from spine.train.config import load_run_config

    path = Path(path)
    if not path.is_dir():
        raise PredictError(f"run folder {path} does not exist")
    try:
        cfg = load_run_config(path)
    except (FileNotFoundError, ConfigError) as err:
        raise PredictError(str(err)) from None
    cache_json = path / "cache.json"
    params: dict = {}
    if cache_json.is_file():
        params = json.loads(cache_json.read_text()).get("params", {}) or {}
    else:
        log.warning(f"{path}: no cache.json; volumes are built with the default preprocessing options")
    models, folds = [], []
    fold_dirs = sorted((d for d in path.glob("fold*") if d.is_dir() and d.name[4:].isdigit()),
                       key=lambda d: int(d.name[4:]))
    for fold in fold_dirs:
        weights, spec = fold / "model.safetensors", fold / "model.json"
        if not weights.is_file() or not spec.is_file():
            missing = "model.safetensors" if not weights.is_file() else "model.json"
            log.warning(f"{fold}: unfinished fold (no {missing}), skipped")
            continue
        try:
            described = json.loads(spec.read_text())
            model = create_model(described["name"], weights=weights, **described.get("kwargs", {}))
        except Exception as err:  # noqa: BLE001 - a broken fold is a configuration problem
            raise PredictError(f"{fold}: cannot build the model: {_first_lines(err)}") from None
        models.append(model.to(device).eval())
        folds.append(fold.name)
    if not models:
        raise PredictError(f"run {path} has no finished fold (no fold*/model.safetensors)")
    run = Run(path, cfg, params, models, folds)
    if run.stage == "grading":
        from spine.calibrate import Calibration

        calibration = path / "calibration.json"
        if calibration.is_file():
            try:
                run.calibration = Calibration.from_json(calibration)
            except (ValueError, KeyError, json.JSONDecodeError) as err:
                raise PredictError(f"{calibration}: {err}") from None
        else:
            log.warning(f"{path}: no calibration.json, probabilities are used uncalibrated")
        run.priors = _read_priors(path / "priors.json")
    return run


def _read_priors(path: Path) -> np.ndarray | None:
    """(25, 3) class priors of priors.json in LABEL_COLUMNS order, None when absent or unusable."""
    if not path.is_file():
        log.warning(f"{path.parent}: no priors.json")
        return None
    try:
        data = json.loads(path.read_text())
        columns = data.get("columns", list(PROB_COLUMNS))
        order = [list(columns).index(c) for c in PROB_COLUMNS]
        table = np.array([[float(data["priors"][key][i]) for i in order] for key in LABEL_COLUMNS])
        if not np.isfinite(table).all() or (table < 0).any() or (table.sum(1) <= 0).any():
            raise ValueError("probabilities must be finite, non-negative, with positive row sums")
        return table / table.sum(1, keepdims=True)
    except (ValueError, KeyError, TypeError, IndexError, json.JSONDecodeError) as err:
        log.warning(f"{path}: unusable ({_first_lines(err)}), ignored")
        return None


def _resolve_device(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device={device}: CUDA is not available")
    return dev


def _finalise(probs: np.ndarray) -> np.ndarray:
    """(n, 3) rows: non-finite/negative -> 0 (an all-zero row uniform), normalised, clipped to [FLOOR, 1],
    renormalised."""
    p = np.where(np.isfinite(probs) & (probs >= 0), probs, 0.0).astype(np.float64)
    total = p.sum(1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
    p = np.clip(p, FLOOR, 1.0)
    return p / p.sum(1, keepdims=True)


def _frame(study_id, probs: np.ndarray) -> pd.DataFrame:
    """25 rows ``row_id, normal_mild, moderate, severe`` of ``probs`` (25, 3) in LABEL_COLUMNS order."""
    frame = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=list(PROB_COLUMNS))
    frame.insert(0, "row_id", study_row_ids(study_id))
    return frame


# ------------------------------------------------------------------------------------------ predictor
class Predictor:
    """Landmark runs + grading runs, ready to predict studies. Build with :meth:`from_runs`."""

    def __init__(self, landmark_runs: list[Run], grading_runs: list[Run], device, amp: str = "bf16",
                 tta: bool = False, batch_size: int = 32, cache_dir: str | None = None):
        import torch

        if not landmark_runs or not grading_runs:
            raise PredictError("need at least one landmark run and one grading run "
                               f"(got {len(landmark_runs)} landmark, {len(grading_runs)} grading)")
        self.landmark_runs, self.grading_runs = landmark_runs, grading_runs
        self.device = torch.device(device)
        self.amp_dtype = None
        if self.device.type == "cuda" and amp != "none":
            self.amp_dtype = torch.bfloat16 if amp == "bf16" and torch.cuda.is_bf16_supported() else torch.float16
        self.tta, self.batch_size = bool(tta), int(batch_size)
        if self.tta and any(run.views is not None for run in grading_runs):
            log.info("tta: the mirrored pass applies to crop runs and landmarks; views runs already read both "
                     "sides with one mirrored head")
        self.cache_dir = str(cache_dir) if cache_dir else None
        if self.cache_dir:
            try:
                _open_cache(self.cache_dir)
            except Exception as exc:  # noqa: BLE001
                raise PredictError(f"cache_dir={cache_dir}: {exc}") from None
        try:
            from spine.losses import grading_probabilities  # noqa: F401 - fail here, not once per study
        except ImportError as exc:
            raise PredictError(f"this installation cannot grade: {exc}") from None
        from spine.train.landmarks import LandmarkStage

        self._decoders = [LandmarkStage(run.cfg, None) for run in landmark_runs]
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
        dev = _resolve_device(device)
        loaded = [load_run(r, dev) for r in runs]
        return cls([r for r in loaded if r.stage == "landmarks"], [r for r in loaded if r.stage == "grading"],
                   dev, amp, tta, batch_size, cache_dir)

    # ---- what the runs need
    @property
    def specs(self) -> list[VolumeSpec]:
        """Every volume a study needs, deduplicated (runs trained on the same cache share them)."""
        return list(dict.fromkeys(s for run in (*self.landmark_runs, *self.grading_runs) for s in run.specs))

    def describe(self) -> str:
        parts = [f"{run.path.name} ({run.stage}, {len(run.models)} folds)" for run in
                 (*self.landmark_runs, *self.grading_runs)]
        return f"{', '.join(parts)} on {self.device}{', tta' if self.tta else ''}"

    def fallback(self, study_id) -> pd.DataFrame:
        """The answer without a model: the grading runs' training priors (uniform without any)."""
        return _frame(study_id, _finalise(self.priors))

    # ---- one study
    def load(self, study_id, series: dict[str, Sequence]) -> tuple[dict, list[Issue]]:
        return load_volumes(int(study_id), series, self.specs, self.cache_dir)

    def predict_study(self, study_id, series: dict[str, Sequence]) -> tuple[pd.DataFrame, StudyInfo]:
        """25 rows for a study from its series folders (description -> folders, ascending series_id), and its
        log line. Never raises for the study's content."""
        started = time.perf_counter()
        try:
            volumes, issues = self.load(study_id, series)
        except Exception as exc:  # noqa: BLE001
            volumes, issues = {}, [Issue("volumes failed", f"{type(exc).__name__}: {_first_lines(exc)}", "fatal")]
        frame, info = self.predict_volumes(study_id, volumes, issues)
        info.seconds = time.perf_counter() - started
        return frame, info

    def predict_volumes(self, study_id, volumes: dict, issues: Sequence[Issue] = ()) -> tuple[pd.DataFrame,
                                                                                                   StudyInfo]:
        """25 rows from volumes already built (:func:`load_volumes`); the priors on any failure."""
        started = time.perf_counter()
        info = StudyInfo(int(study_id), issues=list(issues))
        frame = None
        try:
            if any(i.effect == "fatal" for i in info.issues):
                raise _Fatal()
            points, centres = self.centres(volumes, info)
            probs = self.grade(points, centres, volumes, info)
            frame = _frame(study_id, _finalise(probs))
        except _Fatal:
            pass
        except Exception as exc:  # noqa: BLE001 - one study never stops the run
            info.issues.append(Issue("error", f"{type(exc).__name__}: {_first_lines(exc)}", "fatal"))
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
    def _autocast(self):
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def points(self, volumes: dict, info: StudyInfo) -> np.ndarray:
        """(K = 5 conditions, L = 5 levels, 3) world LPS mm: mean over landmark runs, folds and TTA; NaN where
        no run predicts a point. Raises _Fatal when no landmark run has an input series."""
        import torch

        from spine.data.landmarks import point_names, prepare_volume, sample_channels, study_grid
        from spine.data.transforms import GridAffine

        sums = np.zeros((len(CONDITIONS), len(LEVELS), 3))
        counts = np.zeros((len(CONDITIONS), len(LEVELS), 1))
        index = {c: k for k, c in enumerate(CONDITIONS)}
        tried, failures = False, []
        for run, decoder in zip(self.landmark_runs, self._decoders):
            s = run.cfg.stage
            inputs = [volumes.get(spec) for spec in run.specs]
            if all(v is None for v in inputs):
                continue
            tried = True
            try:
                prepared = [None if v is None else prepare_volume(v.array, v.origin, v.spacing, s.grid.spacing_mm,
                                                                  s.percentiles) for v in inputs]
                grids = [study_grid(prepared, s.grid.size, s.grid.spacing_mm)]
                if self.tta:
                    grids.append(GridAffine(flip_lr=True)(grids[0]))
                image = torch.from_numpy(np.stack([sample_channels(prepared, g) for g in grids])).to(self.device)
                batch = {"grid_matrix": torch.from_numpy(np.stack([g.matrix for g in grids])),
                         "grid_origin": torch.from_numpy(np.stack([g.origin for g in grids])),
                         "flip": torch.tensor([False, True][: len(grids)])}
                rows = [(index[c], LEVELS.index(lv)) for c, lv in point_names(s.conditions)]
                run_sums, run_counts = np.zeros_like(sums), np.zeros_like(counts)
                for model in run.models:
                    with torch.inference_mode():
                        with self._autocast():
                            outputs = model(image)
                        world = decoder.decode(outputs.float(), batch)  # (B, K, 3), the patient's left/right
                    for b in range(len(grids)):
                        for k, (ci, li) in enumerate(rows):
                            if np.isfinite(world[b, k]).all():
                                run_sums[ci, li] += world[b, k]
                                run_counts[ci, li] += 1
            except Exception as exc:  # noqa: BLE001 - another landmark run may still answer
                failures.append(f"{run.path.name}: {type(exc).__name__}: {_first_lines(exc)}")
                continue
            if not run_counts.any():
                failures.append(f"{run.path.name}: non-finite output")
            sums, counts = sums + run_sums, counts + run_counts
        if not tried:
            series = sorted({d for run in self.landmark_runs for d in run.cfg.stage.series})
            info.issues.append(Issue("no landmark series", f"none of {', '.join(series)} usable", "fatal"))
            raise _Fatal()
        effect = "degraded" if counts.any() else "fatal"
        info.issues += [Issue("landmarks failed", detail, effect) for detail in failures]
        if not counts.any():
            raise _Fatal()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def centres(self, volumes: dict, info: StudyInfo) -> tuple[np.ndarray, np.ndarray]:
        """The points (K, L, 3; NaN where none) and the (L, 3) level centres, LPS mm; raises _Fatal when they
        cannot be placed inside the study's volumes."""
        from spine.data.crops import fill_centres, level_centres

        points = self.points(volumes, info)
        try:
            centres = fill_centres(level_centres(points))
        except ValueError as exc:
            info.issues.append(Issue("no landmarks", _first_lines(exc), "fatal"))
            raise _Fatal() from None
        present = [v for v in volumes.values() if v is not None]
        inside = np.zeros(len(centres), dtype=bool)
        for v in present:
            lo, hi = v.bounds()
            inside |= np.all((centres >= lo - INSIDE_MARGIN_MM) & (centres <= hi + INSIDE_MARGIN_MM), axis=1)
        if not inside.any():
            info.issues.append(Issue("landmarks outside the volumes", "no level centre inside any series", "fatal"))
            raise _Fatal()
        if not inside.all():
            info.issues.append(Issue("landmarks outside the volumes", ", ".join(
                LEVEL_NAMES[i] for i in np.flatnonzero(~inside)), "degraded"))
        return points, centres

    # ---- grading
    def grade(self, points: np.ndarray, centres: np.ndarray, volumes: dict, info: StudyInfo) -> np.ndarray:
        """(25, 3) probabilities in LABEL_COLUMNS order: each grading run (mean over folds, calibrated), mean
        over runs. Raises _Fatal when no run gives finite probabilities."""
        results, failures = [], []
        for run in self.grading_runs:
            try:
                if run.views is not None:
                    probs = self._grade_views(run, points, volumes)  # (L, K, 3)
                else:
                    probs = self._grade_run(run, centres, volumes)
            except _RunFailed as exc:
                failures.append((str(exc), run.path.name))
                continue
            except Exception as exc:  # noqa: BLE001 - another run may still answer
                failures.append(("grading failed", f"{run.path.name}: {type(exc).__name__}: {_first_lines(exc)}"))
                continue
            frame = _frame(info.study_id, probs.transpose(1, 0, 2).reshape(-1, len(PROB_COLUMNS)))
            if run.calibration is not None:
                frame = run.calibration.apply(frame)
            results.append(frame[list(PROB_COLUMNS)].to_numpy(dtype=np.float64))
        # a failed run is a lesser answer while another run answers, and the reason for the priors otherwise
        info.issues += [Issue(kind, detail, "degraded" if results else "fatal") for kind, detail in failures]
        if not results:
            raise _Fatal()
        mean = np.mean(results, axis=0)
        return mean / mean.sum(1, keepdims=True)

    def _grade_run(self, run: Run, centres: np.ndarray, volumes: dict) -> np.ndarray:
        """(L, K, 3) mean probabilities of one grading run's folds (and mirrored crops with ``tta``)."""
        import torch

        from spine.data.crops import CropVolume, crop_grid, level_axes, sample_crop
        from spine.data.grading import CONDITION_SWAP
        from spine.data.transforms import GridAffine
        from spine.losses import grading_probabilities

        s = run.cfg.stage
        sources = [volumes.get(spec) for spec in run.specs]
        if all(v is None for v in sources):
            raise _RunFailed("no grading series")
        crop_volumes = [None if v is None else CropVolume.from_array(v.array, v.origin, v.spacing, s.percentiles)
                        for v in sources]
        axes = level_axes(centres, s.crop.align)
        grids = [crop_grid(centres[lv], axes[lv], s.crop.size, s.crop.mm) for lv in range(len(centres))]
        if self.tta:
            grids += [GridAffine(flip_lr=True)(g) for g in grids]
        crops, present = [], None
        for grid in grids:
            crop, present = sample_crop(crop_volumes, grid)
            crops.append(crop)
        n_levels = len(centres)
        image = torch.from_numpy(np.stack(crops))
        level = torch.arange(n_levels).repeat(len(grids) // n_levels)
        flags = torch.from_numpy(present.astype(np.float32))[None].expand(len(grids), -1)
        total = None
        for model in run.models:
            parts = []
            for start in range(0, len(grids), self.batch_size):
                sl = slice(start, start + self.batch_size)
                with torch.inference_mode():
                    with self._autocast():
                        logits = model(image[sl].to(self.device), level[sl].to(self.device),
                                       flags[sl].to(self.device))
                    parts.append(grading_probabilities(logits.float(), s.loss).cpu().numpy())
            probs = np.concatenate(parts).reshape(len(grids), len(CONDITIONS), len(PROB_COLUMNS))
            if self.tta:
                probs = (probs[:n_levels] + probs[n_levels:][:, CONDITION_SWAP]) / 2
            total = probs if total is None else total + probs
        mean = total / len(run.models)
        if not np.isfinite(mean).all():
            raise _RunFailed("non-finite output")
        return mean


    def _grade_views(self, run: Run, points: np.ndarray, volumes: dict) -> np.ndarray:
        """(L, K, 3) mean probabilities of one views run's folds, on the views of the training builder."""
        import torch

        from spine.data.crops import CropVolume
        from spine.data.views import build_views
        from spine.losses import grading_probabilities

        s = run.cfg.stage
        sources = {spec.description: volumes.get(spec) for spec in run.specs}
        if all(v is None for v in sources.values()):
            raise _RunFailed("no grading series")
        crop_volumes = {d: None if v is None else CropVolume.from_array(v.array, v.origin, v.spacing, s.percentiles)
                        for d, v in sources.items()}
        views, present = build_views(crop_volumes, points, run.views, s.crop.align)
        image = torch.from_numpy(views)  # (L, K, V, S, H, W)
        level = torch.arange(len(views))
        flags = torch.from_numpy(present.astype(np.float32))[None].expand(len(views), -1)
        total = 0.0
        for model in run.models:
            with torch.inference_mode(), self._autocast():
                logits = model(image.to(self.device), level.to(self.device), flags.to(self.device))
            total = total + grading_probabilities(logits.float(), s.loss).cpu().numpy()
        mean = total / len(run.models)
        if not np.isfinite(mean).all():
            raise _RunFailed("non-finite output")
        return mean


class _Fatal(Exception):
    """No model answer for this study (the issue is already recorded)."""


class _RunFailed(Exception):
    """One grading run could not answer; the message is the issue's kind."""


# -------------------------------------------------------------------------------------- the whole run
def read_listing(data_dir, split: str = "test") -> tuple[list[int], dict[int, dict[str, list[Path]]]]:
    """Studies of ``<split>_series_descriptions.csv`` in order of first appearance, and per study its series
    folders by series type in ascending series_id. Rows whose ids are not integers are skipped, with a logged
    reason; descriptions in another case or spacing, and variants (``'Sagittal T2'``), name their series type.
    Raises PredictError when the listing is missing or unusable."""
    studies, series, _ = _read_listing(data_dir, split)
    return studies, series


def _read_listing(data_dir, split: str) -> tuple[list[int], dict[int, dict[str, list[Path]]], dict[int, list[Issue]]]:
    """`read_listing` and, per study, notes on its listing rows (rows skipped, descriptions mapped)."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}_series_descriptions.csv"
    if not path.is_file():
        raise PredictError(f"{path} not found (data_dir must be an RSNA-layout folder)")
    try:
        listing = tables.read_listing(path)
    except tables.TableError as exc:
        raise PredictError(str(exc)) from None
    images = data_dir / f"{split}_images"
    series: dict[int, dict[str, list[Path]]] = {s: {} for s in listing.studies}
    for row in listing.series.sort_values("series_id", kind="stable").itertuples(index=False):
        series[int(row.study_id)].setdefault(row.description, []).append(
            images / str(int(row.study_id)) / str(int(row.series_id)))
    return listing.studies, series, _listing_notes(listing)


def _listing_notes(listing: tables.Listing) -> dict[int, list[Issue]]:
    """Per study: its skipped listing rows and its mapped descriptions, as notes (the answer is unaffected)."""
    notes: dict[int, list[Issue]] = {}
    for study in listing.studies:
        skipped = listing.skipped_of(study)
        if skipped:
            notes.setdefault(study, []).append(Issue("listing rows skipped", "; ".join(skipped), "note"))
    mapped = listing.series[listing.series.written != listing.series.description]
    for study, rows in mapped.groupby("study_id", sort=False):
        detail = "; ".join(sorted({f"{w!r} read as {d!r}" for w, d in zip(rows.written, rows.description)
                                   if d in SERIES_TYPES}))
        if detail:
            notes.setdefault(int(study), []).append(Issue("series description mapped", detail, "note"))
    return notes


def _unlisted_series(study_dir: Path) -> dict[str, list[Path]]:
    """Series folders of a study missing from the listing, typed by the SeriesDescription of their files."""
    import pydicom

    out: dict[str, list[Path]] = {}
    if not study_dir.is_dir():
        return out
    folders = sorted((p for p in study_dir.iterdir() if p.is_dir()),
                     key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    for folder in folders:
        for path in sorted(folder.iterdir())[:5]:
            try:
                description = series_type(str(pydicom.dcmread(path, stop_before_pixels=True).get(
                    "SeriesDescription", "")))
            except Exception:  # noqa: BLE001
                continue
            if description in SERIES_TYPES:
                out.setdefault(description, []).append(folder)
                break
    return out


def _row_order(studies: list[int], sample: Path | None) -> tuple[list[str], list[int]]:
    """Row ids to write, in order (the sample submission's, then every other row of every study), and the
    studies to predict (the listing's, then the sample submission's extra ones)."""
    rows: list[str] = []
    extra: list[int] = []
    if sample is not None and sample.is_file():
        try:
            ids = pd.read_csv(sample, usecols=["row_id"]).row_id.astype(str).str.strip()
        except Exception as exc:  # noqa: BLE001 - the listing alone still says what to write
            log.warning(f"{sample} unreadable ({exc}); rows in listing order")
            ids = pd.Series([], dtype=str)
        rows = list(dict.fromkeys(ids))
        known = set(studies)
        for rid in rows:
            try:
                study = parse_row_id(rid)[0]
            except ValueError:
                continue
            if study not in known:
                known.add(study)
                extra.append(study)
    everyone = [*studies, *extra]
    have = set(rows)
    rows += [rid for s in everyone for rid in study_row_ids(s) if rid not in have]
    return rows, everyone


def _load_here(study: int, series: dict, specs, cache) -> tuple[int, dict, list[Issue], float]:
    started = time.perf_counter()
    try:
        volumes, issues = load_volumes(study, series.get(study, {}), specs, cache)
    except Exception as exc:  # noqa: BLE001
        volumes, issues = {}, [Issue("volumes failed", f"{type(exc).__name__}: {_first_lines(exc)}", "fatal")]
    return study, volumes, issues, time.perf_counter() - started


def _iterate_volumes(predictor: Predictor, studies: list[int], series: dict, workers: int
                     ) -> Iterator[tuple[int, dict, list[Issue], float]]:
    """(study, volumes, issues, seconds) in study order; with ``workers`` > 0 built ahead in worker processes.

    Workers are forked like torch's DataLoader workers (they only read DICOM and resample, no torch). A worker
    that dies (out of memory) breaks the pool: a new pool builds the awaited study alone, and if that dies too,
    the study gets the priors. The main process never builds a volume that killed a worker.
    """
    specs, cache = predictor.specs, predictor.cache_dir
    if workers <= 0:
        for study in studies:
            yield _load_here(study, series, specs, cache)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)

    def new_pool():
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                   initargs=(os.getpid(), threads))

    state: dict = {"pool": new_pool(), "pending": {}}

    def restart() -> None:
        state["pool"].shutdown(wait=False, cancel_futures=True)
        state["pool"], state["pending"] = new_pool(), {}

    try:
        for i, study in enumerate(studies):
            result = None
            for alone in (False, True):
                pool, pending = state["pool"], state["pending"]
                try:
                    for later in studies[i: i + (1 if alone else 2 * workers + 1)]:
                        if later not in pending:
                            pending[later] = pool.submit(_timed_load, later, series.get(later, {}), specs, cache)
                    result = (study, *pending.pop(study).result())
                    break
                except BrokenProcessPool:  # a worker died, on this study or one built ahead: retry it alone
                    restart()
                except Exception as exc:  # noqa: BLE001
                    result = (study, {}, [Issue("volumes failed", f"{type(exc).__name__}: {_first_lines(exc)}",
                                                "fatal")], 0.0)
                    break
            if result is None:
                result = (study, {}, [Issue("volumes failed", "the worker process building its volumes died "
                                            "(out of memory?)", "fatal")], 0.0)
            yield result
    finally:
        state["pool"].shutdown(wait=False, cancel_futures=True)


def _init_worker(parent: int, threads: int) -> None:
    """Initializer of a pool worker: it ends with the main process ``parent`` (even a SIGKILLed one), ``threads``
    ITK threads."""
    exit_with_parent(parent)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _timed_load(study, series, specs, cache):
    started = time.perf_counter()
    volumes, issues = load_volumes(study, series, specs, cache)
    return volumes, issues, time.perf_counter() - started


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    log. Raises PredictError for an unusable configuration; never for a study's content.
    """
    started = time.perf_counter()
    data_dir = Path(cfg.data_dir)
    studies, series, notes = _read_listing(data_dir, cfg.split)
    sample = data_dir / "sample_submission.csv" if cfg.split == "test" else None
    rows, studies = _row_order(studies, sample)
    for study in studies:
        if study not in series:  # in the sample submission only: type its folders from the DICOM headers
            series[study] = _unlisted_series(data_dir / f"{cfg.split}_images" / str(study))
    predictor = Predictor.from_runs(cfg.runs, cfg.device, cfg.amp, cfg.tta, cfg.batch_size, cfg.cache_dir or None)
    log = log_path(cfg)
    print(f"[predict] {len(studies)} studies of {data_dir / (cfg.split + '_series_descriptions.csv')} with "
          f"{predictor.describe()}", file=sys.stderr)
    setup_s, loop_started = time.perf_counter() - started, time.perf_counter()

    probs: dict[str, np.ndarray] = {}
    infos: list[StudyInfo] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    bar = progress(len(studies), "predict", "study", enabled=cfg.progress)  # a bar, or a line per 10 %
    with open(log, "w", newline="") as handle:  # one line per study as it finishes: readable mid-run
        handle.write(",".join(LOG_COLUMNS) + "\n")
        for study, volumes, issues, load_s in _iterate_volumes(predictor, studies, series, cfg.workers):
            if not series.get(study):
                issues = [Issue("no series", "none listed, no study folder", "fatal")]
            issues = [*notes.get(study, []), *issues]
            frame, info = predictor.predict_volumes(study, volumes, issues)
            info.seconds += load_s
            infos.append(info)
            for rid, p in zip(frame.row_id, frame[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)):
                probs[rid] = p
            pd.DataFrame([info.row()], columns=LOG_COLUMNS).to_csv(handle, header=False, index=False)
            handle.flush()
            if info.status != "ok":
                message = f"[predict] {study}: {info.status} ({info.answer}): {info.reason}"
                bar.write(message, file=sys.stderr)
            bar.update(1)
    bar.close()

    uniform = np.full(len(PROB_COLUMNS), 1.0 / len(PROB_COLUMNS))
    unknown = [rid for rid in rows if rid not in probs]
    if unknown:
        log.warning(f"{len(unknown)} sample-submission rows name no known condition/level "
                    f"(e.g. {unknown[0]!r}): 1/3 each")
    table = _finalise(np.stack([probs.get(rid, uniform) for rid in rows])) if rows else \
        np.zeros((0, len(PROB_COLUMNS)))
    out = pd.DataFrame(table, columns=list(PROB_COLUMNS))
    out.insert(0, "row_id", rows)
    _write_atomic(out, Path(cfg.out))
    return _summary(infos, setup_s, time.perf_counter() - loop_started, Path(cfg.out), log, len(out), predictor)


def _summary(infos: list[StudyInfo], setup_s: float, loop_s: float, out: Path, log: Path, n_rows: int,
             predictor) -> dict:
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
               "projected_hours": projected, "rows": n_rows, "out": str(out), "log": str(log),
               "device": str(predictor.device)}
    why = ", ".join(f"{k}: {v}" for k, v in reasons.most_common())
    print(f"[predict] {n} studies: {summary['ok']} ok, {summary['fallback']} fallback"
          f"{f' ({why})' if why else ''}, {summary['priors']} answered by the priors; "
          f"{per_study:.2f} s/study on {predictor.device} after {setup_s:.1f} s of setup (projected "
          f"{projected:.2f} h for {PROJECT_STUDIES} studies); wrote {out} ({n_rows} rows), log {log}")
    return summary
