"""The landmark stage's data and evaluation: sampling grid, augmentation twins, left/right swap, metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spine.constants import CONDITIONS
from spine.data.grid import SamplingGrid
from spine.data.landmarks import LandmarkDataset, point_names
from spine.data.transforms import GridAffine, RandomGridAffine, lr_swap_permutation
from spine.data.volume import SeriesVolume
from spine.evaluate import landmark_metrics, truth_frame

SERIES = ["Sagittal T2/STIR", "Sagittal T1"]
GRID, SPACING = (16, 40, 40), (6.0, 7.0, 7.0)


@pytest.fixture(scope="module")
def cache(tiny_cache_dir):
    from spine.cache import Cache

    return Cache.open(tiny_cache_dir)


def _dataset(cache, **kwargs) -> LandmarkDataset:
    ids = sorted(int(s) for s in cache.folds.study_id)
    return LandmarkDataset(cache, ids, SERIES, list(CONDITIONS), GRID, SPACING, **kwargs)


def test_grid_affine_moves_image_and_points_together():
    """A blob drawn at a world point is sampled where grid.world_to_index puts the point, after any twin."""
    point = np.array([4.0, -10.0, 22.0])
    spacing, shape = np.array([2.0, 2.0, 2.0]), (60, 60, 60)
    origin = point - spacing * 27.3
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1) * spacing + origin
    blob = np.exp(-np.sum((ijk - point) ** 2, -1) / (2 * 4.0**2)).astype(np.float32)
    image = SeriesVolume.from_array(blob, origin, spacing)
    base = SamplingGrid.centred(point + [3, -5, 8], (20, 24, 28), (3.0, 3.0, 3.0))
    for twin in (GridAffine(), GridAffine((12.0, -7.0, 5.0), 1.1, (2.0, -4.0, 6.0), flip_lr=True),
                 RandomGridAffine(flip_lr=0.5).sample(np.random.default_rng(3))):
        grid = twin(base)
        sampled, _ = image.sample(grid, normalise=False)
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1)
        centroid = (idx * sampled[..., None]).sum((0, 1, 2)) / sampled.sum()
        assert np.allclose(centroid, grid.world_to_index(point), atol=0.25)
        assert np.allclose(grid.index_to_world(grid.world_to_index(point)), point)


def test_lr_swap_permutation_pairs_left_and_right_at_the_same_level():
    names = point_names(CONDITIONS)
    perm = lr_swap_permutation(names)
    for k, (condition, level) in enumerate(names):
        other = names[perm[k]]
        assert other[1] == level
        assert other[0] == condition.replace("left", "@").replace("right", "left").replace("@", "right")
    with pytest.raises(ValueError, match="twin"):
        lr_swap_permutation([("left_subarticular_stenosis", "l1_l2")])


def test_item_geometry_matches_the_label_points(cache):
    ds = _dataset(cache)
    item = ds[0]
    assert item["image"].shape == (2, *GRID) and item["image"].dtype == torch.float32
    assert torch.isfinite(item["image"]).all() and item["image"].min() >= 0
    world, target = item["world"].numpy(), item["target"].numpy().astype(np.float64)
    labelled = np.isfinite(world).all(-1)
    assert labelled.sum() >= 20 and item["mask"].numpy().sum() == labelled.sum()
    back = target @ item["grid_matrix"].numpy().T + item["grid_origin"].numpy()
    assert np.allclose(back[labelled], world[labelled], atol=1e-3)
    # the truth is the mean of coordinates.csv rows per study/condition/level
    truth = truth_frame(cache.coordinates)
    row = truth[(truth.study_id == ds.study_ids[0]) & (truth.condition == "Spinal Canal Stenosis")
                & (truth.level == "L3/L4")]
    if len(row):
        assert np.allclose(world[2], row[["true_x", "true_y", "true_z"]].to_numpy()[0])


def test_flip_mirrors_the_image_and_swaps_left_and_right_points(cache):
    plain = _dataset(cache)
    flipped = _dataset(cache, geometry=RandomGridAffine((0, 0, 0), 0.0, (0, 0, 0), flip_lr=1.0))
    a, b = plain[0], flipped[(0, 0)]
    assert bool(b["flip"]) and not bool(a["flip"])
    assert torch.allclose(b["image"], a["image"].flip(1), atol=1e-5)
    perm = lr_swap_permutation(plain.names)
    names = plain.names
    k_left = names.index(("left_neural_foraminal_narrowing", "l4_l5"))
    k_right = names.index(("right_neural_foraminal_narrowing", "l4_l5"))
    assert perm[k_left] == k_right
    # channel "left" of the mirrored item is the patient's right foramen, drawn where a left one would be
    if a["mask"][k_right]:
        assert np.allclose(b["world"][k_left], a["world"][k_right])
        x_size = GRID[0] - 1
        assert np.allclose(b["target"][k_left, 0], x_size - a["target"][k_right, 0], atol=1e-3)
        assert np.allclose(b["target"][k_left, 1:], a["target"][k_right, 1:], atol=1e-3)
    # patient's left foramina lie at larger x (LPS +x = left) than the right ones on an unmirrored grid
    left = [k for k, (c, _) in enumerate(names) if c == "left_neural_foraminal_narrowing"]
    right = [perm[k] for k in left]
    ok = a["mask"][left] & a["mask"][right]
    assert (a["target"][left][ok, 0] > a["target"][right][ok, 0]).all()
    assert (b["target"][left][ok, 0] > b["target"][right][ok, 0]).all()  # the model sees the same layout


def test_augmented_items_are_reproducible_per_epoch_and_index(cache):
    from spine.data.transforms import IntensityAugment

    ds = _dataset(cache, geometry=RandomGridAffine(flip_lr=0.5), intensity=IntensityAugment(0.3, 0.3, 0.03), seed=7)
    a, b, c = ds[(1, 2)], ds[(1, 2)], ds[(2, 2)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    assert not torch.equal(a["image"], c["image"])


def test_stage_decode_returns_world_points_in_patient_left_right(cache, tmp_path):
    """Heatmaps peaked at the targets decode to the true world points, also for mirrored items."""
    from spine.losses import gaussian_targets
    from spine.train.config import load_config
    from spine.train.landmarks import LandmarkStage

    cfg = load_config([f"stage.grid.size=[{GRID[0]},{GRID[1]},{GRID[2]}]",
                       f"stage.grid.spacing_mm=[{SPACING[0]},{SPACING[1]},{SPACING[2]}]"])
    stage = LandmarkStage(cfg, cache)
    flipped = _dataset(cache, geometry=RandomGridAffine((4, 3, 2), 0.05, (2, 2, 2), flip_lr=1.0))
    items = [_dataset(cache)[0], flipped[(1, 0)]]  # keys are (epoch, index)
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    cells = (GRID[0] // 2, GRID[1] // 4, GRID[2] // 4)
    target = batch["target"].nan_to_num(GRID[1] / 2)
    logits = gaussian_targets(target, cells, GRID, (1.0, 2.0, 2.0)).clamp_min(1e-30).log()
    world = stage.decode(logits, batch)
    true = items[0]["world"].numpy()
    labelled = np.isfinite(true).all(-1)
    for b in range(2):
        err = np.linalg.norm(world[b][labelled] - true[labelled], axis=-1)
        assert np.median(err) < 2.0  # decoding only loses what the coarse cells cannot carry
    rows = stage.predict(logits, batch)
    assert len(rows) == 2 * len(stage.names) and set(rows[0]) >= {"study_id", "condition", "level", "world_x"}


def test_metrics_perfect_shifted_and_missing():
    rng = np.random.default_rng(0)
    rows = []
    for study in (1, 2):
        for condition in ("Spinal Canal Stenosis", "Left Neural Foraminal Narrowing"):
            for li, level in enumerate(["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"]):
                xyz = np.array([0.0, 0.0, -35.0 * li]) + rng.normal(0, 1, 3)
                rows.append({"study_id": study, "condition": condition, "level": level,
                             "world_x": xyz[0], "world_y": xyz[1], "world_z": xyz[2]})
    coords = pd.DataFrame(rows)
    truth = truth_frame(coords)
    perfect = landmark_metrics(coords, truth)
    assert perfect["median_mm"] == 0 and perfect["level_acc"] == 1 and perfect["within_5mm"] == 1
    shifted = coords.assign(world_z=coords.world_z - 35.0)  # every point one level too low
    bad = landmark_metrics(shifted, truth)
    assert bad["level_acc"] <= 0.2 and bad["median_mm"] > 30  # only L5/S1 stays nearest its own level
    near = coords.assign(world_x=coords.world_x + 6.0)
    m = landmark_metrics(near, truth)
    assert m["level_acc"] == 1 and m["within_5mm"] == 0 and m["within_10mm"] == 1
    assert abs(m["median_mm/l4_l5"] - 6.0) < 1e-9 and "median_mm/spinal" in m
    missing = landmark_metrics(coords.iloc[3:], truth)  # unpredicted points are not scored
    assert missing["n_points"] == len(coords) - 3
