"""The one sampler (`SeriesVolume.sample`): exact on a stack's own grid, a known world point at the centre of
every crop and view of series of every geometry (oblique, feet-first, multi-stack, gantry-tilted, uneven),
coverage and gaps, pooling."""

from __future__ import annotations

import numpy as np
import pytest

from spine.data.crops import crop_grid
from spine.data.grid import SamplingGrid
from spine.data.transforms import rotation_matrix
from spine.data.views import ViewSpec, view_grid
from spine.data.volume import SeriesVolume
from spine.io.dicom import DicomStack


def _stack(shape_kji, origin, r, c, pixel_spacing, step, shear_mm=0.0, steps=None, dtype=np.int16, seed=0):
    """A stack of integer pixels: slices along n = r x c, ``step`` mm apart (or the listed ``steps``), each IPP
    moved ``shear_mm`` per slice along c (gantry tilt)."""
    r, c = np.asarray(r, dtype=np.float64), np.asarray(c, dtype=np.float64)
    n = np.cross(r, c)
    nk = shape_kji[0]
    depth = np.concatenate([[0.0], np.cumsum(steps)]) if steps is not None else np.arange(nk) * step
    ipps = np.asarray(origin, dtype=np.float64) + np.outer(depth, n) + np.outer(np.arange(nk) * shear_mm, c)
    pixels = np.random.default_rng(seed).integers(100, 200, shape_kji).astype(dtype)
    return DicomStack.from_slices(pixels, ipps, r, c, pixel_spacing)


OBLIQUE = rotation_matrix((0.0, 0.0, 17.0)) @ np.eye(3)
GEOMETRIES = {
    # sagittal, head first: i -> posterior, j -> feet, slices towards the patient's left
    "sagittal": [dict(shape_kji=(15, 90, 80), origin=[-25, -60, 60], r=[0, 1, 0], c=[0, 0, -1],
                      pixel_spacing=(0.7, 0.7), step=3.5)],
    "oblique axial": [dict(shape_kji=(12, 70, 70), origin=[-30, -40, 0], r=OBLIQUE[:, 0], c=OBLIQUE[:, 1] * np.cos(0.3)
                           + [0, 0, np.sin(0.3)], pixel_spacing=(0.8, 0.8), step=4.0)],
    # feet first: the row direction flips, so slices are sorted towards the feet (n = -z)
    "feet-first axial": [dict(shape_kji=(10, 64, 64), origin=[25, -30, 45], r=[-1, 0, 0], c=[0, 1, 0],
                              pixel_spacing=(0.9, 0.9), step=4.0)],
    "gantry-tilted": [dict(shape_kji=(14, 60, 60), origin=[-25, -30, 0], r=[1, 0, 0], c=[0, 1, 0],
                           pixel_spacing=(0.9, 0.9), step=3.0, shear_mm=0.8)],
    "uneven steps": [dict(shape_kji=(8, 60, 60), origin=[-25, -30, 8], r=[1, 0, 0], c=[0, 1, 0],
                          pixel_spacing=(0.9, 0.9), step=None, steps=[3, 3, 3.6, 3, 3, 4.2, 3])],
    "multi-stack axial": [dict(shape_kji=(6, 60, 60), origin=[-25, -30, -5], r=[1, 0, 0], c=[0, np.cos(0.25), np.sin(0.25)],
                               pixel_spacing=(0.9, 0.9), step=4.0),
                          dict(shape_kji=(6, 60, 60), origin=[-25, -30, 16], r=[1, 0, 0], c=[0, np.cos(-0.2), np.sin(-0.2)],
                               pixel_spacing=(0.9, 0.9), step=4.0, seed=1)],
}


def _dotted(name: str) -> tuple[SeriesVolume, np.ndarray]:
    """The geometry's series with every pixel 1 except one voxel (1000) of its first stack; and that voxel's
    exact world position (LPS mm)."""
    stacks = []
    for spec in GEOMETRIES[name]:
        stack = _stack(**spec)
        stack.pixels[...] = 1
        stacks.append(stack)
    first = stacks[0]
    voxel = np.array([first.shape[2] // 2 + 3, first.shape[1] // 2 - 2, first.shape[0] // 2])  # (i, j, k)
    first.pixels[voxel[2], voxel[1], voxel[0]] = 1000
    return SeriesVolume(stacks, percentiles=(0.0, 100.0)), first.index_to_world(voxel.astype(np.float64))


REGULAR = [name for name, specs in GEOMETRIES.items() if "steps" not in specs[0] and "shear_mm" not in specs[0]]


@pytest.mark.parametrize("name", REGULAR)
def test_a_grid_equal_to_a_stacks_own_returns_its_voxels_exactly(name):
    volume = SeriesVolume([_stack(**GEOMETRIES[name][0])])
    stack = volume.stacks[0]
    assert stack.is_regular
    grid = SamplingGrid(stack.origin_lps, stack.direction_lps, stack.spacing, stack.shape[::-1])
    for antialias in (False, True):
        values, covered = volume.sample(grid, normalise=False, antialias=antialias)
        assert covered.all()
        np.testing.assert_array_equal(values, stack.pixels.transpose(2, 1, 0).astype(np.float32))


@pytest.mark.parametrize("name", list(GEOMETRIES))
@pytest.mark.parametrize("tilt", [(0.0, 0.0, 0.0), (11.0, -6.0, 8.0)])
def test_a_known_world_point_lands_at_the_centre_of_every_crop_and_view(name, tilt):
    volume, point = _dotted(name)
    axes = rotation_matrix(tilt)
    crop = crop_grid(point, axes, size=(21, 21, 21), crop_mm=(10.5, 10.5, 10.5))  # 0.5 mm: no pooling
    values, covered = volume.sample(crop)
    assert covered[10, 10, 10]
    assert np.unravel_index(np.argmax(values), values.shape) == (10, 10, 10)
    for plane in ("sagittal", "axial"):
        spec = ViewSpec("Sagittal T1", plane, "spinal", size=(21, 21), mm=(10.5, 10.5), slices=3, slice_mm=0.5)
        for mirror in (False, True):
            view, _ = volume.sample(view_grid(point, axes, spec, mirror))
            assert np.unravel_index(np.argmax(view), view.shape) == (1, 10, 10), (plane, mirror)


def test_overlapping_stacks_are_averaged_and_uncovered_voxels_are_zero():
    a = _stack((4, 20, 20), [0, 0, 0], [1, 0, 0], [0, 1, 0], (1.0, 1.0), 1.0)
    b = _stack((4, 20, 20), [0, 0, 0], [1, 0, 0], [0, 1, 0], (1.0, 1.0), 1.0)
    a.pixels[...], b.pixels[...] = 100, 300
    grid = SamplingGrid(np.array([0.0, 0.0, 0.0]), np.eye(3), np.ones(3), (30, 20, 4))
    values, covered = SeriesVolume([a, b]).sample(grid, normalise=False)
    assert (values[:20][covered[:20]] == 200).all() and covered[:20].all()
    assert not covered[21:].any() and not values[21:].any()  # beyond half a voxel past the last column


def test_a_wide_slice_gap_is_not_bridged_but_its_edges_are_covered_by_the_nearest_slice():
    stack = _stack((4, 10, 10), [0, 0, 0], [1, 0, 0], [0, 1, 0], (1.0, 1.0), None, steps=[2.0, 12.0, 2.0])
    volume = SeriesVolume([stack], max_gap_factor=2.5)
    z = np.array([2.5, 2.8, 8.0, 13.2, 14.0])  # slices at z = 0, 2, 14, 16; median step 2
    grid = SamplingGrid(np.array([5.0, 5.0, 0.0]), np.eye(3), np.ones(3), (1, 1, 1))
    got = []
    for value in z:
        g = SamplingGrid(np.array([5.0, 5.0, value]), grid.direction, grid.spacing, (1, 1, 1))
        got.append(bool(volume.sample(g, normalise=False)[1][0, 0, 0]))
    assert got == [True, True, False, True, True]


def test_pooling_once_equals_pooling_on_the_fly():
    volume = SeriesVolume([_stack(**GEOMETRIES["sagittal"][0])])
    grid = SamplingGrid.centred(volume.centre, (8, 20, 20), (4.0, 4.0, 4.0))
    direct, covered = volume.sample(grid)
    pooled, covered_pooled = volume.pooled(4.0).sample(grid)
    assert covered.any()
    np.testing.assert_allclose(pooled[covered], direct[covered], atol=1e-5)
    assert volume.pooled(4.0).stacks[0].shape == (15, 90 // 5, 80 // 5)


def test_from_array_places_voxels_like_an_lps_grid():
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    volume = SeriesVolume.from_array(array, [10.0, -3.0, 7.0], [2.0, 1.5, 3.0])
    grid = SamplingGrid(np.array([10.0, -3.0, 7.0]), np.eye(3), np.array([2.0, 1.5, 3.0]), (4, 5, 6))
    values, covered = volume.sample(grid, normalise=False)
    assert covered.all()
    np.testing.assert_array_equal(values, array)
    lo, hi = volume.bounds()
    np.testing.assert_allclose(lo, [10.0, -3.0, 7.0])
    np.testing.assert_allclose(hi, [16.0, 3.0, 22.0])


def test_pooling_near_the_stack_end_does_not_depend_on_where_the_grid_lies():
    """The trailing voxels that fill no whole pooling cell are treated the same by a small grid at the edge, a
    large grid over much of the stack and the pooled copy where it covers them (80 columns / 3: two left over)."""
    volume = SeriesVolume([_stack((15, 85, 80), [-25, -60, 60], [0, 1, 0], [0, 0, -1], (0.7, 0.7), 3.5)])
    corner = volume.stacks[0].index_to_world(np.array([78.0, 40.0, 7.0]))  # among the last columns
    small = SamplingGrid.centred(corner, (3, 3, 3), (3.5, 2.1, 2.1), np.column_stack([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    large = SamplingGrid(small.origin - small.matrix @ np.array([1.0, 20.0, 20.0]), small.direction, small.spacing,
                         (5, 40, 40))
    at_small, _ = volume.sample(small)
    at_large, _ = volume.sample(large)
    np.testing.assert_allclose(at_large[1:4, 20:23, 20:23], at_small, atol=1e-6)
    pooled, covered = volume.pooled((3.5, 2.1, 2.1)).sample(small)  # spacing along world x, y, z
    assert covered.any() and not covered.all()  # the copy keeps whole cells only: the last columns are gone
    np.testing.assert_allclose(pooled[covered], at_small[covered], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_robust_range_of_stored_integers_is_numpys_percentile(dtype):
    """The integer path (counts instead of a partial sort) gives np.percentile of the same subsample to the bit."""
    from spine.data.volume import robust_range

    rng = np.random.default_rng(7)
    for size, high, percentiles in (((3, 50, 70), 900, (1, 99)), ((40, 200, 180), 4000, (0.5, 99.5)),
                                    ((7, 33, 41), 30, (2.5, 97.5))):
        arrays = [rng.integers(-5 if dtype == np.int16 else 0, high, size).astype(dtype) for _ in range(2)]
        total = sum(a.size for a in arrays)
        step = max(1, total // 1_000_000)
        values = np.concatenate([a.reshape(-1)[::step].astype(np.float32) for a in arrays])
        values = values[values > 0]
        expected = np.percentile(values[:: max(1, values.size // 200_000)], percentiles)
        assert robust_range(arrays, percentiles) == (float(expected[0]), float(expected[1]))
