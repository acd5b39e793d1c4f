"""The synthetic study generator: layout, DICOM validity, labels that point at anatomy, determinism."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import make_synth

from spine.cli import compose
from spine.constants import (
    CONDITION_NAMES,
    CONDITION_SERIES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVELS,
    PROB_COLUMNS,
    SERIES_TYPES,
    SEVERITIES,
    condition_from_name,
    label_column,
    level_from_name,
    study_row_ids,
)
from spine.synth.anatomy import CANAL_CLOSE_MM, Spine
from spine.synth.config import SynthConfig
from spine.synth.generate import GENERATOR_VERSION


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
    assert set(train.drop(columns="study_id").stack().dropna().unique()) <= set(SEVERITIES)  # empty: unlabelled
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
    # Laterality: a left-sided point lies at larger world x (LPS: +x is the patient's left) than the canal. The
    # recesses are about 10 mm from the midline, and a canal point clicked on a neighbouring sagittal slice is
    # up to a slice step (4.5 mm) off it: hence the 1 mm margin.
    for row in coords.itertuples():
        condition, level = condition_from_name(row.condition), level_from_name(row.level)
        if condition == "spinal_canal_stenosis" or (row.study_id, level) not in spinal_x:
            continue
        ds = pydicom.dcmread(tiny_dataset / "train_images" / str(row.study_id) / str(row.series_id)
                             / f"{row.instance_number}.dcm", stop_before_pixels=True)
        dx = _world(ds, row.x, row.y)[0] - spinal_x[(row.study_id, level)][0]
        assert (dx > 1.0) if condition.startswith("left") else (dx < -1.0), (row, dx)


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


def _hashes(folder: Path, skip: tuple[str, ...] = ("dataset.json",)) -> dict[str, str]:
    """sha256 of every file's bytes, by relative path (dataset.json holds the run time)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path, tiny_dataset: Path):
    """Every file, DICOM headers (UIDs) included, is byte for byte the same for a seed, with 1 or 2 workers."""
    again = make_synth(tmp_path / "again", "seed=0", "workers=2")
    assert _hashes(again) == _hashes(tiny_dataset)
    card = json.loads((again / "dataset.json").read_text())
    assert card["generator_version"] == GENERATOR_VERSION == 3
    other = make_synth(tmp_path / "other", "seed=1", "n_train=1", "n_test=0")
    assert pd.read_csv(other / "train.csv").study_id.iloc[0] not in set(pd.read_csv(again / "train.csv").study_id)


def test_images_do_not_depend_on_the_label_noise(tmp_path: Path):
    """Exactness: the pixels are a function of the narrowing and of nuisance only. Another reading noise changes
    labels, never a byte of the images or of the geometry."""
    a = make_synth(tmp_path / "a", "seed=4", "n_train=2", "n_test=0", "label_noise=0.1")
    b = make_synth(tmp_path / "b", "seed=4", "n_train=2", "n_test=0", "label_noise=0.3")
    skip = ("dataset.json", "train.csv", "test_labels.csv", "oracle_submission.csv")
    ha, hb = _hashes(a, skip), _hashes(b, skip)
    assert ha == hb and any(k.endswith(".dcm") for k in ha)


# ---------------------------------------------------------------------------------- version 2 variations
def _plan(seed: int = 0, *overrides: str):
    """One study planned (no pixels) with the small preset and overrides."""
    from spine.synth.generate import plan_study, study_jobs

    cfg = compose("synth", ["preset=small", "out_dir=unused", "n_train=1", "n_test=0", f"seed={seed}", *overrides],
                  SynthConfig)
    job = study_jobs(cfg)[0]
    return plan_study(cfg, job[1], job[2], "train", np.random.default_rng(job[4]))


def _click_world(plan, row: dict) -> np.ndarray:
    spec = next(s for s in plan.series if s.series_id == row["series_id"])
    for stack, numbers in zip(spec.plan.stacks, spec.plan.instance_numbers):
        if row["instance_number"] in numbers:
            k = numbers.index(row["instance_number"])
            return (stack.image_position(k) + row["x"] * stack.pixel_spacing[1] * stack.row_dir
                    + row["y"] * stack.pixel_spacing[0] * stack.col_dir)
    raise AssertionError(row)


@pytest.mark.parametrize("n_lumbar", [4, 6])
def test_transitional_spine_is_labelled_from_the_sacrum(n_lumbar: int):
    """With 4 or 6 lumbar-type vertebrae, L5/S1 is the lowest mobile disc and L1/L2 the fifth one up: the label
    points sit there; counting from the ribs (the first rib-free vertebra as L1) would be wrong."""
    for seed in range(40):
        plan = _plan(seed, "transitional_rate=1.0", "click_noise_mm=0.0", "click_slice_rate=0.0")
        if plan.spine.n_lumbar == n_lumbar:
            break
    spine = plan.spine
    assert spine.n_lumbar == n_lumbar and plan.facts["n_lumbar"] == n_lumbar
    canal = {r["level"]: r for r in plan.coordinates if r["condition"] == "Spinal Canal Stenosis"}
    for li, level in enumerate(LEVEL_NAMES):
        t = spine.world_to_spine(_click_world(plan, canal[level]))[2]
        nearest = int(np.argmin(np.abs(spine.disc_t - t)))
        assert nearest == len(spine.disc_t) - 5 + li, (level, t)  # the last five discs, from the sacrum up
        assert abs(t - spine.disc_t[nearest]) < 3.0
    # nothing mobile below L5/S1: the sacrum (one body; a thin S1/S2 remnant may lie about 30 mm down)
    # continues; above it n_lumbar rib-free vertebrae
    sacrum = spine.spine_to_world(np.array([[0.0, 0.0, spine.disc_t[-1] - d] for d in (12.0, 18.0, 42.0)]))
    marrow = spine.render(sacrum, "Sagittal T1")
    disc = spine.render(spine.spine_to_world(np.array([[0.0, 0.0, spine.disc_t[-1]]])), "Sagittal T1")[0]
    assert marrow.min() > disc + 0.15  # marrow throughout (its texture varies it), no disc between
    rib_x = 29.0
    ribbed = []
    for k in range(1, len(spine.disc_t)):  # vertebra k between discs k-1 and k
        mid = (spine.disc_t[k - 1] + spine.disc_t[k]) / 2
        _, tissue = spine.render(spine.spine_to_world(np.array([[rib_x, 9.0, mid]])), "Sagittal T1", labels=True)
        ribbed.append(spine.tissue_labels[tissue[0]] == "rib")
    assert not any(ribbed[-n_lumbar:]) and all(ribbed[:-n_lumbar])


def test_scoliosis_bends_the_spine_sideways_and_tilts_the_discs():
    plan = _plan(1, "scoliosis_rate=1.0")
    spine, cobb = plan.spine, plan.facts["cobb_deg"]
    assert 4.0 <= cobb <= 15.0
    ts = np.linspace(spine.disc_t[-1] - 40, spine.disc_t[-6] + 60, 200)
    tangents = np.stack([spine.tangent(t) @ spine.rotation for t in ts])  # canonical frame
    lateral = np.degrees(np.arctan2(tangents[:, 0], tangents[:, 2]))
    assert lateral.max() - lateral.min() == pytest.approx(cobb, abs=1.0)  # Cobb angle: the tilt range
    centres = np.stack([spine.spine_to_world(np.array([0.0, 0.0, t])) for t in ts]) - spine.origin
    shift = (centres @ spine.rotation)[:, 0] / spine.scale
    assert np.abs(shift).max() > 3.0
    # the phantom follows: the canal (CSF, bright on T2) is where the bent centreline says
    for t in spine.labelled_t:
        _, inside = spine.render(spine.spine_to_world(np.array([[0.0, 27.0, t + 8.0]])), "Sagittal T2/STIR",
                                 labels=True)
        assert spine.tissue_labels[inside[0]] in ("csf", "cauda_equina")  # the thecal sac
    straight = _plan(1, "scoliosis_rate=0.0").spine
    assert straight.scoliosis[0] == 0.0 and plan.facts["cobb_deg"] > 0


def _sac_depth(spine, level: int = 3) -> float:
    """Depth (mm) of the CSF (1.0 on T2; disc 0.8 at most) at the midline of a labelled disc, along a."""
    a = np.linspace(10.0, 45.0, 701)
    t = spine.labelled_t[level]
    points = spine.spine_to_world(np.stack([np.zeros_like(a), a, np.full_like(a, t)], axis=-1))
    return float((spine.render(points, "Sagittal T2/STIR") > 0.9).sum() * (a[1] - a[0]))


def test_listhesis_and_the_mix_of_causes_change_the_anatomy_not_the_amount_of_narrowing():
    """Anterolisthesis shifts everything above the disc forward; disc bulge, ligamentum flavum and the slip share
    the canal narrowing, whose amount stays CANAL_CLOSE_MM * n (exactness: the image shows n, the mix is
    nuisance)."""
    base = dict(origin=np.zeros(3), rotation=np.eye(3), scale=1.0, radius=300.0,
                disc_t=36.0 * np.array([4, 3, 2, 1, 0, -1, -2.0]), disc_height=np.full(7, 9.0))
    narrowing = {c: np.full(5, 0.5) for c in CONDITIONS}
    plain = Spine(**base, narrowing=narrowing)
    slip = np.zeros(7)
    slip[-2] = 5.0  # L4 over L5
    slipped = Spine(**base, narrowing=narrowing, listhesis=slip, lf_share=np.full(7, 0.5))
    above = np.array([0.0, 0.0, slipped.disc_t[-2] + 20.0])
    below = np.array([0.0, 0.0, slipped.disc_t[-2] - 20.0])
    forward = plain.spine_to_world(above) - slipped.spine_to_world(above)  # + posterior in canonical y
    assert forward[1] == pytest.approx(5.0, abs=0.2)  # the vertebra above moved 5 mm anterior
    np.testing.assert_allclose(plain.spine_to_world(below), slipped.spine_to_world(below), atol=1e-9)
    front, back = slipped.canal_closure
    assert back[-2] > 0 and front[-2] > 0
    np.testing.assert_allclose(front + back, CANAL_CLOSE_MM * slipped.column_narrowing["spinal_canal_stenosis"])
    mixes = [Spine(**base, narrowing=narrowing, lf_share=np.full(7, share)) for share in (0.0, 0.6)]
    depths = [_sac_depth(s) for s in (plain, slipped, *mixes)]
    assert max(depths) - min(depths) < 0.6, depths  # the same amount of narrowing
    open_ = _sac_depth(Spine(**base, narrowing={c: np.zeros(5) for c in CONDITIONS}))
    assert open_ - depths[0] == pytest.approx(CANAL_CLOSE_MM * 0.5, abs=1.0)
    # the mix shows: the ligamentum flavum behind the sac is thicker where it does the narrowing
    behind = plain.spine_to_world(np.array([[0.0, 31.5, plain.labelled_t[3]]]))
    assert mixes[1].render(behind, "Sagittal T2/STIR")[0] < 0.5 < mixes[0].render(behind, "Sagittal T2/STIR")[0]


def test_axial_coverage_options_change_the_blocks():
    from spine.synth.acquisition import plan_axial

    plan = _plan(2)
    spine = plan.spine
    cfg = compose("synth", ["preset=small", "out_dir=unused"], SynthConfig)
    recess = [spine.label_point("left_subarticular_stenosis", li) for li in range(5)]

    def axial(*overrides, levels=None, partial=False, seed=0):
        c = compose("synth", ["preset=small", "out_dir=unused", *overrides], SynthConfig)
        return plan_axial(spine, np.random.default_rng(seed), c, levels, partial)

    block = axial("ax_per_disc_rate=0", "multi_stack_rate=0")
    assert block.coverage == "block" and len(block.stacks) == 1 and all(block.covers(p) for p in recess)
    per_disc = axial("ax_per_disc_rate=1")
    assert per_disc.coverage == "per-disc" and len(per_disc.stacks) == 5
    assert all(4 <= len(s.centers) <= 7 for s in per_disc.stacks) and all(per_disc.covers(p) for p in recess)
    normals = np.stack([s.normal for s in per_disc.stacks])
    assert not np.allclose(normals[0], normals[-1], atol=1e-3)  # each block angled along its own disc
    same = axial("ax_per_disc_rate=0", "multi_stack_rate=1", "ax_same_angle_rate=1")
    assert same.coverage == "same-angle" and len(same.stacks) >= 2
    assert all(np.allclose(s.normal, same.stacks[0].normal) for s in same.stacks)
    depth = np.sort(np.concatenate([s.centers @ same.stacks[0].normal for s in same.stacks]))
    assert np.diff(depth).max() > 1.5 * np.median(np.diff(depth))  # a gap between the blocks of one stack
    lower = axial("ax_per_disc_rate=0", "multi_stack_rate=0", levels=[2, 3, 4])
    assert [lower.covers(p) for p in recess] == [False, False, True, True, True]
    partial = [axial(levels=None, partial=True, seed=s) for s in range(12)]
    missed = [tuple(li for li in range(5) if not p.covers(recess[li])) for p in partial]
    assert set(missed) <= {(4,), (0,)} and (4,) in missed
    assert cfg.ax_partial_rate > 0


def test_uncovered_levels_have_no_subarticular_labels():
    plan = _plan(0, "ax_partial_rate=1.0", "extra_series_rates=[0,0]")
    levels = {int(v) for v in plan.facts["axial_coverage"].split(":")[1]}  # the one axial series' discs
    assert len(levels) == 4
    lost = LEVELS[({0, 1, 2, 3, 4} - levels).pop()]
    for side in ("left", "right"):
        assert plan.labels[label_column(f"{side}_subarticular_stenosis", lost)] is None
    assert plan.labels[label_column("spinal_canal_stenosis", lost)] is not None
    assert not [r for r in plan.coordinates if "Subarticular" in r["condition"]
                and r["level"] == LEVEL_NAMES[LEVELS.index(lost)]]


def test_sagittal_placement_moves_the_centre_over_levels_and_keeps_the_lumbar_spine():
    from spine.synth.acquisition import sagittal_required_points

    offsets = []
    for seed in range(40):
        plan = _plan(seed)
        for spec in plan.series:
            if not spec.description.startswith("Sagittal"):
                continue
            stack = spec.plan.stacks[0]
            k = len(stack.centers) // 2
            for point in sagittal_required_points(plan.spine):  # T12/L1 disc to S1: always in the image
                x, y, _ = stack.world_to_pixel(point, k)
                assert stack.contains(x, y), (seed, spec.description)
        offsets.append(plan.facts["sagittal_centre_mm"])
    spread = np.percentile(offsets, 90) - np.percentile(offsets, 10)
    assert spread > 2 * 36.0  # more than two disc levels
    centred = [_plan(s, "sag_placement_rate=0.0").facts["sagittal_centre_mm"] for s in range(10)]
    assert np.abs(centred).max() < 30.0


def test_label_points_have_click_noise_and_sometimes_the_neighbouring_slice():
    plans = [_plan(s, "click_slice_rate=0.5") for s in range(4)]
    exact = [_plan(s, "click_slice_rate=0.0", "click_noise_mm=0.0") for s in range(4)]
    errors, moved = [], 0
    for plan, ref in zip(plans, exact):
        truth = {(r["condition"], r["level"]): r for r in ref.coordinates}
        for row in plan.coordinates:
            r0 = truth[(row["condition"], row["level"])]
            moved += row["instance_number"] != r0["instance_number"]
            if row["instance_number"] == r0["instance_number"]:
                errors.append(np.linalg.norm(_click_world(plan, row) - _click_world(ref, r0)))
    assert 0.5 < np.median(errors) < 3.0 and moved > 10


def test_series_per_study_and_their_listing_rows(tmp_path: Path):
    """Four series (a second axial or a repeated sagittal, with its own series id and the same description) and
    two series (no Sagittal T1 or T2/STIR): listing rows, folders and label coordinates agree."""
    four = make_synth(tmp_path / "four", "n_train=3", "n_test=0", "extra_series_rates=[1.0,0.0]",
                      "extra_axial_share=0.5", "seed=3")
    two = make_synth(tmp_path / "two", "n_train=2", "n_test=0", "missing_sagittal_rate=1.0", "extra_series_rates=[0,0]",
                     "seed=3")
    for data, count in ((four, 4), (two, 2)):
        listing = pd.read_csv(data / "train_series_descriptions.csv")
        assert (listing.groupby("study_id").size() == count).all()
        assert not listing.series_id.duplicated().any()
        assert (listing.groupby("study_id").series_description.apply(lambda d: "Axial T2" in set(d))).all()
        for row in listing.itertuples():
            files = list((data / "train_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))
            assert files and pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID == str(row.series_id)
        coords = pd.read_csv(data / "train_label_coordinates.csv")
        assert set(coords.series_id) <= set(listing.series_id)
        studies = pd.read_csv(data / "studies.csv")
        assert (studies.n_series == count).all()
    listing = pd.read_csv(four / "train_series_descriptions.csv")
    repeated = listing.groupby(["study_id", "series_description"]).size()
    assert (repeated == 2).sum() == 3  # one description twice per study, different series ids
    both = pd.read_csv(two / "train_series_descriptions.csv").groupby("study_id").series_description.apply(set)
    assert all(len(d & {"Sagittal T1", "Sagittal T2/STIR"}) == 1 for d in both)


def test_appearance_varies_per_series_without_touching_the_stored_integers(tmp_path: Path):
    data = make_synth(tmp_path / "look", "n_train=3", "n_test=0", "rescale_rate=1.0",
                      "rescale_nonintegral_share=0.5", "ghosting_rate=1.0", "seed=2")
    listing = pd.read_csv(data / "train_series_descriptions.csv")
    slopes, maxima = [], []
    for row in listing.itertuples():
        for path in sorted((data / "train_images" / str(row.study_id) / str(row.series_id)).glob("*.dcm"))[:1]:
            ds = pydicom.dcmread(path)
            assert "RescaleSlope" in ds and float(ds.RescaleIntercept) == 0.0
            slopes.append(float(ds.RescaleSlope))
            maxima.append(int(ds.pixel_array.max()))
            assert ds.pixel_array.dtype == np.uint16
    assert 1.0 in slopes and any(s != round(s) for s in slopes)
    assert max(maxima) > 2 * min(maxima)  # vendors' scales differ
    card = json.loads((data / "dataset.json").read_text())
    assert card["variations"]["rescale_files"] == card["variations"]["files"]
    assert all(r["ghost"] == r["count"] for r in card["series"])


def test_a_four_series_study_preprocesses_and_predicts_25_rows(tiny_runs, tmp_path: Path):
    from spine.predict.__main__ import main as predict
    from spine.preprocess.config import PreprocessConfig
    from spine.preprocess.run import run

    data = make_synth(tmp_path / "data", "n_train=1", "n_test=2", "extra_series_rates=[1.0,0.0]", "seed=11")
    assert (pd.read_csv(data / "test_series_descriptions.csv").groupby("study_id").size() == 4).all()
    summary = run(compose("preprocess", [f"data_dir={data}", f"cache_dir={tmp_path / 'cache'}", "split=all",
                                         "workers=1", "progress=false"], PreprocessConfig))
    assert summary.exit_code == 0 and summary.n_errors == 0 and summary.n_series == 12
    assert summary.n_coordinates_unresolved == 0
    landmarks, grading = tiny_runs
    out = tmp_path / "sub" / "submission.csv"
    assert predict([f"data_dir={data}", f"runs=[{landmarks},{grading}]", f"out={out}", "device=cpu", "workers=1",
                    "progress=false"]) == 0
    sub = pd.read_csv(out)
    studies = pd.read_csv(data / "test_series_descriptions.csv").study_id.unique()
    assert len(sub) == 25 * len(studies) == 50
    assert set(sub.row_id) == {r for s in studies for r in study_row_ids(s)}
    np.testing.assert_allclose(sub[list(PROB_COLUMNS)].sum(axis=1), 1.0, atol=1e-6)
    log = pd.read_csv(tmp_path / "sub" / "submission.log.csv", keep_default_na=False)
    assert (log.status == "ok").all()


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


# ------------------------------------------------------------------------------------------- tissue truth
def test_every_series_has_its_tissue_truth_plane_by_plane(tiny_dataset: Path):
    """tissue/{study}/{series}.npz for every listed series: one plane per DICOM file (by InstanceNumber) of its
    size; the names in tissue/labels.json; and the truth agrees with the image (on T2, CSF is brighter than
    muscle in the same files)."""
    import json

    from spine.synth.anatomy import TISSUE_LABELS_V3 as TISSUE_LABELS

    names = json.loads((tiny_dataset / "tissue" / "labels.json").read_text())
    assert [names[str(i)] for i in range(len(names))] == list(TISSUE_LABELS)
    csf, muscle = TISSUE_LABELS.index("csf"), TISSUE_LABELS.index("muscle")
    for split in ("train", "test"):
        listing = pd.read_csv(tiny_dataset / f"{split}_series_descriptions.csv")
        for row in listing.itertuples():
            truth = np.load(tiny_dataset / "tissue" / str(row.study_id) / f"{row.series_id}.npz")
            labels, numbers = truth["labels"], truth["instance_number"]
            folder = tiny_dataset / f"{split}_images" / str(row.study_id) / str(row.series_id)
            assert sorted(numbers.tolist()) == sorted(int(p.stem) for p in folder.glob("*.dcm"))
            bright, dark = [], []
            for plane, number in zip(labels, numbers):
                pixels = pydicom.dcmread(folder / f"{number}.dcm").pixel_array
                plane = plane[:pixels.shape[0], :pixels.shape[1]]
                assert plane.shape == pixels.shape and plane.max() < len(TISSUE_LABELS)
                bright += pixels[plane == csf].tolist()
                dark += pixels[plane == muscle].tolist()
            if row.series_description == "Sagittal T2/STIR" and len(bright) > 50 and len(dark) > 50:
                assert np.median(bright) > np.median(dark), (row.study_id, row.series_id)
