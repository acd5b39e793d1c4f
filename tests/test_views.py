"""Per-condition views: a known world point at the centre of every view of every series, the right side
mirrored onto the left with its labels, the views model, and the grading stage trained on views."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spine.constants import CONDITIONS, GROUPS, LEVELS
from spine.data.grading import RandomPointAugment, landmark_errors, point_table
from spine.data.transforms import rotation_matrix
from spine.data.views import ViewSet, ViewSpec, build_views, view_grid
from spine.data.volume import SeriesVolume
from spine.models import create_model

SAG, AX = "Sagittal T2/STIR", "Axial T2"


def dot_volume(point_lps, origin, spacing, shape, value=1000.0):
    """An LPS-aligned volume that is 1 everywhere and ``value`` in the voxel nearest to ``point_lps``; the
    volume and that voxel's exact world position."""
    array = np.ones(shape, np.float32)
    index = np.round((np.asarray(point_lps) - origin) / spacing).astype(int)
    array[tuple(index)] = value
    return SeriesVolume.from_array(array, origin, spacing, percentiles=(0.0, 100.0)), origin + index * np.asarray(spacing)


def view_set(size=(33, 33), slices=3, mm=(33.0, 33.0), slice_mm=3.0) -> ViewSet:
    spec = dict(size=size, slices=slices, mm=mm, slice_mm=slice_mm)
    return ViewSet({
        "spinal": (ViewSpec(SAG, "sagittal", "spinal", **spec), ViewSpec(AX, "axial", "spinal", **spec)),
        "foraminal": (ViewSpec("Sagittal T1", "sagittal", "foraminal", **spec),
                      ViewSpec(AX, "axial", "foraminal", **spec)),
        "subarticular": (ViewSpec(AX, "axial", "subarticular", **spec), ViewSpec(SAG, "sagittal", "subarticular", **spec)),
    })


@pytest.mark.parametrize("tilt", [(0.0, 0.0, 0.0), (8.0, -6.0, 12.0)])
@pytest.mark.parametrize("plane", ["sagittal", "axial"])
@pytest.mark.parametrize("mirror", [False, True])
def test_a_world_point_lands_at_the_centre_of_every_view_of_every_series(tilt, plane, mirror):
    point = np.array([12.3, -35.1, 96.7])  # LPS mm
    grids = [(np.array([-40.0, -120.0, 20.0]), np.array([3.5, 0.7, 0.7]), (24, 220, 260)),  # sagittal-like
             (np.array([-70.0, -110.0, 60.0]), np.array([0.8, 0.8, 3.0]), (180, 180, 40)),  # axial-like
             (np.array([-30.0, -80.0, 60.0]), np.array([1.0, 1.0, 1.0]), (60, 80, 60))]
    axes = rotation_matrix(tilt)
    spec = ViewSpec(SAG, plane, "spinal", size=(33, 33), mm=(33.0, 33.0), slices=5, slice_mm=3.5)
    for origin, spacing, shape in grids:
        volume, truth = dot_volume(point, origin, spacing, shape)
        view, _ = volume.sample(view_grid(truth, axes, spec, mirror))
        assert view.shape == (5, 33, 33)
        assert np.unravel_index(np.argmax(view), view.shape) == (2, 16, 16)


def test_view_orientation_head_up_anterior_left_and_radiological_axial():
    """Sagittal: rows run head -> feet, columns anterior -> posterior, slices right -> left; axial: rows
    anterior -> posterior, columns the patient's right -> left, slices feet -> head."""
    axes = np.eye(3)
    sag = view_grid([0.0, 0.0, 0.0], axes, ViewSpec(SAG, "sagittal", size=(3, 3), mm=(3.0, 3.0), slices=3,
                                                   slice_mm=1.0))
    ax = view_grid([0.0, 0.0, 0.0], axes, ViewSpec(AX, "axial", size=(3, 3), mm=(3.0, 3.0), slices=3, slice_mm=1.0))
    w = sag.index_to_world
    assert w([0, 0, 1])[2] > w([0, 2, 1])[2]  # row 0 is towards the head
    assert w([1, 1, 0])[1] < w([1, 1, 2])[1]  # column 0 is anterior
    assert w([0, 1, 1])[0] < w([2, 1, 1])[0]  # slice 0 is on the patient's right
    w = ax.index_to_world
    assert w([1, 0, 1])[1] < w([1, 2, 1])[1] and w([1, 1, 0])[0] < w([1, 1, 2])[0] and w([0, 1, 1])[2] < w([2, 1, 1])[2]


def test_mirrored_right_view_equals_the_left_view_of_the_mirrored_study():
    rng = np.random.default_rng(0)
    shape, spacing = (41, 50, 70), np.array([1.5, 1.2, 1.5])  # no coarser than the views: no pooling cells
    origin = np.array([-30.0, -40.0, 0.0])  # x from -30 to +30: the volume is symmetric about x = 0
    array = rng.random(shape).astype(np.float32) * 100 + 1
    volume = SeriesVolume.from_array(array, origin, spacing)
    mirrored = SeriesVolume.from_array(array[::-1].copy(), origin, spacing)  # the same study, x -> -x
    views = view_set(size=(16, 16), mm=(24.0, 24.0), slice_mm=2.5)
    points = np.full((len(CONDITIONS), len(LEVELS), 3), np.nan)
    for lv in range(len(LEVELS)):
        z = 90.0 - 18.0 * lv
        points[:, lv] = [[0, -3, z], [17, -6, z + 3], [-15, -5, z + 2], [8, -4, z], [-9, -5, z - 1]]
    flip = np.array([-1.0, 1.0, 1.0])
    swapped = points[[0, 2, 1, 4, 3]] * flip  # the mirrored study's points: left <-> right, x -> -x
    series = {s: volume for s in views.series}
    image, _ = build_views(series, points, views)
    image_m, _ = build_views({s: mirrored for s in views.series}, swapped, views)
    left, right = CONDITIONS.index("left_neural_foraminal_narrowing"), CONDITIONS.index("right_neural_foraminal_narrowing")
    np.testing.assert_allclose(image[:, right], image_m[:, left], atol=1e-4)
    sub_l, sub_r = CONDITIONS.index("left_subarticular_stenosis"), CONDITIONS.index("right_subarticular_stenosis")
    np.testing.assert_allclose(image[:, sub_r], image_m[:, sub_l], atol=1e-4)
    assert np.abs(image[:, right] - image[:, left]).max() > 0.3  # the two sides do differ


def test_missing_series_gives_empty_views_and_a_flag_and_missing_points_fall_back():
    array = np.random.default_rng(1).random((120, 120, 160)).astype(np.float32) + 1
    volume = SeriesVolume.from_array(array, np.array([-60.0, -60.0, -20.0]), np.ones(3))
    views = view_set(size=(8, 8), mm=(16.0, 16.0))
    points = np.full((len(CONDITIONS), len(LEVELS), 3), np.nan)
    points[0] = [[0.0, 0.0, 120.0 - 30.0 * lv] for lv in range(len(LEVELS))]  # only the canal points
    image, present = build_views({AX: volume, SAG: None}, points, views)
    assert image.shape == (5, 5, 2, 3, 8, 8)
    assert present.tolist() == [s == AX for s in views.series]
    spinal_sag = image[:, 0, 0]
    assert not spinal_sag.any() and image[:, 0, 1].any()  # no sagittal T2: zeros; axial read
    assert np.isfinite(image).all() and image[:, 3, 0].any()  # subarticular axial at the fallback offset
    with pytest.raises(ValueError):
        build_views({AX: volume}, np.full((5, 5, 3), np.nan), views)


def test_views_config_is_checked():
    spec = ViewSpec(SAG)
    with pytest.raises(ValueError):
        ViewSpec(SAG, plane="coronal")
    with pytest.raises(ValueError):
        ViewSet({"spinal": (spec,), "foraminal": (spec,)})
    with pytest.raises(ValueError):
        ViewSet({g: (spec,) if g != "spinal" else (ViewSpec(SAG, slices=5),) for g in GROUPS})
    cfg = {g: [{"series": SAG, "plane": "axial", "size": [8, 8], "mm": [10, 10]}] for g in GROUPS}
    assert ViewSet.from_config(cfg).shape == (3, 8, 8)


def test_point_errors_are_drawn_whole_from_the_landmark_run():
    import pandas as pd

    truth = pd.DataFrame([{"study_id": s, "condition": "Spinal Canal Stenosis", "level": "L1/L2",
                           "world_x": 0.0, "world_y": 0.0, "world_z": 10.0 * s} for s in (1, 2)])
    predicted = truth.assign(world_x=[1.0, 5.0])
    errors = landmark_errors(predicted, truth, [1, 2])
    assert errors.shape == (2, 5, 5, 3) and sorted(errors[:, 0, 0, 0]) == [1.0, 5.0]
    points = point_table(truth, [1])[0]
    augment = RandomPointAugment(errors, jitter_mm=0.0, rotate_deg=(0, 0, 0), scale=0.0)
    moved = [augment.sample(np.random.default_rng(seed), points).points(points)[0, 0, 0] for seed in range(20)]
    assert set(np.round(moved, 6)) == {1.0, 5.0}


@pytest.mark.parametrize("name", ["grading_views_small", "grading_views_medium", "grading_views"])
def test_views_models_forward_backward(name):
    model = create_model(name, view_shape=(2, 32, 32))
    out = model(torch.randn(2, 5, 2, 2, 32, 32), torch.tensor([0, 4]), torch.ones(2, 3))
    assert out.shape == (2, 5, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_views_model_shapes_and_left_right_share_weights():
    model = create_model("grading_views_tiny", view_shape=(3, 16, 16)).eval()
    views = torch.randn(4, 5, 2, 3, 16, 16)
    level = torch.tensor([0, 1, 2, 4])
    out = model(views, level, torch.ones(4, 3))
    assert out.shape == (4, 5, 3) and torch.isfinite(out).all()
    same = views.clone()
    same[:, 2] = same[:, 1]  # right foraminal views identical to the left ones: identical logits
    out = model(same, level, None)
    torch.testing.assert_close(out[:, 1], out[:, 2])
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, 2, 3, 8, 8), level[:2], None)


def test_grading_stage_trains_and_predicts_on_views(tiny_cache_dir, tiny_runs, tiny_dataset, tmp_path):
    import pandas as pd

    from spine.predict.__main__ import main as predict
    from spine.train.__main__ import main as train

    landmarks, _ = tiny_runs
    run = tmp_path / "views"
    small = "{series: 'Sagittal T2/STIR', plane: sagittal, centre: spinal, size: [16, 16], mm: [24, 24]}"
    assert train(["stage=grading", "model=grading_views_tiny", f"landmarks={landmarks}", f"cache_dir={tiny_cache_dir}",
                  f"run_dir={run}", "fold=all", "epochs=1", "batch_size=2", "num_workers=0", "max_steps_per_epoch=1",
                  "progress=false", "tensorboard=false",
                  *(f"stage.views.{g}=[{small},{small}]" for g in GROUPS)]) == 0
    model = json.loads((run / "fold0" / "model.json").read_text())
    assert model["name"] == "grading_views_tiny" and model["kwargs"]["view_shape"] == [3, 16, 16]
    trained = pd.read_csv(run / "submission.csv")
    assert len(trained) % 25 == 0 and len(trained) > 0 and np.isfinite(trained.iloc[:, 1:].to_numpy()).all()
    # spine-predict from DICOM builds the same views with the same builder: the same probabilities
    out = tmp_path / "submission.csv"
    assert predict([f"data_dir={tiny_dataset}", f"runs=[{landmarks},{run}]", f"out={out}", "progress=false"]) == 0
    predicted = pd.read_csv(out).set_index("row_id")
    log = pd.read_csv(tmp_path / "submission.log.csv")
    assert (log.answer == "model").all(), log
    assert len(predicted) == 25 * len(log)
    trained = trained.set_index("row_id")
    np.testing.assert_allclose(predicted.loc[trained.index].to_numpy(), trained.to_numpy(), atol=0.02)
