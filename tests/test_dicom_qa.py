"""spine.io.dicom.read_series on 22 real scanner series (shared/data/dicom_qa, see its README).

`stack ok` cases: geometry against the manifest's expected_LPS and voxels against the reference NIfTI.
The other cases: the documented handling (split by orientation, flagged sheared / non-uniform).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from spine.io.dicom import DicomStack, IrregularStackError, read_series

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


def _ours_in_reference_grid(stack: DicomStack, affine_ras: np.ndarray, ref_shape) -> tuple:
    """Our voxel values and, for each, the reference voxel index holding the same point in space.

    The map ours -> reference index is inv(reference affine) @ LPS->RAS @ our affine: it must be a
    signed permutation with an integer offset (the reference reorders/flips axes, e.g. dcm2niix).
    """
    to_ref = np.linalg.inv(affine_ras) @ LPS_TO_RAS @ stack.affine_lps
    rounded = np.round(to_ref)
    np.testing.assert_allclose(to_ref, rounded, atol=1e-3)  # same grid, to a thousandth of a voxel
    nk, nj, ni = stack.shape
    ijk = np.stack(np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij"), -1).reshape(-1, 3)
    ref_index = (ijk @ rounded[:3, :3].T + rounded[:3, 3]).astype(int)
    assert (ref_index >= 0).all() and (ref_index < np.array(ref_shape)).all()
    values = stack.pixels[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    return values, tuple(ref_index.T)


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
