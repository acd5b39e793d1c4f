"""`DicomStack`: slices of one orientation sorted along their normal, with their exact geometry; the voxel index
<-> world maps, also for irregular stacks. `spine.io.dicom.read_series` builds them from DICOM files, the cache
reader (`spine.cache.read_stack`) from a stack's record.

Frames (see DESIGN.md section 3):
- **World**: DICOM patient coordinates, LPS, millimetres.
- **DICOM pixel**: (x = column, y = row) in one slice; with IOP = (r, c) and PixelSpacing = (row spacing,
  column spacing): ``world = IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c``.
- **Voxel index** of a `DicomStack`: continuous (i, j, k) with i = column, j = row, k = slice after
  sorting by increasing ``IPP . n``, n = r x c. ``pixels[k, j, i]`` is that voxel; integer indices are
  voxel centres. So (i, j) of slice k is exactly the DICOM pixel (x, y) of the instance
  ``instance_numbers[k]``.

Decisions:
- The slice step comes only from ImagePositionPatient (the mean step along n).
- A stack is *uniform* when every slice lies within `UNIFORM_RTOL` of a step from where a regular grid
  with the mean step puts it, and *sheared* when an IPP leaves the line through the first IPP along n by
  more than `SHEAR_TOL_PX` of a pixel (gantry tilt). Such stacks are kept whole, flagged, and carry
  their true slice positions: `index_to_world` / `world_to_index` then interpolate between the true
  IPPs, `to_sitk` refuses them, and `split_uniform_runs` cuts them where the step changes.
- A single-slice stack takes its k spacing from SliceThickness (1 mm if absent) and has
  `step_from_ipp = False`: the caller decides whether a 1-slice "volume" is usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["DicomStack", "IrregularStackError", "make_stack"]

POSITION_TOL_MM = 1e-2  # two IPPs closer than this are the same position (time points, echoes, copies)
UNIFORM_RTOL = 1e-2  # slice off the regular grid by more than 1 % of the step -> not uniform
SHEAR_TOL_PX = 0.1  # IPP off the normal line by more than a tenth of a pixel -> sheared
DEFAULT_SINGLE_SLICE_STEP_MM = 1.0  # k spacing of a 1-slice stack without SliceThickness


class IrregularStackError(ValueError):
    """A stack that is not a regular grid (uneven step or sheared) was asked for a regular-grid image."""


@dataclass
class DicomStack:
    """Slices of one orientation, sorted along the normal, with their exact geometry.

    Attributes:
        pixels: float32 (n_slices, rows, cols), indexed [k, j, i]; modality values (RescaleSlope and
            RescaleIntercept applied) unless read with ``rescale=False``.
        origin_lps: (3,) LPS mm, centre of voxel (i=0, j=0, k=0) = IPP of the first sorted slice.
        direction_lps: (3, 3); columns are the unit vectors of i (r), j (c) and k (n = r x c).
        spacing: (3,) mm: column spacing, row spacing, slice step (mean IPP step along n; the median
            step if not uniform, nominal only; SliceThickness or 1 mm for a single slice).
        slice_positions: (n_slices,) mm, ``IPP . n`` of each slice (increasing).
        image_positions_lps: (n_slices, 3) LPS mm, the IPP of each slice.
        instance_numbers: InstanceNumber of each slice (None where absent).
        source_files: file of each slice; source_frames: its 0-based frame number in that file.
        uniform: every slice within UNIFORM_RTOL * step of the regular grid (True for 1-2 slices).
        sheared: IPPs leave the normal line through the first IPP by more than SHEAR_TOL_PX pixel.
        shear_mm: the largest such offset, mm.
        step_from_ipp: False for a single slice (k spacing from SliceThickness or 1 mm).
        slice_thickness: SliceThickness of the first slice, mm (information only; None if absent).
        volume_index, n_volumes: which of the frames sharing each position (time point / echo).
    """

    pixels: np.ndarray
    origin_lps: np.ndarray
    direction_lps: np.ndarray
    spacing: np.ndarray
    slice_positions: np.ndarray
    image_positions_lps: np.ndarray
    instance_numbers: list[int | None]
    source_files: list[str]
    source_frames: list[int]
    uniform: bool
    sheared: bool
    shear_mm: float
    step_from_ipp: bool
    slice_thickness: float | None = None
    volume_index: int = 0
    n_volumes: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_slices, rows, cols), the shape of `pixels`."""
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def is_regular(self) -> bool:
        """True when the voxels lie on the grid origin + direction @ (ijk * spacing)."""
        return self.uniform and not self.sheared

    @property
    def affine_lps(self) -> np.ndarray:
        """(4, 4) voxel index (i, j, k, 1) -> LPS mm, valid for regular stacks."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_lps * self.spacing
        affine[:3, 3] = self.origin_lps
        return affine

    def to_sitk(self) -> sitk.Image:
        """The stack as a SimpleITK image (LPS, mm) with exactly this geometry.

        Raises:
            IrregularStackError: the stack is not uniform or is sheared; resample it from
                `image_positions_lps` or use `split_uniform_runs` first.
        """
        if not self.is_regular:
            raise IrregularStackError(
                f"stack is not a regular grid (uniform={self.uniform}, sheared={self.sheared}, "
                f"shear {self.shear_mm:.3f} mm, slice positions {np.round(self.slice_positions, 3).tolist()})"
            )
        import SimpleITK as sitk  # here only: the pipeline never needs it (about 0.3 s to import in every worker)

        image = sitk.GetImageFromArray(self.pixels)  # numpy [k, j, i] -> ITK index (i, j, k)
        image.SetOrigin(self.origin_lps.tolist())
        image.SetSpacing(self.spacing.tolist())
        image.SetDirection(self.direction_lps.flatten().tolist())  # row-major, columns = axes
        return image

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel index (..., 3) as (i, j, k) -> LPS mm (..., 3).

        Regular stacks use the affine; others interpolate linearly between the true IPPs along k
        (extrapolating with the end steps), so the true slice positions are honoured.
        """
        ijk = np.asarray(ijk, dtype=np.float64)
        if self.is_regular:
            return ijk @ (self.direction_lps * self.spacing).T + self.origin_lps
        r, c = self.direction_lps[:, 0], self.direction_lps[:, 1]
        base = self._ipp_at(ijk[..., 2])
        return base + ijk[..., :1] * self.spacing[0] * r + ijk[..., 1:2] * self.spacing[1] * c

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """LPS mm (..., 3) -> continuous voxel index (..., 3) as (i, j, k); inverse of `index_to_world`."""
        xyz = np.asarray(xyz, dtype=np.float64)
        if self.is_regular:
            return (xyz - self.origin_lps) @ np.linalg.inv(self.direction_lps * self.spacing).T
        r, c, n = self.direction_lps.T
        k = self._k_at(xyz @ n)
        offset = xyz - self._ipp_at(k)
        return np.stack([offset @ r / self.spacing[0], offset @ c / self.spacing[1], k], axis=-1)

    def split_uniform_runs(self) -> list[DicomStack]:
        """Cut the stack where the step changes (missing slices, separate blocks); [self] if uniform.

        Greedy along k: a run keeps its first step; a step off it by more than UNIFORM_RTOL ends the run
        and the next slice starts a new one. Each run is a new stack (re-checked, so flags stay true).
        """
        if self.uniform:
            return [self]
        bounds, run_step = [0], None
        for k, step in enumerate(np.diff(self.slice_positions)):  # step from slice k to k + 1
            if run_step is None:
                run_step = step
            elif abs(step - run_step) > UNIFORM_RTOL * run_step:
                bounds.append(k + 1)
                run_step = None
        bounds.append(self.n_slices)
        return [self._subset(slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def with_slices(self, pixels: np.ndarray, image_positions_lps: np.ndarray, instance_numbers: list[int | None],
                    source_files: list[str], source_frames: list[int]) -> DicomStack:
        """This stack with more slices on its own pixel grid (same r, c and pixel spacing): ``pixels`` (m, rows,
        cols) whose voxel (0, 0) is at ``image_positions_lps`` (m, 3). All slices are sorted along the normal
        and the geometry (step, uniform, sheared) is derived again from the true IPPs."""
        ipps = np.concatenate([self.image_positions_lps, np.asarray(image_positions_lps, dtype=np.float64)])
        order = np.argsort(ipps @ self.direction_lps[:, 2], kind="stable")
        pixels = np.concatenate([self.pixels, np.asarray(pixels)])[order]  # integers and floats give floats
        numbers, files, frames = ([both[k] for k in order] for both in (
            self.instance_numbers + list(instance_numbers), self.source_files + list(source_files),
            self.source_frames + list(source_frames)))
        r, c = self.direction_lps[:, 0], self.direction_lps[:, 1]
        return make_stack(pixels, ipps[order], r, c, (self.spacing[1], self.spacing[0]), numbers, files, frames,
                          self.slice_thickness, self.volume_index, self.n_volumes)

    @classmethod
    def from_slices(cls, pixels: np.ndarray, image_positions_lps, r, c, pixel_spacing,
                    instance_numbers: list[int | None] | None = None, slice_thickness: float | None = None,
                    volume_index: int = 0, n_volumes: int = 1) -> DicomStack:
        """A stack from slices already sorted along the normal: ``pixels`` (n, rows, cols) [k, j, i] of any
        numeric dtype (a memory map stays one), ``image_positions_lps`` (n, 3) LPS mm of each slice's voxel
        (0, 0), ``r`` / ``c`` the unit column / row directions, ``pixel_spacing`` (row, column) mm. The step,
        uniform and sheared flags are derived from the IPPs, exactly as when reading DICOM."""
        n = len(pixels)
        numbers = [None] * n if instance_numbers is None else list(instance_numbers)
        return make_stack(pixels, np.asarray(image_positions_lps, dtype=np.float64), np.asarray(r, dtype=np.float64),
                          np.asarray(c, dtype=np.float64), (float(pixel_spacing[0]), float(pixel_spacing[1])),
                          numbers, [""] * n, [0] * n, slice_thickness, volume_index, n_volumes)

    def _subset(self, sl: slice) -> DicomStack:
        r, c = self.direction_lps[:, 0], self.direction_lps[:, 1]
        return make_stack(
            self.pixels[sl], self.image_positions_lps[sl], r, c, (self.spacing[1], self.spacing[0]),
            self.instance_numbers[sl], self.source_files[sl], self.source_frames[sl],
            self.slice_thickness, self.volume_index, self.n_volumes,
        )

    def _ipp_at(self, k: np.ndarray) -> np.ndarray:
        """IPP (..., 3) at continuous slice index k (...), piecewise linear between true IPPs."""
        ipps = self.image_positions_lps
        if len(ipps) == 1:
            return ipps[0] + k[..., None] * self.spacing[2] * self.direction_lps[:, 2]
        k0 = np.clip(np.floor(k), 0, len(ipps) - 2).astype(int)
        t = (k - k0)[..., None]
        return ipps[k0] * (1 - t) + ipps[k0 + 1] * t

    def _k_at(self, s: np.ndarray) -> np.ndarray:
        """Continuous slice index at position s (mm along n): inverse of the piecewise-linear map."""
        pos = self.slice_positions
        seg = np.clip(np.searchsorted(pos, s) - 1, 0, len(pos) - 2)
        return seg + (s - pos[seg]) / (pos[seg + 1] - pos[seg])


def make_stack(pixels: np.ndarray, ipps: np.ndarray, r: np.ndarray, c: np.ndarray,
               pixel_spacing: tuple[float, float], instance_numbers: list[int | None],
               files: list[str], frames: list[int], thickness: float | None,
               volume_index: int, n_volumes: int) -> DicomStack:
    """Derive the geometry of sorted slices: pixels (n, rows, cols), ipps (n, 3) LPS mm sorted along n, r / c
    the unit column / row directions, pixel_spacing (row, column) mm, thickness SliceThickness mm (or None).
    The one place a `DicomStack`'s step and flags are computed (`DicomStack.from_slices` for other callers)."""
    n = np.cross(r, c)
    n /= np.linalg.norm(n)
    s = ipps @ n
    count = len(s)
    if count > 1:
        step = float(s[-1] - s[0]) / (count - 1)  # mean step: least sensitive to IPP rounding
        grid_error = np.abs(s - (s[0] + step * np.arange(count)))
        uniform = step > POSITION_TOL_MM and float(grid_error.max()) <= UNIFORM_RTOL * step
        if not uniform:
            step = float(np.median(np.diff(s)))  # nominal step only: the true positions are in `s`
    else:
        step, uniform = thickness or DEFAULT_SINGLE_SLICE_STEP_MM, True
    offsets = (ipps - ipps[0]) - np.outer(s - s[0], n)  # IPP movement not along the normal
    shear = float(np.linalg.norm(offsets, axis=1).max())
    return DicomStack(
        pixels=pixels,
        origin_lps=ipps[0].copy(),
        direction_lps=np.column_stack([r, c, n]),
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], step]),
        slice_positions=s,
        image_positions_lps=ipps,
        instance_numbers=list(instance_numbers),
        source_files=list(files),
        source_frames=list(frames),
        uniform=bool(uniform),
        sheared=shear > SHEAR_TOL_PX * min(pixel_spacing),
        shear_mm=shear,
        step_from_ipp=count > 1,
        slice_thickness=thickness,
        volume_index=volume_index,
        n_volumes=n_volumes,
    )
