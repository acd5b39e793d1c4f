"""Generate a synthetic dataset in the exact layout of the RSNA 2024 competition.

Layout written under ``out_dir`` (see docs/synthetic.md):
    train.csv, train_label_coordinates.csv, train_series_descriptions.csv, train_images/{study}/{series}/{n}.dcm
    test_series_descriptions.csv, test_images/..., sample_submission.csv
    test_labels.csv (hidden truth, train.csv format), oracle_submission.csv (Bayes-optimal), truth.csv
    dataset.json (how it was made)
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import (CONDITION_NAMES, CONDITION_SERIES, CONDITIONS, LABEL_COLUMNS, LEVEL_NAMES, LEVELS,
                             PROB_COLUMNS, SEVERITIES, label_column, study_row_ids)
from spine.synth import labels as label_model
from spine.synth.acquisition import SeriesPlan, plan_axial, plan_sagittal, render_slice
from spine.synth.anatomy import Spine
from spine.synth.config import SynthConfig
from spine.synth.dicom_writer import SliceTags, write_slice

SERIES_SEQUENCE = {"Sagittal T1": "Sagittal T1", "Sagittal T2/STIR": "Sagittal T2/STIR", "Axial T2": "Axial T2"}


@dataclass
class StudyResult:
    """Everything one study contributes to the CSV files."""

    study_id: int
    split: str
    series: list[dict]  # rows of *_series_descriptions.csv
    labels: dict  # row of train.csv / test_labels.csv
    coordinates: list[dict]  # rows of train_label_coordinates.csv
    narrowing: dict  # condition -> list of 5 latent narrowing values (the truth the oracle uses)
    geometry: list[dict]  # per series: stacks, slices, spacing (for the dataset card)


def generate(cfg: SynthConfig) -> Path:
    """Write the dataset described by ``cfg``; returns the output folder. Deterministic for ``cfg.seed``."""
    out = Path(cfg.out_dir)
    _prepare_out_dir(out, cfg.overwrite)
    started = time.perf_counter()
    root = np.random.SeedSequence(cfg.seed)
    ids = _unique_ids(np.random.default_rng(root.spawn(1)[0]), cfg.n_train + cfg.n_test, 4)
    jobs = [(cfg, int(ids[i, 0]), [int(s) for s in ids[i, 1:]], "train" if i < cfg.n_train else "test", seq)
            for i, seq in enumerate(root.spawn(cfg.n_train + cfg.n_test))]
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            results = list(pool.map(_study_job, jobs, chunksize=1))
    else:
        results = [_study_job(job) for job in jobs]
    _write_tables(out, results, cfg)
    _write_card(out, results, cfg, time.perf_counter() - started)
    return out


def _study_job(job) -> StudyResult:
    cfg, study_id, series_ids, split, seed = job
    return make_study(cfg, study_id, series_ids, split, np.random.default_rng(seed))


def make_study(cfg: SynthConfig, study_id: int, series_ids: list[int], split: str,
               rng: np.random.Generator) -> StudyResult:
    """Sample one study's anatomy, labels and acquisitions and write its DICOM files."""
    narrowing = label_model.sample_narrowing(rng)
    spine = _sample_spine(narrowing, rng)
    grades = {c: label_model.read_label(narrowing[c], cfg.label_noise, rng) for c in CONDITIONS}
    missing = _missing_labels(rng, cfg.missing_label_rate)
    labels = {"study_id": study_id}
    for c in CONDITIONS:
        for li, lv in enumerate(LEVELS):
            labels[label_column(c, lv)] = None if (c, lv) in missing else SEVERITIES[grades[c][li]]
    plans = {
        "Sagittal T1": plan_sagittal(spine, "Sagittal T1", rng, cfg),
        "Sagittal T2/STIR": plan_sagittal(spine, "Sagittal T2/STIR", rng, cfg),
        "Axial T2": plan_axial(spine, rng, cfg),
    }
    kept = [d for d in plans if rng.random() >= cfg.missing_series_rate] or list(plans)
    images_dir = Path(cfg.out_dir) / f"{split}_images" / str(study_id)
    series_rows, geometry, coordinates = [], [], []
    for description, series_id in zip(plans, series_ids):
        if description not in kept:
            continue
        plan = plans[description]
        _write_series(images_dir / str(series_id), spine, plan, study_id, series_id, rng, cfg)
        series_rows.append({"study_id": study_id, "series_id": series_id, "series_description": description})
        geometry.append(_series_geometry(plan, description))
        if split == "train":
            coordinates += _label_coordinates(spine, plan, study_id, series_id, labels)
    return StudyResult(study_id, split, series_rows, labels, coordinates,
                       {c: narrowing[c].tolist() for c in CONDITIONS}, geometry)


def _sample_spine(narrowing: dict[str, np.ndarray], rng: np.random.Generator) -> Spine:
    """Pose and shape of one patient's lumbar spine (world LPS mm)."""
    angles = np.radians(rng.uniform([-10, -5, -4], [10, 5, 4]))  # pitch (x), roll (y), yaw (z)
    rotation = _rotation(*angles)
    origin = np.array([rng.uniform(-10, 10), rng.uniform(0, 40), rng.uniform(-150, 150)])
    pitch = rng.uniform(34.0, 39.0)  # disc-to-disc distance along the arc
    disc_t = pitch * np.array([3.0, 2.0, 1.0, 0.0, -1.0, -2.0]) + np.r_[rng.normal(0, 1.5, 3), 0, rng.normal(0, 1.5, 2)]
    height = rng.uniform(8.0, 11.0, 6)
    height[1:] *= 1.0 - 0.3 * narrowing["spinal_canal_stenosis"]  # degenerated discs lose height
    return Spine(origin=origin, rotation=rotation, scale=float(rng.uniform(0.9, 1.1)),
                 radius=float(rng.uniform(250.0, 450.0)), disc_t=disc_t, disc_height=height,
                 narrowing=narrowing)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _missing_labels(rng: np.random.Generator, rate: float) -> set[tuple[str, str]]:
    if rng.random() >= rate:
        return set()
    pairs = [(c, lv) for c in CONDITIONS for lv in LEVELS]
    picks = rng.choice(len(pairs), size=int(rng.integers(1, 4)), replace=False)
    return {pairs[i] for i in picks}


def _write_series(folder: Path, spine: Spine, plan: SeriesPlan, study_id: int, series_id: int, rng, cfg) -> None:
    """Render and write every slice of a series as ``{InstanceNumber}.dcm``."""
    look = {"gain": float(rng.uniform(600, 2500)), "noise": float(rng.uniform(0.015, 0.04)),
            "bias": rng.uniform(-0.15, 0.15, 3)}
    drop = {tag for tag in ("SliceThickness", "SliceLocation", "SpacingBetweenSlices", "SeriesDescription",
                            "PatientPosition") if rng.random() < cfg.missing_tag_rate}
    flip_location = rng.random() < 0.2  # SliceLocation with the wrong sign, as some scanners write it
    for stack, k, number in plan.slices():
        ipp = stack.image_position(k)
        location = float(stack.centers[k] @ stack.normal) * (-1 if flip_location else 1)
        tags = SliceTags(
            study_id=study_id, series_id=series_id, instance_number=number,
            image_position=tuple(ipp), image_orientation=tuple(np.r_[stack.row_dir, stack.col_dir]),
            pixel_spacing=stack.pixel_spacing,
            slice_thickness=None if "SliceThickness" in drop else plan.slice_thickness,
            spacing_between_slices=None if "SpacingBetweenSlices" in drop else plan.slice_thickness,  # often wrong
            slice_location=None if "SliceLocation" in drop else location,
            series_description=None if "SeriesDescription" in drop else plan.description,
            patient_position=None if "PatientPosition" in drop else plan.patient_position,
        )
        pixels = render_slice(spine, stack, k, SERIES_SEQUENCE[plan.description], look, rng)
        write_slice(folder / f"{number}.dcm", pixels, tags)


def _label_coordinates(spine: Spine, plan: SeriesPlan, study_id: int, series_id: int, labels: dict) -> list[dict]:
    """Rows of train_label_coordinates.csv for the conditions labelled on this series (DICOM pixel frame)."""
    rows = []
    for ci, condition in enumerate(CONDITIONS):
        if CONDITION_SERIES[condition] != plan.description:
            continue
        for li, level in enumerate(LEVELS):
            if labels[label_column(condition, level)] is None:
                continue  # unlabelled items have no coordinates either
            number, x, y, _ = plan.locate(spine.label_point(condition, li))
            rows.append({"study_id": study_id, "series_id": series_id, "instance_number": number,
                         "condition": CONDITION_NAMES[ci], "level": LEVEL_NAMES[li], "x": x, "y": y})
    return rows


def _series_geometry(plan: SeriesPlan, description: str) -> dict:
    steps = [float(np.median(np.linalg.norm(np.diff(s.centers, axis=0), axis=1))) if len(s.centers) > 1 else 0.0
             for s in plan.stacks]
    return {"description": description, "stacks": len(plan.stacks),
            "slices": sum(len(s.centers) for s in plan.stacks), "step_mm": steps[0],
            "rows": plan.stacks[0].rows, "cols": plan.stacks[0].cols,
            "pixel_mm": plan.stacks[0].pixel_spacing[0]}


def _unique_ids(rng: np.random.Generator, n: int, per_row: int) -> np.ndarray:
    """(n, per_row) distinct integer ids in the real data's range (study and series ids)."""
    ids = rng.choice(np.arange(4_000_000, 4_290_000_000, dtype=np.int64), size=n * per_row, replace=False) \
        if n * per_row > 10**6 else _distinct(rng, n * per_row)
    return ids.reshape(n, per_row)


def _distinct(rng: np.random.Generator, count: int) -> np.ndarray:
    ids: set[int] = set()
    while len(ids) < count:
        ids.update(int(v) for v in rng.integers(4_000_000, 4_290_000_000, size=count - len(ids)))
    return np.array(sorted(ids, key=lambda v: rng.random()), dtype=np.int64)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=true to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_tables(out: Path, results: list[StudyResult], cfg: SynthConfig) -> None:
    train = [r for r in results if r.split == "train"]
    test = [r for r in results if r.split == "test"]
    label_frame = lambda rs: pd.DataFrame([r.labels for r in rs], columns=["study_id", *LABEL_COLUMNS])  # noqa: E731
    label_frame(train).to_csv(out / "train.csv", index=False)
    label_frame(test).to_csv(out / "test_labels.csv", index=False)
    coord_cols = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    pd.DataFrame([c for r in train for c in r.coordinates], columns=coord_cols).to_csv(
        out / "train_label_coordinates.csv", index=False)
    series_cols = ["study_id", "series_id", "series_description"]
    pd.DataFrame([s for r in train for s in r.series], columns=series_cols).to_csv(
        out / "train_series_descriptions.csv", index=False)
    pd.DataFrame([s for r in test for s in r.series], columns=series_cols).to_csv(
        out / "test_series_descriptions.csv", index=False)
    row_ids = [rid for r in test for rid in study_row_ids(r.study_id)]
    sample = pd.DataFrame({"row_id": row_ids, **{c: 1.0 / 3 for c in PROB_COLUMNS}})
    sample.to_csv(out / "sample_submission.csv", index=False)
    oracle = np.concatenate([label_model.oracle_probabilities(np.array([r.narrowing[c] for c in CONDITIONS]),
                                                              cfg.label_noise).reshape(-1, 3) for r in test]) \
        if test else np.zeros((0, 3))
    pd.DataFrame({"row_id": row_ids, **dict(zip(PROB_COLUMNS, oracle.T))}).to_csv(
        out / "oracle_submission.csv", index=False)
    truth = [{"study_id": r.study_id, "condition": c, "level": lv, "narrowing": r.narrowing[c][li],
              "true_grade": SEVERITIES[int(label_model.true_grade(r.narrowing[c][li]))], "split": r.split}
             for r in results for c in CONDITIONS for li, lv in enumerate(LEVELS)]
    pd.DataFrame(truth).to_csv(out / "truth.csv", index=False)


def _write_card(out: Path, results: list[StudyResult], cfg: SynthConfig, seconds: float) -> None:
    geometry = pd.DataFrame([g for r in results for g in r.geometry])
    card = {"generator": "spine.synth", "config": asdict(cfg), "seconds": round(seconds, 2),
            "studies": {"train": sum(r.split == "train" for r in results),
                        "test": sum(r.split == "test" for r in results)},
            "series": geometry.groupby("description").agg(
                slices_min=("slices", "min"), slices_max=("slices", "max"), step_min=("step_mm", "min"),
                step_max=("step_mm", "max"), multi_stack=("stacks", lambda s: int((s > 1).sum())),
                rows_min=("rows", "min"), rows_max=("rows", "max")).round(2).reset_index().to_dict("records")}
    (out / "dataset.json").write_text(json.dumps(card, indent=2, default=float))
