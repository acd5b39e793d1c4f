"""The synthetic study generator: layout, DICOM validity, labels that point at anatomy, determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from conftest import make_synth
from spine.constants import (CONDITION_NAMES, CONDITION_SERIES, CONDITIONS, LABEL_COLUMNS, LEVELS, PROB_COLUMNS,
                             SERIES_TYPES, SEVERITIES, condition_from_name, level_from_name, study_row_ids)
from spine.metric import score
from spine.baselines import class_prior_submission
from spine.synth import labels as label_model
from spine.synth.anatomy import Spine


def _world(header: pydicom.Dataset, x: float, y: float) -> np.ndarray:
    """World LPS mm of DICOM pixel (x = column, y = row): IPP + x * dcol * r + y * drow * c."""
    ipp = np.array(header.ImagePositionPatient, dtype=float)
    r, c = np.reshape(np.array(header.ImageOrientationPatient, dtype=float), (2, 3))
    drow, dcol = (float(v) for v in header.PixelSpacing)
    return ipp + x * dcol * r + y * drow * c


def test_layout_matches_the_competition(tiny_dataset: Path):
    d = tiny_dataset
    train = pd.read_csv(d / "train.csv")
    assert list(train.columns) == ["study_id", *LABEL_COLUMNS]
    assert set(train.drop(columns="study_id").stack().unique()) <= set(SEVERITIES)
    coords = pd.read_csv(d / "train_label_coordinates.csv")
    assert list(coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert set(coords.condition) <= set(CONDITION_NAMES)
    for split in ("train", "test"):
        series = pd.read_csv(d / f"{split}_series_descriptions.csv")
        assert list(series.columns) == ["study_id", "series_id", "series_description"]
        assert set(series.series_description) == set(SERIES_TYPES)
        for row in series.itertuples():
            files = list((d / f"{split}_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
            assert files, row
            numbers = sorted(int(f.stem) for f in files)
            assert numbers == list(range(1, len(files) + 1))  # {instance_number}.dcm
    test_studies = pd.read_csv(d / "test_series_descriptions.csv").study_id.unique()
    sample = pd.read_csv(d / "sample_submission.csv")
    assert list(sample.columns) == ["row_id", *PROB_COLUMNS]
    assert list(sample.row_id) == [r for s in test_studies for r in study_row_ids(s)]
    oracle = pd.read_csv(d / "oracle_submission.csv")
    assert list(oracle.row_id) == list(sample.row_id)
    assert np.allclose(oracle[list(PROB_COLUMNS)].sum(axis=1), 1.0)
    assert set(pd.read_csv(d / "test_labels.csv").study_id) == set(test_studies)


def test_every_file_reads_with_pydicom_and_simpleitk(tiny_dataset: Path):
    series = pd.read_csv(tiny_dataset / "train_series_descriptions.csv")
    for row in series.itertuples():
        folder = tiny_dataset / "train_images" / str(row.study_id) / str(row.series_id)
        for path in folder.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.pixel_array.dtype == np.uint16
            assert ds.StudyInstanceUID == str(row.study_id) and ds.SeriesInstanceUID == str(row.series_id)
        if row.series_description.startswith("Sagittal"):  # one stack: SimpleITK reads it as a volume
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
            image = reader.Execute()
            assert image.GetSize()[2] == len(list(folder.glob("*.dcm")))
            assert 3.0 <= image.GetSpacing()[2] <= 4.6  # the step from IPP, within the preset's range


def test_label_points_sit_on_their_structures(tiny_dataset: Path):
    """Each label point, mapped through its DICOM geometry, is bright where the grade is normal
    (CSF on T2 for the canal and recesses, fat on T1 for the foramina) and on the right side."""
    coords = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    series = pd.read_csv(tiny_dataset / "train_series_descriptions.csv").set_index("series_id")
    truth = pd.read_csv(tiny_dataset / "truth.csv").set_index(["study_id", "condition", "level"])
    checked = 0
    spinal_x = {}
    for row in coords.itertuples():
        condition, level = condition_from_name(row.condition), level_from_name(row.level)
        assert series.loc[row.series_id, "series_description"] == CONDITION_SERIES[condition]
        path = tiny_dataset / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
        ds = pydicom.dcmread(path)
        image = ds.pixel_array.astype(float)
        assert 0 <= row.x <= ds.Columns - 1 and 0 <= row.y <= ds.Rows - 1
        world = _world(ds, row.x, row.y)
        if condition == "spinal_canal_stenosis":
            spinal_x[(row.study_id, level)] = world
        if truth.loc[(row.study_id, condition, level), "narrowing"] < 0.2:
            j, i = int(round(row.y)), int(round(row.x))
            value = image[max(j - 1, 0):j + 2, max(i - 1, 0):i + 2].max()  # tiny images: 4 mm pixels
            assert value > 2.0 * np.median(image), (row, value)
            checked += 1
    assert checked > 20
    # Laterality: a left-sided point lies at larger world x (LPS: +x is the patient's left) than the canal.
    for row in coords.itertuples():
        condition, level = condition_from_name(row.condition), level_from_name(row.level)
        if condition == "spinal_canal_stenosis" or (row.study_id, level) not in spinal_x:
            continue
        ds = pydicom.dcmread(tiny_dataset / "train_images" / str(row.study_id) / str(row.series_id)
                             / f"{row.instance_number}.dcm", stop_before_pixels=True)
        dx = _world(ds, row.x, row.y)[0] - spinal_x[(row.study_id, level)][0]
        assert (dx > 5.0) if condition.startswith("left") else (dx < -5.0), (row, dx)


def _spine(narrowing: float) -> Spine:
    return Spine(origin=np.zeros(3), rotation=np.eye(3), scale=1.0, radius=300.0,
                 disc_t=36.0 * np.array([3, 2, 1, 0, -1, -2.0]), disc_height=np.full(6, 10.0),
                 narrowing={c: np.full(5, narrowing) for c in CONDITIONS})


@pytest.mark.parametrize("condition, sequence", [
    ("spinal_canal_stenosis", "Sagittal T2/STIR"),
    ("left_neural_foraminal_narrowing", "Sagittal T1"),
    ("right_subarticular_stenosis", "Axial T2"),
])
def test_grades_are_visible_where_radiologists_look(condition, sequence):
    """Narrowing darkens the labelled structure (less CSF / fat around the label point) on its series."""
    offsets = np.stack(np.meshgrid(*[np.linspace(-3, 3, 7)] * 3, indexing="ij"), -1).reshape(-1, 3)
    means = []
    for n in (0.0, 0.9):
        spine = _spine(n)
        point = spine.label_point(condition, 3)
        means.append(spine.render(point + offsets, sequence).mean())
    assert means[1] < 0.7 * means[0], means


def test_structures_of_the_other_side_do_not_change():
    """Left-sided narrowing leaves the right foramen as it was: the side matters."""
    spine_open, spine_left = _spine(0.0), _spine(0.0)
    spine_left.narrowing = dict(spine_left.narrowing, left_neural_foraminal_narrowing=np.full(5, 1.0))
    right = spine_open.label_point("right_neural_foraminal_narrowing", 3)
    left = spine_open.label_point("left_neural_foraminal_narrowing", 3)
    assert spine_left.render(right[None], "Sagittal T1") == pytest.approx(spine_open.render(right[None], "Sagittal T1"))
    assert spine_left.render(left[None], "Sagittal T1")[0] < 0.6 * spine_open.render(left[None], "Sagittal T1")[0]


def test_label_frequencies_are_close_to_the_real_data():
    rng = np.random.default_rng(1)
    per_condition = {c: [] for c in CONDITIONS}
    for _ in range(3000):
        narrowing = label_model.sample_narrowing(rng)
        for c in CONDITIONS:
            per_condition[c].append(label_model.read_label(narrowing[c], 0.1, rng))
    grades = np.stack([np.stack(v) for v in per_condition.values()])  # (condition, study, level)
    overall = np.bincount(grades.ravel(), minlength=3) / grades.size
    assert np.allclose(overall, [0.77, 0.16, 0.065], atol=0.025), overall
    severe_by_level = (grades == 2).mean(axis=(0, 1))
    assert severe_by_level[3:].min() > severe_by_level[:2].max()  # severe concentrated at L4/L5, L5/S1


def test_oracle_beats_the_class_prior_on_many_studies():
    """Labels drawn from the noise model: the oracle's expected score is far below the prior's."""
    rng = np.random.default_rng(2)
    rows, oracle = [], []
    for study in range(400):
        narrowing = label_model.sample_narrowing(rng)
        label = {"study_id": study}
        for c in CONDITIONS:
            grades = label_model.read_label(narrowing[c], 0.1, rng)
            label.update({f"{c}_{lv}": SEVERITIES[g] for lv, g in zip(LEVELS, grades)})
            oracle.append(label_model.oracle_probabilities(narrowing[c], 0.1))
        rows.append(label)
    labels = pd.DataFrame(rows)
    probs = np.concatenate(oracle).reshape(-1, 3)
    oracle_sub = pd.DataFrame({"row_id": [r for s in labels.study_id for r in study_row_ids(s)],
                               **dict(zip(PROB_COLUMNS, probs.T))})
    prior = class_prior_submission(labels, labels.study_id)
    oracle_score, prior_score = score(labels, oracle_sub)["score"], score(labels, prior)["score"]
    assert oracle_score < 0.6 * prior_score, (oracle_score, prior_score)


def test_oracle_probabilities_are_exact_under_the_noise_model():
    rng = np.random.default_rng(3)
    n = np.full(200_000, 0.42)
    observed = np.bincount(label_model.read_label(n, 0.1, rng), minlength=3) / n.size
    assert np.allclose(observed, label_model.oracle_probabilities(0.42, 0.1), atol=0.005)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "dataset.json"):
        h.update(path.relative_to(folder).as_posix().encode())
        data = path.read_bytes()
        if path.suffix == ".dcm":  # SOPInstanceUIDs are fresh per file: compare pixels and geometry
            ds = pydicom.dcmread(path)
            data = ds.pixel_array.tobytes() + str(ds.ImagePositionPatient).encode() + str(ds.InstanceNumber).encode()
        h.update(data)
    return h.hexdigest()


def test_same_seed_same_dataset_and_other_seed_differs(tmp_path: Path, tiny_dataset: Path):
    again = make_synth(tmp_path / "again", "seed=0", "workers=2")
    assert _digest(again) == _digest(tiny_dataset)
    other = make_synth(tmp_path / "other", "seed=1", "n_train=1", "n_test=0")
    assert pd.read_csv(other / "train.csv").study_id.iloc[0] not in set(pd.read_csv(again / "train.csv").study_id)


def test_cli_reports_bad_overrides_and_refuses_to_overwrite(tmp_path: Path):
    bad = subprocess.run([sys.executable, "-m", "spine.synth", "sede=1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "sede" in bad.stderr
    out = tmp_path / "d"
    ok = subprocess.run([sys.executable, "-m", "spine.synth", f"out_dir={out}", "preset=tiny", "n_train=1",
                         "n_test=1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run([sys.executable, "-m", "spine.synth", f"out_dir={out}", "preset=tiny"],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "overwrite=true" in again.stderr


def test_preview_writes_a_png(tiny_dataset: Path, tmp_path: Path):
    from spine.synth.preview import make_preview

    out = make_preview(tiny_dataset, None, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
