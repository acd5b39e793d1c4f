"""spine.preprocess.volume: a series -> its kept acquired stacks (`SeriesVolume`), on hand-made series and real
scanner files; and the sampler drawing from them.

The hand-made series hold a linear function of the world position, which trilinear interpolation reproduces
exactly: wherever a stack covers a grid voxel from its interior, the sampled series must hold that function at
the voxel's world position, whatever the obliquity, the number of stacks or the slice positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from spine.cache import stack_record
from spine.data.grid import SamplingGrid
from spine.io.dicom import read_series
from spine.preprocess.coordinates import _stack_voxel
from spine.preprocess.volume import VolumeError, instance_geometry, make_volume, pixel_to_world, volume_from_dicom
from spine.synth.dicom_writer import SliceTags, write_slice

ROWS, COLS = 14, 18
PIXEL_SPACING = (2.0, 2.5)  # (row, column) mm
SLOPE = 0.01  # stored value * SLOPE = modality value: 0.01 precision on the field
GRID_SPACING = (1.7, 1.3, 2.1)  # deliberately unrelated to the stacks
QA_DIR = Path(__file__).resolve().parents[2] / "shared/data/dicom_qa"


def field(world: np.ndarray) -> np.ndarray:
    """The linear field written into the hand-made series (about 30..600)."""
    return 300.0 + 1.5 * world[..., 0] - 0.8 * world[..., 1] + 0.6 * world[..., 2]


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_stack(folder: Path, rot: np.ndarray, origin, positions, *, shear=(0.0, 0.0), first_instance=1,
                shape=(ROWS, COLS), pixel_spacing=PIXEL_SPACING) -> None:
    """One slice per position (mm along n from origin); slice k is shifted in-plane by k * shear (mm, along r, c).
    ``shape``: (rows, columns); ``pixel_spacing``: (row, column) mm."""
    r, c = rot[:, 0], rot[:, 1]
    n = np.cross(r, c)
    for k, s in enumerate(positions):
        ipp = np.asarray(origin, float) + s * n + k * (shear[0] * r + shear[1] * c)
        y, x = np.mgrid[0:shape[0], 0:shape[1]]
        world = ipp + x[..., None] * pixel_spacing[1] * r + y[..., None] * pixel_spacing[0] * c
        stored = np.rint(field(world) / SLOPE).astype(np.uint16)
        tags = SliceTags(study_id=1, series_id=2, instance_number=first_instance + k, image_position=tuple(ipp),
                         image_orientation=(*r, *c), pixel_spacing=pixel_spacing, rescale=(SLOPE, 0.0))
        write_slice(folder / f"{first_instance + k}.dcm", stored, tags)


def grid_around(volume, spacing=GRID_SPACING, margin: float = 4.0) -> SamplingGrid:
    """An axis-aligned grid over the series' voxel centres plus ``margin`` mm, at ``spacing`` (unrelated to the
    stacks)."""
    lo, hi = volume.bounds()
    spacing = np.asarray(spacing, dtype=np.float64)
    size = tuple(int(v) for v in np.floor((hi - lo + 2 * margin) / spacing + 1e-9) + 1)
    return SamplingGrid(lo - margin, np.eye(3), spacing, size)


def voxel_world(grid: SamplingGrid) -> np.ndarray:
    """World LPS of every grid voxel centre, [i, j, k, 3] (the order of the sampler's output)."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in grid.size), indexing="ij"), axis=-1)
    return grid.index_to_world(index)


def stack_index(stack, world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous stack index of each point, and whether it lies in the stack's interior / its coverage."""
    idx = stack.world_to_index(world)
    n = np.array(stack.shape[::-1])
    interior = np.all((idx >= 1e-6) & (idx <= n - 1 - 1e-6), axis=-1)
    covered = np.all((idx >= -0.5 + 1e-6) & (idx <= n - 0.5 - 1e-6), axis=-1)
    outside = np.any((idx < -0.5 - 1e-6) | (idx > n - 0.5 + 1e-6), axis=-1)
    return interior, covered, outside


def check_linear_field(folder: Path, n_stacks: int, **options) -> tuple:
    """Select the stacks of a hand-made series and sample them on an unrelated grid; assert the samples hold the
    field wherever every stack has the point in its interior or not at all."""
    series = read_series(folder)
    assert len(series.stacks) == n_stacks
    volume = make_volume(series, **options)
    grid = grid_around(volume)
    values, covered = volume.sample(grid, normalise=False, antialias=False)
    assert values.dtype == np.float32 and covered.dtype == bool and values.shape == covered.shape == grid.size
    world = voxel_world(grid)
    parts = [stack_index(s, world) for s in series.stacks]
    interior_all = np.all([p[0] | p[2] for p in parts], axis=0) & np.any([p[0] for p in parts], axis=0)
    assert interior_all.sum() > 100
    np.testing.assert_allclose(values[interior_all], field(world[interior_all]), atol=0.02)
    return volume, values, covered, world, parts


def test_regular_oblique_stack(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(8.0, -12.0, 5.0), (-20.0, 10.0, 30.0), 4.0 * np.arange(6))
    volume, values, covered, world, [(interior, inside, outside)] = check_linear_field(tmp_path, 1)
    assert covered[inside].all() and not covered[outside].any()  # half a voxel beyond the centres
    assert (values[~covered] == 0).all()
    assert not volume.notes and volume.source == "dicom" and len(volume.stacks) == 1
    # the stack is the acquired one, untouched: every slice at its true position, the stored values rescaled
    (stack,) = volume.stacks
    assert stack.shape == (6, ROWS, COLS) and stack.is_regular
    corners = stack.index_to_world(np.array([[0, 0, 0], [COLS - 1, ROWS - 1, 5]]))
    lo, hi = volume.bounds()
    assert (corners >= lo - 1e-9).all() and (corners <= hi + 1e-9).all()


def test_angled_stacks_share_one_volume(tmp_path: Path) -> None:
    """Axial T2 as one angled block per disc: both kept as acquired, averaged where they overlap when sampled."""
    write_stack(tmp_path, rotation(-15.0, 0.0, 0.0), (-20.0, -10.0, 0.0), 4.0 * np.arange(5))
    write_stack(tmp_path, rotation(12.0, 3.0, 0.0), (-20.0, -10.0, 12.0), 4.0 * np.arange(4), first_instance=20)
    volume, values, covered, world, parts = check_linear_field(tmp_path, 2)
    assert [s.n_slices for s in volume.stacks] == [5, 4] and not volume.notes
    covered_any = np.any([p[1] for p in parts], axis=0)
    outside_all = np.all([p[2] for p in parts], axis=0)
    assert covered[covered_any].all() and not covered[outside_all].any()
    both = parts[0][0] & parts[1][0]
    assert both.sum() > 0  # the blocks overlap, and agree there


def test_missing_slice_is_interpolated_from_true_positions(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(5.0, 10.0, -7.0), (0.0, 0.0, 0.0), [0.0, 4.0, 8.0, 16.0, 20.0])
    volume, *_ = check_linear_field(tmp_path, 1)
    assert "uneven steps" in volume.notes[0] and "true slice positions" in volume.notes[0]
    (stack,) = volume.stacks
    np.testing.assert_allclose(stack.slice_positions - stack.slice_positions[0], [0, 4, 8, 16, 20], atol=1e-4)


def test_sheared_stack_is_sampled_from_true_positions(tmp_path: Path) -> None:
    """Gantry tilt: each slice shifted in-plane; an affine volume would put every slice in the wrong place."""
    write_stack(tmp_path, rotation(0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 3.0 * np.arange(6), shear=(0.0, 1.2))
    stack = read_series(tmp_path).stacks[0]
    assert stack.sheared
    volume, *_ = check_linear_field(tmp_path, 1)
    assert "sheared" in volume.notes[0]
    np.testing.assert_array_equal(volume.stacks[0].image_positions_lps, stack.image_positions_lps)


def test_wide_gap_is_not_bridged(tmp_path: Path) -> None:
    """Two blocks 24 mm apart (6 steps): only half a step on either side of the gap is covered."""
    rot = rotation(0.0, 0.0, 0.0)  # n = +z
    write_stack(tmp_path, rot, (0.0, 0.0, 0.0), [0.0, 4.0, 8.0, 32.0, 36.0])
    volume = make_volume(read_series(tmp_path))
    grid = grid_around(volume, (2.0, 2.0, 0.5), margin=0.0)
    values, covered = volume.sample(grid, normalise=False, antialias=False)
    world = voxel_world(grid)
    z = world[0, 0, :, 2]
    inside_xy = covered[:, :, np.argmin(abs(z - 2.0))]  # a plane between slices 0 and 1: the in-plane extent
    assert inside_xy.any()
    for k, zk in enumerate(z):
        if min(abs(zk - 10.0), abs(zk - 30.0)) < 1e-3:
            continue  # exactly on the edge of the covered band
        expect = not (10.0 < zk < 30.0)  # within 2 mm (half the 4 mm step) of a slice
        assert (covered[:, :, k] == (inside_xy & expect)).all(), zk
        if 8.0 < zk <= 10.0:  # held at the value of the slice at z = 8 (nearest), not interpolated
            at = world[:, :, k].copy()
            at[..., 2] = 8.0
            plane = covered[:, :, k]
            np.testing.assert_allclose(values[:, :, k][plane], field(at)[plane], atol=0.02)


def test_single_slice_series_is_refused_and_short_stacks_left_out(tmp_path: Path) -> None:
    write_stack(tmp_path / "one", rotation(0, 0, 0), (0, 0, 0), [0.0])
    with pytest.raises(VolumeError, match="single slice"):
        make_volume(read_series(tmp_path / "one"))
    write_stack(tmp_path / "mixed", rotation(0, 0, 0), (0, 0, 0), 4.0 * np.arange(4))
    write_stack(tmp_path / "mixed", rotation(30, 0, 0), (0, 0, 50.0), [0.0], first_instance=10)
    volume = make_volume(read_series(tmp_path / "mixed"))
    assert len(volume.stacks) == 1 and "left out 1 stack" in volume.notes[0]


SAGITTAL = np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)])  # r, c, n = r x c (LPS)


def same_volume(a, b) -> None:
    """Two series with the same stacks: voxels, true slice positions, orientation, pixel spacing."""
    assert len(a.stacks) == len(b.stacks)
    for x, y in zip(a.stacks, b.stacks):
        np.testing.assert_array_equal(x.pixels, y.pixels)
        np.testing.assert_array_equal(x.image_positions_lps, y.image_positions_lps)
        np.testing.assert_array_equal(x.direction_lps, y.direction_lps)
        np.testing.assert_array_equal(x.spacing, y.spacing)
        assert x.instance_numbers == y.instance_numbers


def test_axial_slices_inside_a_sagittal_series_are_left_out(tmp_path: Path) -> None:
    """5 sagittal slices and 8 axial ones in one series: the description decides, else the majority of slices."""
    write_stack(tmp_path / "sagittal", SAGITTAL, (10.0, -20.0, 30.0), 4.0 * np.arange(5))
    write_stack(tmp_path / "mixed", SAGITTAL, (10.0, -20.0, 30.0), 4.0 * np.arange(5))
    write_stack(tmp_path / "mixed", rotation(0, 0, 0), (-30.0, -40.0, -60.0), 4.0 * np.arange(8),
                first_instance=20)
    write_stack(tmp_path / "axial", rotation(0, 0, 0), (-30.0, -40.0, -60.0), 4.0 * np.arange(8),
                first_instance=20)
    mixed = read_series(tmp_path / "mixed")
    assert len(mixed.stacks) == 2
    volume = make_volume(mixed, "Sagittal T1")
    assert [s.n_slices for s in volume.stacks] == [5] and volume.description == "Sagittal T1"
    assert volume.notes == ["left out 1 stack(s) of another orientation (axial 8 slices): the series is sagittal "
                            "(named by the description 'Sagittal T1')"]
    same_volume(volume, make_volume(read_series(tmp_path / "sagittal")))  # the bounds do not grow
    np.testing.assert_array_equal(volume.bounds(), make_volume(read_series(tmp_path / "sagittal")).bounds())
    # no description: the orientation of most slices; a description naming an orientation no stack has: the same
    for description, why in [(None, "the orientation of most slices"),
                             ("Coronal STIR", "the description 'Coronal STIR' names coronal, which no stack has")]:
        volume = make_volume(mixed, description)
        assert [s.n_slices for s in volume.stacks] == [8] and why in volume.notes[0], volume.notes
        assert "left out 1 stack(s) of another orientation (sagittal 5 slices): the series is axial" in volume.notes[0]
        same_volume(volume, make_volume(read_series(tmp_path / "axial")))


def test_smaller_stack_interleaved_with_a_larger_one_is_merged_into_it(tmp_path: Path) -> None:
    """Slices of two matrix sizes interleaved in one series (big ones at 0, 6, .., 36 mm, small ones at 3, .., 33
    mm): one stack sampling depth every 3 mm, the small slices' own pixels at their own world positions."""
    big = dict(shape=(ROWS, COLS), pixel_spacing=PIXEL_SPACING)
    small = dict(shape=(8, 9), pixel_spacing=(2.0 * PIXEL_SPACING[0], 2.0 * PIXEL_SPACING[1]), first_instance=30)
    write_stack(tmp_path / "big", SAGITTAL, (0.0, 0.0, 0.0), 6.0 * np.arange(7), **big)
    write_stack(tmp_path / "mixed", SAGITTAL, (0.0, 0.0, 0.0), 6.0 * np.arange(7), **big)
    write_stack(tmp_path / "mixed", SAGITTAL, (0.0, -3.0, 2.0), 3.0 + 6.0 * np.arange(6), **small)
    mixed = read_series(tmp_path / "mixed")
    assert [s.shape for s in mixed.stacks] == [(7, ROWS, COLS), (6, 8, 9)] and not mixed.skipped
    alone = make_volume(read_series(tmp_path / "big"))
    merged = make_volume(mixed)
    assert merged.notes == ["1 smaller stack(s) overlapping a larger one of the same orientation: merged 6 of 6 "
                            f"slices of 9x8 px between the slices of 7 slices of {COLS}x{ROWS} px, resampled "
                            "in-plane onto its pixel grid"]
    (stack,) = merged.stacks
    assert stack.shape == (13, ROWS, COLS) and stack.is_regular  # every interleaved position is used
    np.testing.assert_allclose(stack.slice_positions - stack.slice_positions[0], 3.0 * np.arange(13), atol=1e-4)
    assert stack.instance_numbers == [n for k in range(6) for n in (1 + k, 30 + k)] + [7]
    assert alone.stacks[0].spacing[2] == pytest.approx(6.0) and stack.spacing[2] == pytest.approx(3.0)
    np.testing.assert_array_equal(merged.bounds(), alone.bounds())  # the same slab and field of view
    # the linear field everywhere inside, at its true world positions (both stacks write the same field)
    grid = grid_around(merged, (3.0, *GRID_SPACING[1:]), margin=0.0)  # x planes at the slices' depths
    values, covered = merged.sample(grid, normalise=False, antialias=False)
    world = voxel_world(grid)
    interior, _, _ = stack_index(stack, world)
    assert interior.sum() > 1000
    np.testing.assert_allclose(values[interior], field(world[interior]), atol=0.02)
    _, covered_alone = alone.sample(grid, normalise=False, antialias=False)
    assert covered[interior].all()
    np.testing.assert_array_equal(covered.any(axis=0), covered_alone.any(axis=0))  # i is x, the slice normal
    # the small slices' own pixels at their depths, the big stack's beside their field of view and at its depths
    mixed.stacks[1].pixels += 1000.0
    offset = make_volume(mixed).sample(grid, normalise=False, antialias=False)[0] - values
    depth = -world[..., 0]  # mm along the sagittal normal (-x)
    y = world[..., 1]
    at_small = interior & (np.abs(depth % 6.0 - 3.0) < 1e-3)
    at_big = interior & (np.abs(depth % 6.0) < 1e-3)
    assert at_small.sum() > 100 and at_big.sum() > 100
    # the small slices reach y = 37 mm; the merged slices' pixels (every 2.5 mm along y) up to y = 35 hold them,
    # from y = 37.5 the big stack's values (between the two, a mix)
    assert (at_small & (y <= 35.0 + 1e-6)).sum() > 50 and (at_small & (y >= 37.5 - 1e-6)).sum() > 50
    np.testing.assert_allclose(offset[at_small & (y <= 35.0 + 1e-6)], 1000.0, atol=1e-2)
    np.testing.assert_allclose(offset[at_small & (y >= 37.5 - 1e-6)], 0.0, atol=1e-2)
    np.testing.assert_allclose(offset[at_big], 0.0, atol=1e-2)
    # small slices at the depths of the big ones add nothing: left out, the big stack alone
    write_stack(tmp_path / "same", SAGITTAL, (0.0, 0.0, 0.0), 6.0 * np.arange(7), **big)
    write_stack(tmp_path / "same", SAGITTAL, (0.0, -3.0, 2.0), 6.0 * np.arange(6), **small)
    same = make_volume(read_series(tmp_path / "same"))
    assert same.notes == ["1 smaller stack(s) overlapping a larger one of the same orientation: left out 6 slices "
                          f"of 9x8 px overlapping 7 slices of {COLS}x{ROWS} px (no depth it lacks)"]
    same_volume(same, alone)
    # the same two sizes as blocks one after the other along the normal, or at another angle: both kept
    write_stack(tmp_path / "blocks", SAGITTAL, (0.0, 0.0, 0.0), 6.0 * np.arange(7), **big)
    write_stack(tmp_path / "blocks", SAGITTAL, (0.0, 0.0, 0.0), 42.0 + 6.0 * np.arange(6), **small)
    write_stack(tmp_path / "angled", rotation(0, 0, 0), (0.0, 0.0, 0.0), 6.0 * np.arange(7), **big)
    write_stack(tmp_path / "angled", rotation(20, 0, 0), (0.0, 0.0, 6.0), 6.0 * np.arange(6), **small)
    for folder in ("blocks", "angled"):
        volume, *_ = check_linear_field(tmp_path / folder, 2)
        assert len(volume.stacks) == 2 and not volume.notes, (folder, volume.notes)


def test_a_label_point_on_a_merged_slice_is_projected_into_it(tmp_path: Path) -> None:
    """coordinates.csv's voxel of an instance merged onto a larger stack's pixel grid: its pixel projected into
    that slice (k = the slice, i and j where `DicomStack.world_to_index` puts the point); a point more than half
    a slice step off the slice has none."""
    write_stack(tmp_path / "mixed", SAGITTAL, (0.0, 0.0, 0.0), 6.0 * np.arange(7), shape=(ROWS, COLS),
                pixel_spacing=PIXEL_SPACING)
    write_stack(tmp_path / "mixed", SAGITTAL, (0.0, -3.0, 2.0), 3.0 + 6.0 * np.arange(6), shape=(8, 9),
                pixel_spacing=(2.0 * PIXEL_SPACING[0], 2.0 * PIXEL_SPACING[1]), first_instance=30)
    series = read_series(tmp_path / "mixed")
    (stack,) = make_volume(series).stacks
    record = stack_record(stack, "0.nii")
    k = stack.instance_numbers.index(31)
    geometry = instance_geometry(series)[31]  # the small slice's own pixel grid, not the merged one's
    world = geometry.pixel_to_world(4.0, 3.0)
    voxel = _stack_voxel(record, k, geometry, 4.0, 3.0, world)
    assert voxel[2] == k
    np.testing.assert_allclose(voxel, stack.world_to_index(world), atol=1e-6)
    np.testing.assert_allclose(stack.index_to_world(voxel), world, atol=1e-6)
    off = world + 2.0 * stack.direction_lps[:, 2]  # 2 mm off the slice, the step is 3 mm
    assert _stack_voxel(record, k, geometry, 4.0, 3.0, off) is None


def test_volume_from_dicom_is_make_volume_of_the_folder(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(-15.0, 0.0, 0.0), (-20.0, -10.0, 0.0), 4.0 * np.arange(5))
    write_stack(tmp_path, rotation(12.0, 3.0, 0.0), (-20.0, -10.0, 12.0), 4.0 * np.arange(4), first_instance=20)
    volume = volume_from_dicom(tmp_path, "Axial T2", min_slices=2, max_gap_factor=2.5, series_id=2)
    same_volume(volume, make_volume(read_series(tmp_path), "Axial T2"))
    assert (volume.series_id, volume.description, volume.max_gap_factor) == (2, "Axial T2", 2.5)
    with pytest.raises(VolumeError, match="no stack of at least 6 slices"):
        volume_from_dicom(tmp_path, "Axial T2", min_slices=6)


def test_stack_and_pixel_frames_agree_with_simpleitk_and_the_tags(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(8.0, -12.0, 5.0), (-20.0, 10.0, 30.0), 4.0 * np.arange(6))
    series = read_series(tmp_path)
    (stack,) = make_volume(series).stacks
    image = stack.to_sitk()  # any direction, the stack's own oblique one
    ijk = np.array([[0.0, 0.0, 0.0], [3.25, 7.5, 1.75], [10.0, 2.0, 4.0]])
    expected = [image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk]
    np.testing.assert_allclose(stack.index_to_world(ijk), expected, atol=1e-6)
    np.testing.assert_allclose(stack.world_to_index(stack.index_to_world(ijk)), ijk, atol=1e-9)
    # the DICOM pixel frame: world = IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c, from the tags
    ds = pydicom.dcmread(tmp_path / "4.dcm")
    r, c = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    expected = np.array(ds.ImagePositionPatient, float) + 5.5 * float(ds.PixelSpacing[1]) * r \
        + 2.25 * float(ds.PixelSpacing[0]) * c
    np.testing.assert_allclose(pixel_to_world(series, 4, 5.5, 2.25), expected, atol=1e-4)
    # DICOM pixel (x, y) of the instance that is slice k is stack voxel (x, y, k)
    table = instance_geometry(series)
    for k, number in enumerate(stack.instance_numbers):
        np.testing.assert_allclose(table[number].pixel_to_world(5.5, 2.25), stack.index_to_world([5.5, 2.25, k]),
                                   atol=1e-9)


# ------------------------------------------------------------------------------- real scanner series

QA_CASES: dict = json.loads((QA_DIR / "manifest.json").read_text()) if (QA_DIR / "manifest.json").is_file() else {}
QA_OK = sorted(k for k, v in QA_CASES.items() if v["status"] == "stack ok" and v["expected_LPS"]["shape_ijk"][2] > 1)


@pytest.mark.skipif(not QA_CASES, reason=f"real-scanner DICOM set not found at {QA_DIR}")
@pytest.mark.parametrize("case", QA_OK)
def test_real_series_sampled_agrees_with_the_stack(case: str) -> None:
    """Every covered voxel centre of an unrelated grid, mapped to world and into the original stack, holds the
    stack's value there (trilinear), and coverage is half a voxel beyond the stack's voxel centres."""
    series = read_series(QA_DIR / QA_CASES[case]["dicom_dir"])
    stack = next(s for s in series.stacks if s.volume_index == 0)
    volume = make_volume(series)
    assert len(volume.stacks) == 1 and volume.stacks[0] is stack
    lo, hi = volume.bounds()
    iso = max(1.37 * float(np.min(stack.spacing[:2])), float(np.prod(hi - lo + 1) / 300_000) ** (1 / 3))
    grid = grid_around(volume, np.full(3, iso))  # unrelated to the stack's own grid; about 300k voxels
    values, covered = volume.sample(grid, normalise=False, antialias=False)
    world = voxel_world(grid)
    _, inside, outside = stack_index(stack, world)
    assert covered[inside].all() and not covered[outside].any()
    idx = stack.world_to_index(world[covered])
    expected = ndimage.map_coordinates(np.asarray(stack.pixels, dtype=np.float64), [idx[:, 2], idx[:, 1], idx[:, 0]],
                                       order=1, mode="nearest")  # in float: stored integers interpolate too
    scale = float(np.abs(stack.pixels).max())
    np.testing.assert_allclose(values[covered], expected, atol=1e-4 * scale)
    assert (values[~covered] == 0).all()
