"""spine.preprocess.volume: series -> LPS-aligned patient volume, on hand-made series and real scanner files.

The hand-made series hold a linear function of the world position, which trilinear interpolation
reproduces exactly: wherever a stack covers a voxel from its interior, the volume must hold that function
at the voxel's world position, whatever the obliquity, the number of stacks or the slice positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spine.io.dicom import read_series
from spine.preprocess.volume import (FILL_VALUE, Grid, VolumeError, build_volume, make_volume, pixel_to_world,
                                     spacing_for, voxel_to_world, world_to_voxel)
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


def voxel_world(grid: Grid) -> np.ndarray:
    """World LPS of every voxel centre, [k, j, i, 3]."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_kji), indexing="ij")
    return grid.voxel_to_world(np.stack([i, j, k], axis=-1))


def stack_index(stack, world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous stack index of each point, and whether it lies in the stack's interior / its coverage."""
    idx = stack.world_to_index(world)
    n = np.array(stack.shape[::-1])
    interior = np.all((idx >= 1e-6) & (idx <= n - 1 - 1e-6), axis=-1)
    covered = np.all((idx >= -0.5 + 1e-6) & (idx <= n - 0.5 - 1e-6), axis=-1)
    outside = np.any((idx < -0.5 - 1e-6) | (idx > n - 0.5 + 1e-6), axis=-1)
    return interior, covered, outside


def check_linear_field(folder: Path, n_stacks: int, **options) -> tuple:
    """Build the volume of a hand-made series; assert it holds the field and the right coverage."""
    series = read_series(folder)
    assert len(series.stacks) == n_stacks
    volume = make_volume(series, GRID_SPACING, **options)
    values = sitk.GetArrayFromImage(volume.image)
    mask = sitk.GetArrayFromImage(volume.mask).astype(bool)
    assert volume.image.GetPixelID() == sitk.sitkFloat32 and volume.mask.GetPixelID() == sitk.sitkUInt8
    assert volume.image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    world = voxel_world(volume.grid)
    parts = [stack_index(s, world) for s in series.stacks]
    interior_all = np.all([p[0] | p[2] for p in parts], axis=0) & np.any([p[0] for p in parts], axis=0)
    assert interior_all.sum() > 100
    np.testing.assert_allclose(values[interior_all], field(world[interior_all]), atol=0.02)
    return volume, values, mask, world, parts


def test_regular_oblique_stack(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(8.0, -12.0, 5.0), (-20.0, 10.0, 30.0), 4.0 * np.arange(6))
    volume, values, mask, world, [(interior, covered, outside)] = check_linear_field(tmp_path, 1)
    assert mask[covered].all() and not mask[outside].any()  # half a voxel beyond the centres, SimpleITK's rule
    assert (values[~mask] == FILL_VALUE).all()
    assert not volume.notes
    # the grid spans the stack's voxel centres: every corner voxel centre is inside it
    corners = read_series(tmp_path).stacks[0].index_to_world(np.array([[0, 0, 0], [COLS - 1, ROWS - 1, 5]]))
    ijk = volume.grid.world_to_voxel(corners)
    assert (ijk >= -1e-6).all() and (ijk <= np.array(volume.grid.size) - 1 + 1e-6).all()


def test_angled_stacks_share_one_volume(tmp_path: Path) -> None:
    """Axial T2 as one angled block per disc: both placed by their own IPP/IOP, averaged where they overlap."""
    write_stack(tmp_path, rotation(-15.0, 0.0, 0.0), (-20.0, -10.0, 0.0), 4.0 * np.arange(5))
    write_stack(tmp_path, rotation(12.0, 3.0, 0.0), (-20.0, -10.0, 12.0), 4.0 * np.arange(4), first_instance=20)
    volume, values, mask, world, parts = check_linear_field(tmp_path, 2)
    covered_any = np.any([p[1] for p in parts], axis=0)
    outside_all = np.all([p[2] for p in parts], axis=0)
    assert mask[covered_any].all() and not mask[outside_all].any()
    both = parts[0][0] & parts[1][0]
    assert both.sum() > 0  # the blocks overlap, and agree there


def test_missing_slice_is_interpolated_from_true_positions(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(5.0, 10.0, -7.0), (0.0, 0.0, 0.0), [0.0, 4.0, 8.0, 16.0, 20.0])
    volume, *_ = check_linear_field(tmp_path, 1)
    assert "uneven steps" in volume.notes[0] and "true slice positions" in volume.notes[0]


def test_sheared_stack_is_resampled_from_true_positions(tmp_path: Path) -> None:
    """Gantry tilt: each slice shifted in-plane; an affine volume would put every slice in the wrong place."""
    write_stack(tmp_path, rotation(0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 3.0 * np.arange(6), shear=(0.0, 1.2))
    stack = read_series(tmp_path).stacks[0]
    assert stack.sheared
    volume, *_ = check_linear_field(tmp_path, 1)
    assert "sheared" in volume.notes[0]


def test_wide_gap_is_not_bridged(tmp_path: Path) -> None:
    """Two blocks 24 mm apart (6 steps): only half a step on either side of the gap is covered."""
    rot = rotation(0.0, 0.0, 0.0)  # n = +z
    write_stack(tmp_path, rot, (0.0, 0.0, 0.0), [0.0, 4.0, 8.0, 32.0, 36.0])
    series = read_series(tmp_path)
    volume = make_volume(series, (2.0, 2.0, 0.5))
    mask = sitk.GetArrayFromImage(volume.mask).astype(bool)
    values = sitk.GetArrayFromImage(volume.image)
    z = volume.grid.voxel_to_world(np.array([[0, 0, k] for k in range(volume.grid.size[2])]))[:, 2]
    inside_xy = mask[np.argmin(abs(z - 2.0))]  # a plane between slices 0 and 1: the stack's in-plane extent
    assert inside_xy.any()
    for zk, plane_mask, plane in zip(z, mask, values):
        if min(abs(zk - 10.0), abs(zk - 30.0)) < 1e-3:
            continue  # exactly on the edge of the covered band
        expect = not (10.0 < zk < 30.0)  # within 2 mm (half the 4 mm step) of a slice
        assert (plane_mask == (inside_xy & expect)).all(), zk
        if 8.0 < zk <= 10.0:  # held at the value of the slice at z = 8 (nearest), not interpolated
            world = voxel_world(volume.grid)[np.argmin(abs(z - zk))]
            world[..., 2] = 8.0
            np.testing.assert_allclose(plane[plane_mask], field(world)[plane_mask], atol=0.02)


def test_single_slice_series_is_refused_and_short_stacks_left_out(tmp_path: Path) -> None:
    write_stack(tmp_path / "one", rotation(0, 0, 0), (0, 0, 0), [0.0])
    with pytest.raises(VolumeError, match="single slice"):
        build_volume(read_series(tmp_path / "one"), GRID_SPACING)
    write_stack(tmp_path / "mixed", rotation(0, 0, 0), (0, 0, 0), 4.0 * np.arange(4))
    write_stack(tmp_path / "mixed", rotation(30, 0, 0), (0, 0, 50.0), [0.0], first_instance=10)
    volume = make_volume(read_series(tmp_path / "mixed"), GRID_SPACING)
    assert len(volume.stacks) == 1 and "left out 1 stack" in volume.notes[0]


SAGITTAL = np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)])  # r, c, n = r x c (LPS)


def same_volume(a, b) -> None:
    """Two volumes with the same grid, voxels and coverage."""
    assert a.grid.size == b.grid.size
    np.testing.assert_array_equal(a.grid.origin, b.grid.origin)
    np.testing.assert_array_equal(a.grid.spacing, b.grid.spacing)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a.mask), sitk.GetArrayViewFromImage(b.mask))


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
    spacing = (3.0, 0.8, 0.8)
    volume = make_volume(mixed, spacing, description="Sagittal T1")
    assert [s.n_slices for s in volume.stacks] == [5]
    assert volume.notes == ["left out 1 stack(s) of another orientation (axial 8 slices): the series is sagittal "
                            "(named by the description 'Sagittal T1')"]
    same_volume(volume, make_volume(read_series(tmp_path / "sagittal"), spacing))  # the grid does not grow
    # no description: the orientation of most slices; a description naming an orientation no stack has: the same
    for description, why in [(None, "the orientation of most slices"),
                             ("Coronal STIR", "the description 'Coronal STIR' names coronal, which no stack has")]:
        volume = make_volume(mixed, spacing, description=description)
        assert [s.n_slices for s in volume.stacks] == [8] and why in volume.notes[0], volume.notes
        assert "left out 1 stack(s) of another orientation (sagittal 5 slices): the series is axial" in volume.notes[0]
        same_volume(volume, make_volume(read_series(tmp_path / "axial"), spacing))


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
    alone = make_volume(read_series(tmp_path / "big"), GRID_SPACING)
    merged = make_volume(mixed, GRID_SPACING)
    assert merged.notes == ["1 smaller stack(s) overlapping a larger one of the same orientation: merged 6 of 6 "
                            f"slices of 9x8 px between the slices of 7 slices of {COLS}x{ROWS} px, resampled "
                            "in-plane onto its pixel grid"]
    (stack,) = merged.stacks
    assert stack.shape == (13, ROWS, COLS) and stack.is_regular  # every interleaved position is used
    np.testing.assert_allclose(stack.slice_positions - stack.slice_positions[0], 3.0 * np.arange(13), atol=1e-4)
    assert stack.instance_numbers == [n for k in range(6) for n in (1 + k, 30 + k)] + [7]
    assert alone.grid.spacing[0] == 6.0 and merged.grid.spacing[0] == 3.0  # x is the slice direction: 2x finer
    assert (merged.grid.size[1:], merged.grid.origin.tolist()) == (alone.grid.size[1:], alone.grid.origin.tolist())
    # the linear field everywhere inside, at its true world positions (both stacks write the same field)
    values = sitk.GetArrayFromImage(merged.image)
    world = voxel_world(merged.grid)
    interior, _, _ = stack_index(stack, world)
    assert interior.sum() > 1000
    np.testing.assert_allclose(values[interior], field(world[interior]), atol=0.02)
    masks = [sitk.GetArrayFromImage(v.mask).astype(bool) for v in (merged, alone)]  # [k, j, i], i along x
    assert masks[0][interior].all()
    np.testing.assert_array_equal(masks[0].any(axis=2), masks[1].any(axis=2))  # the same in-plane coverage
    # the small slices' own pixels at their depths, the big stack's beside their field of view and at its depths
    mixed.stacks[1].pixels += 1000.0
    offset = sitk.GetArrayFromImage(make_volume(mixed, GRID_SPACING).image) - values
    depth = -world[..., 0]  # mm along the sagittal normal (-x)
    y = world[..., 1]
    at_small = interior & (np.abs(depth % 6.0 - 3.0) < 1e-3)
    at_big = interior & (np.abs(depth % 6.0) < 1e-3)
    assert at_small.sum() > 100 and at_big.sum() > 100
    np.testing.assert_allclose(offset[at_small & (y < 36.0)], 1000.0, atol=1e-2)  # its last column: y = 37
    np.testing.assert_allclose(offset[at_small & (y > 37.0)], 0.0, atol=1e-2)
    np.testing.assert_allclose(offset[at_big], 0.0, atol=1e-2)
    # small slices at the depths of the big ones add nothing: left out, the big stack alone
    write_stack(tmp_path / "same", SAGITTAL, (0.0, 0.0, 0.0), 6.0 * np.arange(7), **big)
    write_stack(tmp_path / "same", SAGITTAL, (0.0, -3.0, 2.0), 6.0 * np.arange(6), **small)
    same = make_volume(read_series(tmp_path / "same"), GRID_SPACING)
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


def test_grid_larger_than_max_voxels_is_refused(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(0, 0, 0), (0, 0, 0), 4.0 * np.arange(4))
    with pytest.raises(VolumeError, match="max_voxels"):
        build_volume(read_series(tmp_path), (0.1, 0.1, 0.1), max_voxels=100)


def test_world_voxel_maps_agree_with_simpleitk(tmp_path: Path) -> None:
    write_stack(tmp_path, rotation(8.0, -12.0, 5.0), (-20.0, 10.0, 30.0), 4.0 * np.arange(6))
    series = read_series(tmp_path)
    image, _ = build_volume(series, GRID_SPACING)
    oblique = series.stacks[0].to_sitk()  # any direction, not only the cache's identity
    ijk = np.array([[0.0, 0.0, 0.0], [3.25, 7.5, 1.75], [10.0, 2.0, 4.0]])
    for img in (image, oblique):
        world = voxel_to_world(img, ijk)
        expected = [img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk]
        np.testing.assert_allclose(world, expected, atol=1e-6)
        np.testing.assert_allclose(world_to_voxel(img, world), ijk, atol=1e-6)
    np.testing.assert_allclose(world_to_voxel(Grid.of_image(image), voxel_to_world(image, ijk)), ijk, atol=1e-6)
    # the DICOM pixel frame: world = IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c, from the tags
    ds = pydicom.dcmread(tmp_path / "4.dcm")
    r, c = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    expected = np.array(ds.ImagePositionPatient, float) + 5.5 * float(ds.PixelSpacing[1]) * r \
        + 2.25 * float(ds.PixelSpacing[0]) * c
    np.testing.assert_allclose(pixel_to_world(series, 4, 5.5, 2.25), expected, atol=1e-4)


def test_spacing_defaults_per_series_type() -> None:
    assert spacing_for("Sagittal T2/STIR") == (3.0, 0.8, 0.8)
    assert spacing_for("Sagittal T1") == (3.0, 0.8, 0.8)
    assert spacing_for("Axial T2") == (0.8, 0.8, 3.0)
    assert spacing_for("Coronal STIR") == spacing_for(None) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------- real scanner series

QA_CASES: dict = json.loads((QA_DIR / "manifest.json").read_text()) if (QA_DIR / "manifest.json").is_file() else {}
QA_OK = sorted(k for k, v in QA_CASES.items() if v["status"] == "stack ok" and v["expected_LPS"]["shape_ijk"][2] > 1)


@pytest.mark.skipif(not QA_CASES, reason=f"real-scanner DICOM set not found at {QA_DIR}")
@pytest.mark.parametrize("case", QA_OK)
def test_real_series_volume_agrees_with_the_stack(case: str) -> None:
    """Every covered voxel centre, mapped to world and into the original stack, holds the stack's value there."""
    series = read_series(QA_DIR / QA_CASES[case]["dicom_dir"])
    stack = next(s for s in series.stacks if s.volume_index == 0)
    extent = np.ptp(stack.index_to_world(np.array(np.meshgrid(*[[0, n - 1] for n in stack.shape[::-1]]))
                                         .reshape(3, -1).T), axis=0)
    iso = max(1.37 * float(np.min(stack.spacing[:2])), float(np.prod(extent + 1) / 300_000) ** (1 / 3))
    spacing = np.full(3, iso)  # unrelated to the stack's own grid; at most about 300k voxels
    volume = make_volume(series, spacing)
    values = sitk.GetArrayFromImage(volume.image)
    mask = sitk.GetArrayFromImage(volume.mask).astype(bool)
    world = voxel_world(volume.grid)
    interior, covered, outside = stack_index(stack, world)
    assert mask[covered].all() and not mask[outside].any()
    idx = stack.world_to_index(world[mask])
    expected = ndimage.map_coordinates(stack.pixels, [idx[:, 2], idx[:, 1], idx[:, 0]], order=1, mode="nearest")
    scale = float(np.abs(stack.pixels).max())
    np.testing.assert_allclose(values[mask], expected, atol=1e-4 * scale)
    assert (values[~mask] == FILL_VALUE).all()
