"""The images of one of the worst studies (:class:`spine.report.contents.StudyPage`): what the grading model saw
(its views or crops, built from the cache by the training builders) and predicted against true points over
sagittal slices, with the per-point errors. Points are (condition, level, 3) arrays, world LPS mm; a drawing that
fails becomes a note of its study (:func:`guarded`).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from spine.constants import CONDITION_GROUP, CONDITIONS, LEVELS, PROB_COLUMNS, SEVERITIES
from spine.data.grading import point_table
from spine.data.inputs import CropInput, GradingInput, ViewInput, grading_input
from spine.report import figures as F
from spine.report.contents import StudyPage
from spine.report.sources import Sources
from spine.run_folder import MODEL_JSON, fold_dirs, read_model_json

__all__ = ["grading_images", "guarded", "point_images"]

log = logging.getLogger(__name__)

_SERIES_SHORT = {"Sagittal T1": "T1", "Sagittal T2/STIR": "T2", "Axial T2": "ax T2"}  # crop channels
_VIEW_SERIES = {"Sagittal T1": "T1", "Sagittal T2/STIR": "T2", "Axial T2": "T2"}  # after the view's plane


def guarded(draw, page: StudyPage, *args) -> None:
    """``draw(page, *args)``; a failure becomes a note of the study (one odd study never costs the report)."""
    try:
        draw(page, *args)
    except Exception as err:  # noqa: BLE001 - whatever a drawing raises, the report goes on
        log.warning("study %s: %s failed: %s: %s", page.study_id, draw.__name__.strip("_"), type(err).__name__, err)
        page.notes.append(f"{draw.__name__.strip('_').replace('_', ' ')} failed: {type(err).__name__}: {err}")


def _study_points(study: int, src: Sources, predicted: pd.DataFrame | None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) (K, L, 3) points of one study, LPS mm, NaN where missing."""
    empty = np.full((len(CONDITIONS), len(LEVELS), 3), np.nan)
    pred = point_table(predicted[predicted.study_id == study], [study])[0] if predicted is not None else empty
    coordinates = src.cache.coordinates if src.cache is not None else None
    true = point_table(coordinates[coordinates.study_id == study], [study])[0] if coordinates is not None else empty
    return pred, true


def _reader(src: Sources) -> GradingInput:
    """What the run's grading model reads (:mod:`spine.data.inputs`): the model its folds saved, else its config."""
    name = src.tcfg.model.name
    for fold in fold_dirs(src.run):
        if (fold / MODEL_JSON).is_file():
            name = read_model_json(fold)[0]
            break
    return grading_input(name, src.tcfg.stage)


def grading_images(page: StudyPage, src: Sources, landmark_oof: pd.DataFrame | None) -> None:
    """What the grading model saw of the study: its views or crops, built from the cache by the training
    builders at the landmark run's OOF points (the label points where it has none, as validation did)."""
    if src.cache is None:
        page.notes.append(f"no model inputs: {src.cache_note}")
        return
    pred, true = _study_points(page.study_id, src, landmark_oof)
    if np.isfinite(pred).all(-1).any():
        points, where = pred, "at the landmark run's out-of-fold points"
    else:
        points, where = true, "at the label points (no landmark prediction for this study)"
    if not np.isfinite(points).all(-1).any():
        page.notes.append("no model inputs: the study has neither predicted nor label points")
        return
    try:
        reader = _reader(src)
    except (ValueError, TypeError, KeyError) as err:
        page.notes.append(f"no model inputs: the run's {src.tcfg.model.name} input does not build ({err})")
        return
    percentiles = tuple(float(p) for p in src.tcfg.stage.percentiles)
    volumes = {}
    for description in reader.series:
        volumes[description], why = src.volume(page.study_id, description, percentiles)
        if volumes[description] is None:
            page.notes.append(f"{why}: its images are blank (as the model saw them)")
    if all(v is None for v in volumes.values()):
        page.notes.append("no model inputs: none of the run's series is in the cache for this study")
        return
    images, _ = reader.build(volumes, points)
    title = f"study {page.study_id}: the model's input {where}"
    caption, figure = _FIGURES[reader.kind](page, src, reader, images, title)
    page.figures[f"{caption} {where}"] = figure


def _views_figure(page: StudyPage, src: Sources, reader: ViewInput, images: np.ndarray, title: str):
    """(caption, figure) of the (L, K, V, S, H, W) views: the middle slice of each, under each condition its
    true grade and the predicted probability of that grade."""
    names = [f"{'sag' if spec.plane == 'sagittal' else 'ax'} {_VIEW_SERIES.get(spec.series, spec.series)}"
             for condition in CONDITIONS for spec in reader.views.groups[CONDITION_GROUP[condition]]]
    grades = page.grades.set_index(["condition", "level"]) if page.grades is not None else None
    cells = {}
    if grades is not None:
        for lv, level in enumerate(LEVELS):
            for k, condition in enumerate(CONDITIONS):
                g = grades.loc[(condition, level)]
                if g["true"]:
                    p = float(g[PROB_COLUMNS[SEVERITIES.index(g["true"])]])
                    cells[(lv, k)] = f"{F.GRADE_SHORT[SEVERITIES.index(g['true'])]} p={p:.2f}"
                else:
                    cells[(lv, k)] = "unlabelled"
    return ("views (middle slice of each; under each condition: true grade, its predicted probability)",
            F.views_figure(images, names, cells, title, src.cfg.dpi))


def _crops_figure(page: StudyPage, src: Sources, reader: CropInput, images: np.ndarray, title: str):
    """(caption, figure) of the (L, C, X, Y, Z) crops: mid-sagittal and mid-axial slice of each channel."""
    return ("crops (mid-sagittal and mid-axial slice of each channel)",
            F.crops_figure(images, [_SERIES_SHORT.get(d, d) for d in reader.series], title, src.cfg.dpi))


_FIGURES = {"crops": _crops_figure, "views": _views_figure}  # how the report shows each input kind


_PANELS = (("spinal_canal_stenosis", "Sagittal T2/STIR", "canal on the Sagittal T2/STIR"),
           ("left_neural_foraminal_narrowing", "Sagittal T1", "left foramen on the Sagittal T1"),
           ("right_neural_foraminal_narrowing", "Sagittal T1", "right foramen on the Sagittal T1"))


def point_images(page: StudyPage, src: Sources, predicted: pd.DataFrame | None) -> None:
    """Predicted against true points over sagittal slices through them, and the per-point errors."""
    if src.cache is None:
        page.notes.append(f"no points over images: {src.cache_note}")
        return
    if predicted is None:
        page.notes.append("no predicted points: no landmark run (the true points are drawn alone)")
    pred, true = _study_points(page.study_id, src, predicted)
    rows = []
    for k, condition in enumerate(CONDITIONS):
        for lv, level in enumerate(LEVELS):
            if np.isfinite(pred[k, lv]).all() and np.isfinite(true[k, lv]).all():
                rows.append({"condition": condition, "level": level,
                             "error_mm": float(np.linalg.norm(pred[k, lv] - true[k, lv]))})
    page.point_errors = pd.DataFrame(rows, columns=["condition", "level", "error_mm"])
    panels = []
    for condition, description, name in _PANELS:
        k = CONDITIONS.index(condition)
        panel = {"title": name}
        reference = true[k] if np.isfinite(true[k]).all(-1).any() else pred[k]
        finite = reference[np.isfinite(reference).all(-1)]
        volume, why = src.volume(page.study_id, description)
        if not len(finite):
            panel["missing"] = "no point of this condition"
        elif volume is None:
            panel["missing"] = why
        else:
            grid = F.sagittal_grid(finite.mean(axis=0))
            panel["image"] = volume.sample(grid)[0][0]
            panel["true"], panel["pred"] = grid.world_to_index(true[k]), grid.world_to_index(pred[k])
            panel["levels"] = np.arange(len(LEVELS))
            if not np.isfinite(panel["pred"]).all(-1).any() and predicted is not None:
                panel["title"] += " (no prediction)"
        if volume is None and len(finite):
            page.notes.append(why)
        panels.append(panel)
    page.figures["predicted (x) against true (o) points over sagittal slices sampled from the cache through the "
                 "true points"] = F.points_figure(panels, f"study {page.study_id}", src.cfg.dpi)
