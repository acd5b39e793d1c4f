"""spine.io.dicom.read_series and the cache's stack files on 22 real scanner series (shared/data/dicom_qa, see
its README).

`stack ok` cases: geometry against the manifest's expected_LPS and voxels against the reference NIfTI, both as
read and as written to the cache and read back (`spine.cache.write_stack` / `read_stack`); sampling a
cached stack on its own grid gives its voxels back.
The other cases: the documented handling (split by orientation, flagged sheared / non-uniform), and irregular
stacks cached with their true slice positions.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from spine.cache import irregular_reason, read_stack, stack_record, write_stack
from spine.data.grid import SamplingGrid
from spine.data.volume import SeriesVolume
from spine.io.dicom import DicomStack, IrregularStackError, _dataset_frame_geometry, read_series
from spine.preprocess.volume import make_volume

QA_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/dicom_qa"
MANIFEST = QA_DIR / "manifest.json"
CASES: dict = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
OK_CASES = sorted(k for k, v in CASES.items() if v["status"] == "stack ok")
ORIGIN_TOL_MM, SPACING_TOL_MM, DIRECTION_TOL = 1e-3, 1e-3, 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

pytestmark = pytest.mark.skipif(not CASES, reason=f"real-scanner DICOM set not found at {QA_DIR}")


def _read(case: str, rescale: bool = True):
    return read_series(QA_DIR / CASES[case]["dicom_dir"], rescale=rescale)


@pytest.mark.parametrize("case", OK_CASES)
def test_stack_ok_geometry(case: str) -> None:
    expected = CASES[case]["expected_LPS"]
    series = _read(case)
    assert not series.skipped
    n_volumes = expected["frames_per_position"]
    assert len(series.stacks) == n_volumes  # one stack per time point / echo, nothing else
    ni, nj, nk = expected["shape_ijk"]
    for volume, stack in enumerate(series.stacks):
        assert (stack.volume_index, stack.n_volumes) == (volume, n_volumes)
        assert stack.shape == (nk, nj, ni)
        assert stack.is_regular
        np.testing.assert_allclose(stack.origin_lps, expected["origin_LPS_mm"], atol=ORIGIN_TOL_MM)
        # direction_cols_LPS lists the unit vectors of i, j, k; ours holds them as columns
        np.testing.assert_allclose(stack.direction_lps, np.array(expected["direction_cols_LPS"]).T,
                                   atol=DIRECTION_TOL)
        np.testing.assert_allclose(stack.spacing, expected["spacing_mm"], atol=SPACING_TOL_MM)
        assert stack.step_from_ipp == (nk > 1)


REF_CASES = [(case, ref) for case in OK_CASES for ref in CASES[case].get("refs", {})]


@pytest.mark.parametrize(("case", "ref"), REF_CASES, ids=[c for c, _ in REF_CASES])
def test_stack_ok_voxels_equal_reference_nifti(case: str, ref: str) -> None:
    """Raw stored values (before rescale) equal the reference, voxel for voxel, mapped through the affines."""
    image = nib.load(QA_DIR / ref)
    reference = np.asarray(image.dataobj.get_unscaled())
    reference = reference.reshape(*reference.shape[:3], -1)  # (x, y, z, volumes)
    stacks = _read(case, rescale=False).stacks
    assert len(stacks) == reference.shape[3]
    for volume, stack in enumerate(stacks):
        ours, theirs = _ours_in_reference_grid(stack, image.affine, reference.shape[:3])
        np.testing.assert_array_equal(ours, reference[..., volume][theirs])


def _ours_in_reference_grid(stack: DicomStack, affine_ras: np.ndarray, ref_shape,
                            our_affine_ras: np.ndarray | None = None) -> tuple:
    """Our voxel values and, for each, the reference voxel index holding the same point in space.

    The map ours -> reference index is inv(reference affine) @ our RAS affine (default LPS->RAS @ the stack's
    affine; ``our_affine_ras``: e.g. the one a cached NIfTI stores): it must be a signed permutation with an
    integer offset (the reference reorders/flips axes, e.g. dcm2niix).
    """
    ours = LPS_TO_RAS @ stack.affine_lps if our_affine_ras is None else our_affine_ras
    to_ref = np.linalg.inv(affine_ras) @ ours
    rounded = np.round(to_ref)
    np.testing.assert_allclose(to_ref, rounded, atol=1e-3)  # same grid, to a thousandth of a voxel
    nk, nj, ni = stack.shape
    ijk = np.stack(np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij"), -1).reshape(-1, 3)
    ref_index = (ijk @ rounded[:3, :3].T + rounded[:3, 3]).astype(int)
    assert (ref_index >= 0).all() and (ref_index < np.array(ref_shape)).all()
    values = stack.pixels[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    return values, tuple(ref_index.T)


# ------------------------------------------------------------------------------ through the cache


def _cached(stacks: list[DicomStack], folder: Path) -> list[tuple[DicomStack, Path]]:
    """Each stack written with the cache writer and read back from its file and record (memory-mapped)."""
    out = []
    for n, stack in enumerate(stacks):
        path = folder / f"1_{n}.nii"
        write_stack(stack, path)
        out.append((read_stack(folder, folder, json.loads(json.dumps(stack_record(stack, path.name)))), path))
    return out


def _rescale(stack: DicomStack) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) per slice, from each slice's own DICOM file (or frame)."""
    pairs = [_dataset_frame_geometry(pydicom.dcmread(f, stop_before_pixels=True), frame)[3:5]
             for f, frame in zip(stack.source_files, stack.source_frames)]
    return tuple(np.array(v, dtype=np.float64) for v in zip(*pairs))  # type: ignore[return-value]


@pytest.mark.parametrize(("case", "ref"), REF_CASES, ids=[c for c, _ in REF_CASES])
def test_cached_stacks_put_the_reference_voxels_at_the_same_world_positions(case: str, ref: str,
                                                                              tmp_path: Path) -> None:
    """Every stack, written by the cache writer and read back, holds the reference NIfTI's voxel values at the
    reference's positions (through the true IPPs of its record and through the cached NIfTI's own affine, to
    1e-3 mm), rescaled consistently: the stored integers where RescaleSlope/Intercept are the identity, else the
    modality values, equal to the reference's stored values rescaled (by its scl_slope/scl_inter if it has them,
    else by the DICOM's)."""
    image = nib.load(QA_DIR / ref)
    raw = np.asarray(image.dataobj.get_unscaled())
    raw = raw.reshape(*raw.shape[:3], -1)  # (x, y, z, volumes): the reference's stored values
    scl_slope, scl_inter = (float(image.header[key]) for key in ("scl_slope", "scl_inter"))
    scaled = np.isfinite(scl_slope) and scl_slope != 0 and (scl_slope, scl_inter) != (1.0, 0.0)
    stacks = _read(case).stacks
    assert len(stacks) == raw.shape[3]
    for volume, (cached, path) in enumerate(_cached(stacks, tmp_path)):
        stack = stacks[volume]
        assert isinstance(cached.pixels, np.memmap) and cached.is_regular
        np.testing.assert_array_equal(cached.image_positions_lps, stack.image_positions_lps)
        np.testing.assert_array_equal(cached.direction_lps, stack.direction_lps)
        assert cached.instance_numbers == stack.instance_numbers
        stored = nib.load(path)  # its own affine: every voxel at the stack's world position, to 1e-3 mm
        nk, nj, ni = stack.shape
        ijk = np.stack(np.meshgrid(*(np.arange(n) for n in (ni, nj, nk)), indexing="ij"), -1).reshape(-1, 3)
        np.testing.assert_allclose(nib.affines.apply_affine(stored.affine, ijk),
                                   nib.affines.apply_affine(LPS_TO_RAS, stack.index_to_world(ijk)), atol=1e-3)
        slopes, intercepts = _rescale(stack)
        identity = bool((slopes == 1).all() and (intercepts == 0).all())
        if identity:  # the stored integers, as the reference holds them
            assert cached.pixels.dtype in (np.int16, np.uint16)
        slice_of = ijk[:, 2]
        for affine in (None, stored.affine):  # through the true IPPs, and through the cached NIfTI's affine
            ours, theirs = _ours_in_reference_grid(cached, image.affine, raw.shape[:3], affine)
            theirs_raw = raw[..., volume][theirs].astype(np.float64)
            if identity and not scaled:
                np.testing.assert_array_equal(ours, theirs_raw)
            elif scaled:
                np.testing.assert_allclose(ours, theirs_raw * scl_slope + scl_inter, rtol=1e-6)
            else:  # a reference keeping the stored values: rescaled by each slice's own DICOM rescale
                np.testing.assert_allclose(ours, theirs_raw * slopes[slice_of] + intercepts[slice_of], rtol=1e-6)


@pytest.mark.parametrize("case", OK_CASES)
def test_sampling_a_cached_stack_on_its_own_grid_gives_its_voxels(case: str, tmp_path: Path) -> None:
    volume = make_volume(_read(case), min_slices=1)
    for stack, _ in _cached(volume.stacks, tmp_path):
        cached = SeriesVolume([stack], source="cache")
        grid = SamplingGrid(stack.origin_lps, stack.direction_lps, stack.spacing, stack.shape[::-1])
        values, covered = cached.sample(grid, normalise=False, antialias=False)
        assert covered.all()
        np.testing.assert_array_equal(values, np.asarray(stack.pixels, dtype=np.float32).transpose(2, 1, 0))


@pytest.mark.parametrize(("case", "why"), [("09_neg_gantrytilting_001", "sheared 3.63 mm (gantry tilt)"),
                                           ("09_neg_sliceincrement_001", "uneven steps 5.00..10.00 mm"),
                                           ("09_neg_sliceincrement_002",
                                            "uneven steps 0.75..1.50 mm and sheared 0.83 mm (gantry tilt)")])
def test_irregular_stacks_are_cached_with_their_true_slice_positions(case: str, why: str, tmp_path: Path) -> None:
    volume = make_volume(_read(case))
    (stack,) = volume.stacks
    assert irregular_reason(stack) == why and why in volume.notes[-1]
    ((cached, path),) = _cached([stack], tmp_path)
    record = stack_record(stack, path.name)
    assert record["regular"] is False and record["irregular"] == why
    np.testing.assert_array_equal(cached.image_positions_lps, stack.image_positions_lps)  # float64, exact
    assert (cached.uniform, cached.sheared, cached.is_regular) == (stack.uniform, stack.sheared, False)
    np.testing.assert_array_equal(cached.pixels, stack.pixels)
    corners = np.array([[0.0, 0.0, k] for k in range(stack.n_slices)])
    np.testing.assert_allclose(cached.index_to_world(corners), stack.image_positions_lps, atol=1e-9)


# ------------------------------------------------------------------------------ the rejected cases


def test_3plane_localizer_is_split_into_three_stacks() -> None:
    series = _read("09_neg_3plane_localizer")
    assert [s.n_slices for s in series.stacks] == [7, 7, 7] and not series.skipped
    normals = np.array([s.direction_lps[:, 2] for s in series.stacks])
    np.testing.assert_allclose(normals @ normals.T, np.eye(3), atol=1e-6)  # axial, sagittal, coronal
    for stack in series.stacks:
        assert stack.is_regular and stack.spacing[2] == pytest.approx(15.0, abs=1e-3)


def test_two_orientations_are_split_into_two_stacks() -> None:
    series = _read("09_neg_sliceorientation_001")
    assert [s.n_slices for s in series.stacks] == [2, 2] and not series.skipped
    a, b = (s.direction_lps[:, 2] for s in series.stacks)
    assert abs(float(a @ b)) < 0.9  # clearly different planes
    assert sorted(round(s.spacing[0], 4) for s in series.stacks) == [0.32, 0.5556]


def test_gantry_tilt_is_flagged_sheared() -> None:
    (stack,) = _read("09_neg_gantrytilting_001").stacks
    assert stack.uniform and stack.sheared
    assert stack.shear_mm == pytest.approx(3.629, abs=1e-3)  # the manifest's figure
    with pytest.raises(IrregularStackError):
        stack.to_sitk()
    # voxel -> world still follows the true (tilted) slice positions
    corners = np.array([[0.0, 0.0, k] for k in range(stack.n_slices)])
    np.testing.assert_allclose(stack.index_to_world(corners), stack.image_positions_lps, atol=1e-6)


@pytest.mark.parametrize(("case", "steps"), [("09_neg_sliceincrement_001", [5.0, 5.0, 10.0]),
                                             ("09_neg_sliceincrement_002", [0.7497, 0.7497, 1.4994])])
def test_uneven_slice_increment_is_flagged_non_uniform(case: str, steps: list[float]) -> None:
    (stack,) = _read(case).stacks
    assert not stack.uniform and not stack.is_regular
    np.testing.assert_allclose(np.diff(stack.slice_positions), steps, atol=1e-3)
    with pytest.raises(IrregularStackError):
        stack.to_sitk()
    assert [run.n_slices for run in stack.split_uniform_runs()] == [3, 1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_path_reads_every_real_series_as_pydicom_does(case: str, monkeypatch) -> None:
    """Every real-scanner series, read with the native fast path (`spine.io.native`) and with pydicom alone: the
    same stacks (pixels, their type, geometry, instance numbers, files), skipped files and reasons, description."""
    import spine.io.dicom as dicom

    folder = QA_DIR / CASES[case]["dicom_dir"]
    try:
        fast = read_series(folder)
    except dicom.SeriesReadError as err:
        monkeypatch.setattr(dicom, "parse_native", lambda data: None)
        with pytest.raises(dicom.SeriesReadError) as slow_err:
            read_series(folder)
        assert str(slow_err.value) == str(err)
        return
    monkeypatch.setattr(dicom, "parse_native", lambda data: None)
    slow = read_series(folder)
    assert fast.series_description == slow.series_description and fast.skipped == slow.skipped
    assert len(fast.stacks) == len(slow.stacks)
    for a, b in zip(fast.stacks, slow.stacks):
        assert a.pixels.dtype == b.pixels.dtype
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.image_positions_lps, b.image_positions_lps)
        np.testing.assert_array_equal(a.direction_lps, b.direction_lps)
        np.testing.assert_array_equal(a.spacing, b.spacing)
        assert (a.instance_numbers, a.source_files, a.slice_thickness) == \
            (b.instance_numbers, b.source_files, b.slice_thickness)
