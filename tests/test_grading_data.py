"""Per-level crops and the grading dataset: geometry (world point -> crop centre in every channel, left is
left), centres, augmentation twins, labels, the oversampling sampler."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spine.constants import CONDITIONS, LEVELS, SERIES_TYPES, label_column
from spine.data.crops import crop_grid, fill_centres, level_axes, level_centres, sample_crop
from spine.data.grading import (
    CONDITION_SWAP,
    GradingDataset,
    RandomCropAugment,
    WeightedEpochSampler,
    centre_table,
    label_table,
    study_weights,
)
from spine.data.inputs import CropInput
from spine.data.transforms import rotation_matrix
from spine.data.volume import SeriesVolume


def dot_volume(point_lps, origin, spacing, shape, value=1000.0) -> SeriesVolume:
    """A volume (LPS-aligned) that is 1 everywhere and ``value`` in the voxel nearest to ``point_lps``."""
    array = np.ones(shape, np.float32)
    index = np.round((np.asarray(point_lps) - origin) / spacing).astype(int)
    array[tuple(index)] = value
    true_point = np.asarray(origin) + index * np.asarray(spacing)
    return SeriesVolume.from_array(array, origin, spacing, percentiles=(0.0, 100.0)), true_point


@pytest.mark.parametrize("tilt", [(0.0, 0.0, 0.0), (12.0, -7.0, 5.0)])
def test_a_world_point_lands_at_the_crop_centre_in_every_channel(tilt):
    point = np.array([3.2, -41.7, 118.4])  # LPS mm
    # three "series" on different grids: sagittal-like (coarse x), axial-like (coarse z), isotropic
    grids = [(np.array([-40.0, -120.0, 20.0]), np.array([3.5, 0.7, 0.7]), (24, 220, 260)),
             (np.array([-70.0, -110.0, 60.0]), np.array([0.8, 0.8, 3.0]), (180, 180, 40)),
             (np.array([-30.0, -80.0, 90.0]), np.array([1.0, 1.0, 1.0]), (60, 80, 60))]
    volumes, truths = zip(*(dot_volume(point, *g) for g in grids))
    direction = rotation_matrix(tilt)
    for volume, truth in zip(volumes, truths):
        grid = crop_grid(truth, direction, size=(33, 33, 33), crop_mm=(33.0, 33.0, 33.0))
        image, present = sample_crop([volume, None], grid)
        assert present.tolist() == [True, False] and not image[1].any()
        peak = np.unravel_index(np.argmax(image[0]), image[0].shape)
        assert peak == (16, 16, 16), f"dot at {peak}, expected the centre"


def test_crop_sampling_reads_only_a_block_but_matches_trilinear_interpolation_of_the_whole_volume():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    array = rng.random((40, 90, 70)).astype(np.float32) * 100 + 1
    origin, spacing = np.array([-20.0, -50.0, 10.0]), np.array([2.0, 0.9, 1.1])
    volume = SeriesVolume.from_array(array, origin, spacing)
    grid = crop_grid([5.0, -10.0, 45.0], rotation_matrix((8, 4, -6)), size=(20, 24, 16), crop_mm=(30, 30, 20))
    low, high = volume.intensity_range()
    voxels = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1)
    index = np.moveaxis((grid.index_to_world(voxels) - origin) / spacing, -1, 0)  # volume index (i, j, k)
    whole = ndimage.map_coordinates((array - low) / (high - low), index, order=1, mode="nearest")
    values, covered = volume.sample(grid, antialias=False)
    assert covered.all()
    np.testing.assert_allclose(values, np.clip(whole, 0, None), atol=1e-4)
    far = crop_grid([900.0, 0.0, 0.0], size=(8, 8, 8), crop_mm=(8, 8, 8))
    values, covered = volume.sample(far)
    assert not values.any() and not covered.any()  # outside the volume: zeros, no error


def test_left_of_the_patient_is_the_high_end_of_crop_axis_i_and_a_mirror_swaps_the_labels():
    """World +x is the patient's left. A volume bright on the left half must give a crop bright at high i;
    mirrored (flip augmentation) it is bright at low i and the left/right labels trade places."""
    shape, origin, spacing = (80, 80, 200), np.array([-40.0, -40.0, 0.0]), np.ones(3)
    array = np.ones(shape, np.float32)
    array[41:] = 100.0  # x > 0: the patient's left
    cache = FakeCache({(1, 11, "Sagittal T1"): (array, origin, spacing)})
    centres = np.stack([np.array([0.0, 0.0, 180.0 - 36.0 * lv]) for lv in range(5)])[None]
    labels = np.zeros((1, 5, 5), np.int64)
    labels[0, :, CONDITIONS.index("left_neural_foraminal_narrowing")] = 2  # severe on the left only
    common = dict(cache=cache, study_ids=[1], labels=labels, centres=centres,
                  reader=CropInput(tuple(SERIES_TYPES), (16, 8, 8), (32.0, 16.0, 16.0)))
    item = GradingDataset(**common)[0]
    image = item["image"].numpy()
    assert image.shape == (5, 3, 16, 8, 8)
    assert item["present"].tolist() == [True, False, False] and not image[:, 1:].any()
    assert image[:, 0, 12:].mean() > image[:, 0, :4].mean() * 10  # left (bright) at high i
    assert not item["flip"] and (item["target"].numpy() == labels[0]).all()

    mirror = RandomCropAugment(jitter_mm=0.0, level_shift=0.0, rotate_deg=(0, 0, 0), scale=0.0, flip_lr=1.0)
    flipped = GradingDataset(augment=mirror, **common)[0]
    assert flipped["flip"]
    assert flipped["image"][:, 0, :4].mean() > flipped["image"][:, 0, 12:].mean() * 10
    target = flipped["target"].numpy()
    assert (target[:, CONDITIONS.index("right_neural_foraminal_narrowing")] == 2).all()
    assert (target[:, CONDITIONS.index("left_neural_foraminal_narrowing")] == 0).all()
    np.testing.assert_array_equal(target[:, CONDITION_SWAP], labels[0])


def test_level_centres_prefer_the_canal_then_left_right_midpoints():
    points = np.full((5, 5, 3), np.nan)
    points[0, 0] = [1.0, 2.0, 3.0]  # spinal at L1/L2
    points[1, 1], points[2, 1] = [10.0, 0.0, 0.0], [-10.0, 4.0, 0.0]  # foramina pair at L2/L3
    points[3, 2] = [7.0, 7.0, 7.0]  # a lone left subarticular point at L3/L4
    centres = level_centres(points)
    np.testing.assert_allclose(centres[0], [1, 2, 3])
    np.testing.assert_allclose(centres[1], [0, 2, 0])
    np.testing.assert_allclose(centres[2], [7, 7, 7])
    assert np.isnan(centres[3:]).all()


def test_fill_centres_interpolates_missing_levels_and_axes_follow_the_spine():
    centres = np.array([[0, 0, 140], [np.nan] * 3, [0, 10, 68], [0, 20, 32], [np.nan] * 3], dtype=float)
    filled = fill_centres(centres)
    np.testing.assert_allclose(filled[1], [0, 5, 104])
    assert np.isfinite(filled).all() and filled[4, 2] < filled[3, 2]
    with pytest.raises(ValueError):
        fill_centres(np.full((5, 3), np.nan))
    axes = level_axes(filled)
    for a in axes:
        np.testing.assert_allclose(a.T @ a, np.eye(3), atol=1e-9)
        assert np.linalg.det(a) > 0 and a[0, 0] > 0.99  # right-handed, i still the patient's left
    k = axes[2][:, 2]  # at L3/L4 the spine runs from (0, 20, 32) up to (0, 5, 104)
    np.testing.assert_allclose(k, np.array([0, -15, 72]) / np.hypot(15, 72), atol=1e-9)
    np.testing.assert_allclose(level_axes(filled, align=False), np.repeat(np.eye(3)[None], 5, 0))


def test_label_and_centre_tables_from_competition_files():
    labels = pd.DataFrame({"study_id": [7, 8]})
    for c in CONDITIONS:
        for lv in LEVELS:
            labels[label_column(c, lv)] = "Normal/Mild"
    labels.loc[0, label_column("spinal_canal_stenosis", "l4_l5")] = "Severe"
    labels.loc[1, label_column("left_subarticular_stenosis", "l1_l2")] = np.nan
    table = label_table(labels, [8, 7, 99])
    assert table.shape == (3, 5, 5)
    assert table[1, 3, 0] == 2 and table[0, 0, 3] == -1 and (table[2] == -1).all()
    assert (table[0][table[0] >= 0] == 0).all()
    points = pd.DataFrame({"study_id": [7, 7], "condition": ["Spinal Canal Stenosis"] * 2,
                           "level": ["L4/L5", "L4/L5"], "world_x": [1.0, 3.0], "world_y": [0.0, 0.0],
                           "world_z": [5.0, 5.0]})
    centres = centre_table(points, [7, 8])
    np.testing.assert_allclose(centres[0, 3], [2, 0, 5])
    assert np.isnan(centres[1]).all() and np.isnan(centres[0, :3]).all()


def test_oversampling_draws_studies_by_their_worst_grade_reproducibly():
    labels = np.zeros((3, 5, 5), np.int64)
    labels[1, 2, 0], labels[2, 0, 4] = 1, 2
    labels[0, 0, 0] = -1
    weights = study_weights(labels, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(weights, [1, 2, 4])
    sampler = WeightedEpochSampler(weights, num_samples=7000, seed=3)
    sampler.set_epoch(1)
    draws = np.bincount(list(sampler), minlength=3) / 7000
    np.testing.assert_allclose(draws, np.array([1, 2, 4]) / 7, atol=0.02)
    assert list(sampler) == list(sampler)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first  # a new draw each epoch
    shards = [list(WeightedEpochSampler(weights, 10, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5


def test_augmentation_twin_shifts_levels_and_jitters_centres():
    centres = np.stack([np.array([0.0, 0.0, 150.0 - 36 * lv]) for lv in range(5)])
    rng = np.random.default_rng(0)
    twin = RandomCropAugment(jitter_mm=2.0, level_shift=1.0, flip_lr=0.0).sample(rng)
    moved = twin.centres(centres)
    assert all(s in (-1, 1) for s in twin.level_shift)
    assert np.abs(moved - centres).max() > 20  # whole-level shifts
    again = RandomCropAugment(jitter_mm=2.0, level_shift=1.0, flip_lr=0.0).sample(np.random.default_rng(0))
    assert again == twin  # the twin is a pure function of the draw


class FakeCache:
    """The part of :class:`spine.cache.Cache` the dataset uses, over in-memory arrays."""

    def __init__(self, volumes: dict):
        self.volumes = {(s, r): v for (s, r, _), v in volumes.items()}
        self.series = pd.DataFrame([{"study_id": s, "series_id": r, "description": d, "status": "ok"}
                                    for (s, r, d) in volumes])

    def load_volume(self, study, series, percentiles=(1.0, 99.0)):
        array, origin, spacing = self.volumes[(study, series)]
        return SeriesVolume.from_array(array, origin, spacing, percentiles=tuple(percentiles))
