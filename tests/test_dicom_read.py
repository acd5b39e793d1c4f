"""spine.io.dicom.read_series on small series written with our own DICOM writer (hand-made and broken)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from spine.io.dicom import DicomStack, IrregularStackError, SeriesReadError, read_series
from spine.synth.dicom_writer import SliceTags, write_slice

ROWS, COLS = 12, 10  # non-square on purpose: rows (j) and columns (i) must not be swapped
ROW_SPACING, COL_SPACING = 0.8, 0.7  # PixelSpacing = (row spacing, column spacing)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation matrix (3, 3) from angles in degrees about x, then y, then z."""
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _slice_pixels(k: int) -> np.ndarray:
    """Stored values of slice k: encode the slice and the pixel so that any mix-up shows."""
    return (1000 * (k + 1) + np.arange(ROWS * COLS).reshape(ROWS, COLS)).astype(np.uint16)


def _write_stack(folder: Path, rotation: np.ndarray, origin, positions_mm, *, names=None,
                 instance_numbers=None, series_id: int = 7, first_value: int = 0, **tag_kwargs) -> list[Path]:
    """Write one slice per entry of positions_mm (mm along n = r x c from origin, LPS).

    The slice written at positions_mm[k] holds _slice_pixels(first_value + k). Returns the file paths.
    """
    r, c = rotation[:, 0], rotation[:, 1]
    n = np.cross(r, c)
    paths = []
    for k, s in enumerate(positions_mm):
        name = names[k] if names is not None else f"{first_value + k:03d}.dcm"
        ipp = np.asarray(origin, dtype=float) + s * n
        tags = SliceTags(
            study_id=1, series_id=series_id,
            instance_number=instance_numbers[k] if instance_numbers is not None else first_value + k + 1,
            image_position=tuple(ipp), image_orientation=(*r, *c),
            pixel_spacing=(ROW_SPACING, COL_SPACING), **tag_kwargs,
        )
        write_slice(folder / name, _slice_pixels(first_value + k), tags)
        paths.append(folder / name)
    return paths


OBLIQUE = _rotation(12.0, -20.0, 7.0)
ORIGIN = (-40.0, 25.5, 110.25)


def _assert_oblique_geometry(stack, n_slices: int, step: float) -> None:
    assert stack.shape == (n_slices, ROWS, COLS)
    r, c = OBLIQUE[:, 0], OBLIQUE[:, 1]
    np.testing.assert_allclose(stack.direction_lps, np.column_stack([r, c, np.cross(r, c)]), atol=1e-6)
    np.testing.assert_allclose(stack.origin_lps, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(stack.spacing, [COL_SPACING, ROW_SPACING, step], atol=1e-4)
    assert stack.uniform and not stack.sheared and stack.step_from_ipp


def test_oblique_stack_geometry_and_voxels(tmp_path: Path) -> None:
    _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.5 * np.arange(6), slice_thickness=3.0,
                 spacing_between_slices=4.0)  # both wrong on purpose: the step must come from IPP
    series = read_series(tmp_path)
    assert len(series.stacks) == 1 and not series.skipped
    stack = series.stacks[0]
    _assert_oblique_geometry(stack, 6, 3.5)
    assert stack.pixels.dtype == np.uint16  # the stored integers, as the rescale is the identity
    for k in range(6):
        np.testing.assert_array_equal(stack.pixels[k], _slice_pixels(k))
    np.testing.assert_allclose(np.diff(stack.slice_positions), 3.5, atol=1e-4)


def test_reversed_instance_numbers_do_not_change_spatial_order(tmp_path: Path) -> None:
    _write_stack(tmp_path, OBLIQUE, ORIGIN, 4.0 * np.arange(5), instance_numbers=[5, 4, 3, 2, 1],
                 slice_location=None)
    stack = read_series(tmp_path).stacks[0]
    _assert_oblique_geometry(stack, 5, 4.0)
    assert stack.instance_numbers == [5, 4, 3, 2, 1]
    for k in range(5):
        np.testing.assert_array_equal(stack.pixels[k], _slice_pixels(k))


def test_shuffled_file_names_do_not_change_the_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [f"{v}.dcm" for v in rng.permutation(100)[:7]]
    _write_stack(tmp_path / "shuffled", OBLIQUE, ORIGIN, 3.0 * np.arange(7), names=names)
    _write_stack(tmp_path / "ordered", OBLIQUE, ORIGIN, 3.0 * np.arange(7))
    shuffled, ordered = read_series(tmp_path / "shuffled").stacks[0], read_series(tmp_path / "ordered").stacks[0]
    _assert_oblique_geometry(shuffled, 7, 3.0)
    np.testing.assert_array_equal(shuffled.pixels, ordered.pixels)
    np.testing.assert_allclose(shuffled.affine_lps, ordered.affine_lps)


def test_differently_angled_blocks_become_separate_stacks(tmp_path: Path) -> None:
    """Like an axial T2 series acquired as one angled block per disc."""
    angles = {-12.0: (0.0, 0.0, -30.0), 0.0: (0.0, 0.0, 0.0), 15.0: (0.0, 0.0, 28.0)}
    sizes = {-12.0: 5, 0.0: 4, 15.0: 3}
    first = 0
    for tilt, origin in angles.items():
        _write_stack(tmp_path, _rotation(tilt, 0.0, 0.0), origin, 4.0 * np.arange(sizes[tilt]),
                     first_value=first)
        first += sizes[tilt]
    series = read_series(tmp_path)
    assert [s.n_slices for s in series.stacks] == [5, 4, 3]  # largest first
    for stack, tilt in zip(series.stacks, angles):
        expected = _rotation(tilt, 0.0, 0.0)
        np.testing.assert_allclose(stack.direction_lps[:, 2], np.cross(expected[:, 0], expected[:, 1]),
                                   atol=1e-6)
        assert stack.is_regular and stack.spacing[2] == pytest.approx(4.0, abs=1e-4)
        stack.to_sitk()  # each block is a regular volume


def test_bad_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    good = _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.0 * np.arange(5))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good[0].read_bytes()[: int(good[0].stat().st_size * 0.7)])
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    no_pixels = pydicom.dcmread(good[1])
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "no_pixels.dcm", enforce_file_format=True)
    base = dict(study_id=1, series_id=7, instance_number=99, pixel_spacing=(ROW_SPACING, COL_SPACING))
    r, c = OBLIQUE[:, 0], OBLIQUE[:, 1]
    write_slice(tmp_path / "no_ipp.dcm", _slice_pixels(9),
                SliceTags(image_position=None, image_orientation=(*r, *c), **base))
    write_slice(tmp_path / "no_iop.dcm", _slice_pixels(9),
                SliceTags(image_position=tuple(ORIGIN), image_orientation=None, **base))
    _write_stack(tmp_path, OBLIQUE, ORIGIN, [6.0], names=["zz_duplicate.dcm"], instance_numbers=[50],
                 first_value=9)

    series = read_series(tmp_path)
    reasons = {Path(s.path).name: s.reason for s in series.skipped}
    assert set(reasons) == {"truncated.dcm", "notes.txt", "no_pixels.dcm", "no_ipp.dcm", "no_iop.dcm",
                            "zz_duplicate.dcm"}
    assert "pixel data" in reasons["truncated.dcm"]
    assert "not a DICOM" in reasons["notes.txt"]
    assert reasons["no_pixels.dcm"] == "no pixel data"
    assert "ImagePositionPatient" in reasons["no_ipp.dcm"]
    assert "ImageOrientationPatient" in reasons["no_iop.dcm"]
    assert "duplicate position" in reasons["zz_duplicate.dcm"]
    assert len(series.stacks) == 1
    stack = series.stacks[0]
    _assert_oblique_geometry(stack, 5, 3.0)
    np.testing.assert_array_equal(stack.pixels[2], _slice_pixels(2))  # the first by InstanceNumber kept


def test_missing_or_empty_or_useless_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(SeriesReadError, match="does not exist"):
        read_series(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeriesReadError, match="empty"):
        read_series(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(SeriesReadError, match="not a DICOM"):
        read_series(tmp_path / "junk")


def test_single_slice_series(tmp_path: Path) -> None:
    _write_stack(tmp_path / "thick", OBLIQUE, ORIGIN, [0.0], slice_thickness=5.5)
    _write_stack(tmp_path / "bare", OBLIQUE, ORIGIN, [0.0])
    thick, bare = read_series(tmp_path / "thick").stacks[0], read_series(tmp_path / "bare").stacks[0]
    assert thick.shape == (1, ROWS, COLS) and not thick.step_from_ipp and thick.is_regular
    assert thick.spacing[2] == pytest.approx(5.5)
    assert bare.spacing[2] == pytest.approx(1.0) and not bare.step_from_ipp
    assert thick.to_sitk().GetSize() == (COLS, ROWS, 1)


def test_uneven_step_is_flagged_and_keeps_true_positions(tmp_path: Path) -> None:
    positions = np.array([0.0, 4.0, 8.0, 16.0, 20.0])  # one slice missing
    _write_stack(tmp_path, OBLIQUE, ORIGIN, positions)
    stack = read_series(tmp_path).stacks[0]
    assert not stack.uniform and not stack.sheared and not stack.is_regular
    np.testing.assert_allclose(stack.slice_positions - stack.slice_positions[0], positions, atol=1e-4)
    with pytest.raises(IrregularStackError, match="not a regular grid"):
        stack.to_sitk()
    # voxel <-> world follows the true slice positions, also between and beyond slices
    np.testing.assert_allclose(stack.index_to_world(np.array([[0, 0, k] for k in range(5)])),
                               stack.image_positions_lps, atol=1e-6)
    ijk = np.array([[1.5, 2.0, 2.5], [0.0, 0.0, -1.0], [3.0, 7.0, 5.5]])
    np.testing.assert_allclose(stack.world_to_index(stack.index_to_world(ijk)), ijk, atol=1e-6)
    midway = stack.index_to_world(np.array([0.0, 0.0, 2.5]))
    np.testing.assert_allclose((midway - stack.origin_lps) @ stack.direction_lps[:, 2], 12.0, atol=1e-4)
    runs = stack.split_uniform_runs()
    assert [run.n_slices for run in runs] == [3, 2] and all(run.is_regular for run in runs)
    np.testing.assert_allclose(runs[1].origin_lps, stack.image_positions_lps[3])


def test_sheared_stack_is_flagged(tmp_path: Path) -> None:
    """Gantry tilt: IPP moves along z while the normal is tilted, so slices are offset in-plane."""
    rotation = _rotation(14.0, 0.0, 0.0)
    r, c = rotation[:, 0], rotation[:, 1]
    for k in range(4):
        tags = SliceTags(1, 7, k + 1, (0.0, 0.0, 5.0 * k), (*r, *c), (ROW_SPACING, COL_SPACING))
        write_slice(tmp_path / f"{k}.dcm", _slice_pixels(k), tags)
    stack = read_series(tmp_path).stacks[0]
    assert stack.sheared and stack.uniform
    assert stack.shear_mm == pytest.approx(15.0 * np.sin(np.radians(14.0)), abs=1e-3)
    with pytest.raises(IrregularStackError):
        stack.to_sitk()
    np.testing.assert_allclose(stack.index_to_world(np.array([[0, 0, 3]])), [[0.0, 0.0, 15.0]], atol=1e-4)


def test_several_frames_per_position_give_several_volumes(tmp_path: Path) -> None:
    """Time points: frames at the same position are split by their order (InstanceNumber)."""
    _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.0 * np.arange(4), names=[f"t1_{k}.dcm" for k in range(4)],
                 instance_numbers=[1, 2, 3, 4])
    _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.0 * np.arange(4), names=[f"t0_{k}.dcm" for k in range(4)],
                 instance_numbers=[5, 6, 7, 8], first_value=10)
    series = read_series(tmp_path)
    assert [(s.volume_index, s.n_volumes) for s in series.stacks] == [(0, 2), (1, 2)]
    assert not series.skipped
    np.testing.assert_array_equal(series.stacks[0].pixels[1], _slice_pixels(1))
    np.testing.assert_array_equal(series.stacks[1].pixels[1], _slice_pixels(11))


def test_rescale_slope_intercept_applied_per_slice(tmp_path: Path) -> None:
    _write_stack(tmp_path, OBLIQUE, ORIGIN, [0.0, 3.0], rescale=(2.5, -100.0))
    _write_stack(tmp_path, OBLIQUE, ORIGIN, [6.0], rescale=(0.5, 10.0), first_value=2)
    stack = read_series(tmp_path).stacks[0]
    for k, (slope, intercept) in enumerate([(2.5, -100.0), (2.5, -100.0), (0.5, 10.0)]):
        np.testing.assert_allclose(stack.pixels[k], _slice_pixels(k) * slope + intercept, rtol=1e-6)
    raw = read_series(tmp_path, rescale=False).stacks[0]
    np.testing.assert_array_equal(raw.pixels[2], _slice_pixels(2))


def test_index_world_round_trip_agrees_with_sitk(tmp_path: Path) -> None:
    _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.3 * np.arange(6))
    stack = read_series(tmp_path).stacks[0]
    image = stack.to_sitk()
    assert image.GetSize() == (COLS, ROWS, 6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), stack.pixels)
    ijk = np.random.default_rng(1).uniform(-2, 12, size=(50, 3))
    world = stack.index_to_world(ijk)
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk])
    np.testing.assert_allclose(world, expected, atol=1e-6)
    np.testing.assert_allclose(stack.world_to_index(world), ijk, atol=1e-9)
    # DICOM pixel (x=column, y=row) of slice k: world = IPP_k + x * colspacing * r + y * rowspacing * c
    x, y, k = 4.0, 9.0, 3
    r, c = OBLIQUE[:, 0], OBLIQUE[:, 1]
    dicom_world = stack.image_positions_lps[k] + x * COL_SPACING * r + y * ROW_SPACING * c
    np.testing.assert_allclose(stack.index_to_world(np.array([x, y, k])), dicom_world, atol=1e-4)


def _set_tag(path: Path, keyword: str, value) -> None:
    """Rewrite one tag of a written file (pydicom warns on NaN / inf decimal strings, and writes them)."""
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize(("keyword", "value"), [
    ("PixelSpacing", ["nan", "0.7"]),
    ("PixelSpacing", ["inf", "inf"]),
    ("ImagePositionPatient", ["-40", "inf", "110"]),
    ("ImageOrientationPatient", ["1", "0", "0", "0", "nan", "0"]),
    ("RescaleSlope", "nan"),
])
def test_non_finite_geometry_skips_the_file_and_keeps_the_series(tmp_path: Path, keyword: str, value) -> None:
    paths = _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.0 * np.arange(6))
    _set_tag(paths[2], keyword, value)
    series = read_series(tmp_path)
    assert [(Path(s.path).name, s.reason) for s in series.skipped] == [
        ("002.dcm", f"{keyword} is not finite ({[float(v) for v in np.atleast_1d(value)]})"
         if keyword != "RescaleSlope" else f"{keyword} is not finite (nan)")]
    [stack] = series.stacks  # the other five slices, at their true positions (a gap where slice 2 was)
    assert stack.shape == (5, ROWS, COLS) and stack.instance_numbers == [1, 2, 4, 5, 6]
    np.testing.assert_allclose(stack.slice_positions - stack.slice_positions[0], [0.0, 3.0, 9.0, 12.0, 15.0],
                               atol=1e-4)
    np.testing.assert_allclose(stack.spacing[:2], [COL_SPACING, ROW_SPACING])
    for k, value_k in zip(range(5), [0, 1, 3, 4, 5]):
        np.testing.assert_array_equal(stack.pixels[k], _slice_pixels(value_k))


def test_slices_of_two_sizes_become_two_full_resolution_stacks(tmp_path: Path) -> None:
    """Even slices of 12x10 px, odd slices of 6x5 px at twice the pixel spacing: no slice is resized."""
    big = _write_stack(tmp_path, OBLIQUE, ORIGIN, 6.0 * np.arange(4))
    r, c = OBLIQUE[:, 0], OBLIQUE[:, 1]
    n = np.cross(r, c)
    small_pixels = {k: (500 * (k + 1) + np.arange(30).reshape(6, 5)).astype(np.uint16) for k in range(3)}
    for k, pixels in small_pixels.items():
        tags = SliceTags(study_id=1, series_id=7, instance_number=20 + k,
                         image_position=tuple(np.asarray(ORIGIN) + (3.0 + 6.0 * k) * n),
                         image_orientation=(*r, *c), pixel_spacing=(2 * ROW_SPACING, 2 * COL_SPACING))
        write_slice(tmp_path / f"small_{k}.dcm", pixels, tags)
    series = read_series(tmp_path)
    assert not series.skipped and [s.shape for s in series.stacks] == [(4, ROWS, COLS), (3, 6, 5)]
    large, small = series.stacks
    assert large.source_files == [str(p) for p in big]
    for k in range(4):
        np.testing.assert_array_equal(large.pixels[k], _slice_pixels(k))
    for k in range(3):
        np.testing.assert_array_equal(small.pixels[k], small_pixels[k])
    np.testing.assert_allclose(large.spacing, [COL_SPACING, ROW_SPACING, 6.0], atol=1e-4)
    np.testing.assert_allclose(small.spacing, [2 * COL_SPACING, 2 * ROW_SPACING, 6.0], atol=1e-4)
    np.testing.assert_allclose(small.origin_lps, np.asarray(ORIGIN) + 3.0 * n, atol=1e-4)


@pytest.mark.parametrize("kind", ["regular", "uneven", "sheared"])
def test_from_slices_derives_the_geometry_of_the_read_stack(tmp_path: Path, kind: str) -> None:
    """`DicomStack.from_slices` (how the cache rebuilds a stack from its file and record) gives the stack that was
    read: same flags, step, origin and mappings, and keeps a memory map as it is."""
    if kind == "sheared":
        rotation = _rotation(14.0, 0.0, 0.0)
        r, c = rotation[:, 0], rotation[:, 1]
        for k in range(4):
            tags = SliceTags(1, 7, k + 1, (0.0, 0.0, 5.0 * k), (*r, *c), (ROW_SPACING, COL_SPACING))
            write_slice(tmp_path / f"{k}.dcm", _slice_pixels(k), tags)
    else:
        _write_stack(tmp_path, OBLIQUE, ORIGIN, [0.0, 4.0, 8.0, 16.0] if kind == "uneven" else 4.0 * np.arange(4))
    stack = read_series(tmp_path).stacks[0]
    mapped = np.memmap(tmp_path / "pixels.raw", dtype=np.int16, mode="w+", shape=stack.shape)
    mapped[:] = stack.pixels
    rebuilt = DicomStack.from_slices(mapped, stack.image_positions_lps, stack.direction_lps[:, 0],
                                     stack.direction_lps[:, 1], (stack.spacing[1], stack.spacing[0]),
                                     stack.instance_numbers, stack.slice_thickness)
    assert isinstance(rebuilt.pixels, np.memmap)
    assert (rebuilt.uniform, rebuilt.sheared, rebuilt.is_regular) == (stack.uniform, stack.sheared, stack.is_regular)
    assert rebuilt.is_regular == (kind == "regular") and rebuilt.instance_numbers == stack.instance_numbers
    for name in ("origin_lps", "direction_lps", "spacing", "slice_positions", "image_positions_lps"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(stack, name), err_msg=name)
    ijk = np.array([[1.5, 2.0, 2.5], [0.0, 0.0, 0.0], [3.0, 7.0, 3.0]])
    np.testing.assert_array_equal(rebuilt.index_to_world(ijk), stack.index_to_world(ijk))


# ------------------------------------------------------------------- the fast paths give pydicom's values
def _pydicom_stack(paths: list[Path]) -> np.ndarray:
    """pydicom's own decode of the files, in the order of the stack (sorted by position)."""
    datasets = sorted((pydicom.dcmread(p) for p in paths), key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in datasets])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("syntax", ["explicit", "implicit"])
def test_native_pixels_with_unused_high_bits_equal_pydicoms_decode(tmp_path: Path, signed: bool, syntax: str):
    """12 of 16 bits stored, and junk in the 4 bits above: pydicom masks them (unsigned) or sign-extends bit 11
    (signed); the reader's own view of the bytes must do the same."""
    rng = np.random.default_rng(3)
    paths = _write_stack(tmp_path, np.eye(3), (0.0, 0.0, 0.0), 3.0 * np.arange(4))
    for path in paths:
        ds = pydicom.dcmread(path)
        values = rng.integers(0, 1 << 16, (ROWS, COLS), dtype=np.uint16)  # 12 stored bits + 4 junk bits
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
        ds.PixelData = values.view(np.int16 if signed else np.uint16).tobytes()
        if syntax == "implicit":
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == "implicit", little_endian=True)
    expected = _pydicom_stack(paths)
    stack = read_series(tmp_path).stacks[0]
    assert stack.pixels.dtype == expected.dtype == (np.int16 if signed else np.uint16)
    np.testing.assert_array_equal(stack.pixels, expected)
    assert (expected < 0).any() if signed else expected.max() < 4096


def test_geometry_text_in_any_spacing_is_read_as_pydicom_reads_it(tmp_path: Path) -> None:
    paths = _write_stack(tmp_path, OBLIQUE, ORIGIN, 3.5 * np.arange(3), slice_thickness=3.0)
    for path in paths:
        ds = pydicom.dcmread(path)
        ipp, iop = list(ds.ImagePositionPatient), list(ds.ImageOrientationPatient)
        # padded, signed and exponent forms that DS allows; written as raw text
        ds["ImagePositionPatient"].value = [f" {float(v):+.6e}" for v in ipp]
        ds["ImageOrientationPatient"].value = [f"{float(v):.8f} " for v in iop]
        ds["InstanceNumber"].value = f" {int(ds.InstanceNumber)}"
        ds.save_as(path, enforce_file_format=True)
    series = read_series(tmp_path)
    (stack,) = series.stacks
    _assert_oblique_geometry(stack, 3, 3.5)
    assert stack.instance_numbers == [1, 2, 3] and not series.skipped


def test_compressed_and_rescaled_series_still_go_through_pydicom(tmp_path: Path) -> None:
    """An RLE-compressed file is decoded by pydicom; a rescale that is not the identity gives float32 modality
    values; both as before the fast paths."""
    paths = _write_stack(tmp_path, np.eye(3), (0.0, 0.0, 0.0), 2.0 * np.arange(3), rescale=(2.0, -100.0))
    ds = pydicom.dcmread(paths[0])
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(paths[0], enforce_file_format=True)
    stack = read_series(tmp_path).stacks[0]
    assert stack.pixels.dtype == np.float32
    np.testing.assert_array_equal(stack.pixels, _pydicom_stack(paths).astype(np.float32) * 2 - 100)


def test_damaged_files_never_crash_the_fast_reader(tmp_path: Path) -> None:
    """Files cut anywhere or with random bytes changed (seeded): each is read, or skipped with a reason, and the
    intact files of the series are still read; nothing raises."""
    from spine.io.native import parse_native

    good = _write_stack(tmp_path / "good", np.eye(3), (0.0, 0.0, 0.0), 3.0 * np.arange(3))
    data = good[0].read_bytes()
    rng = np.random.default_rng(5)
    variants = [data[:n] for n in sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, 131, 132, 200})]
    for _ in range(60):
        spoiled = bytearray(data)
        for at in rng.integers(128, min(len(data), 1200), rng.integers(1, 6)):
            spoiled[at] = int(rng.integers(0, 256))
        variants.append(bytes(spoiled))
    for n, variant in enumerate(variants):
        parse_native(variant)  # never raises: a NativeFile or None
        folder = tmp_path / f"case{n}"
        folder.mkdir()
        for path in good[1:]:
            (folder / path.name).write_bytes(path.read_bytes())
        (folder / "damaged.dcm").write_bytes(variant)
        with warnings.catch_warnings():  # pydicom warns about what it reads of the spoiled file
            warnings.simplefilter("ignore")
            series = read_series(folder)
        kept = {f for stack in series.stacks for f in stack.source_files}
        assert {str(folder / p.name) for p in good[1:]} <= kept, n
        assert str(folder / "damaged.dcm") in kept or any(s.path.endswith("damaged.dcm") for s in series.skipped), n
