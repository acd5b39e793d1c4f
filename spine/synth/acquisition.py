"""Acquisition geometry of the synthetic series: where each slice is, and what its pixels show.

All positions are world LPS mm; pixel indices follow DICOM: x = column, y = row. A series is a list of
stacks; each stack is a set of parallel, equally spaced slices with one ImageOrientationPatient (r, c),
r the direction of increasing column, c of increasing row, and slice normal n = r x c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spine.synth.anatomy import Spine


@dataclass
class Stack:
    """Parallel slices sharing one orientation.

    Attributes:
        row_dir: (3,) r, world direction of increasing column index (IOP[:3]).
        col_dir: (3,) c, world direction of increasing row index (IOP[3:]).
        centers: (n, 3) world LPS mm of each slice's centre, in increasing order along n = r x c.
        rows, cols: image size in pixels.
        pixel_spacing: (row spacing, column spacing) mm, as DICOM PixelSpacing.
    """

    row_dir: np.ndarray
    col_dir: np.ndarray
    centers: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def image_position(self, k: int) -> np.ndarray:
        """(3,) ImagePositionPatient of slice k: the world position of pixel (x=0, y=0)."""
        half_cols = (self.cols - 1) / 2 * self.pixel_spacing[1]
        half_rows = (self.rows - 1) / 2 * self.pixel_spacing[0]
        return self.centers[k] - half_cols * self.row_dir - half_rows * self.col_dir

    def pixel_world(self, k: int) -> np.ndarray:
        """(rows, cols, 3) world LPS mm of every pixel centre of slice k."""
        y = np.arange(self.rows)[:, None, None] * self.pixel_spacing[0] * self.col_dir
        x = np.arange(self.cols)[None, :, None] * self.pixel_spacing[1] * self.row_dir
        return self.image_position(k) + x + y

    def world_to_pixel(self, point: np.ndarray, k: int) -> tuple[float, float, float]:
        """Project a world point on slice k: (x = column, y = row, distance to the slice plane in mm)."""
        d = point - self.image_position(k)
        return (float(d @ self.row_dir / self.pixel_spacing[1]), float(d @ self.col_dir / self.pixel_spacing[0]),
                float(d @ self.normal))


@dataclass
class SeriesPlan:
    """One series: its stacks (cranial first for axial), the instance number of every slice, its tags."""

    description: str
    stacks: list[Stack]
    instance_numbers: list[list[int]]  # per stack, per slice (in the stack's spatial order)
    slice_thickness: float
    patient_position: str

    def slices(self):
        """Yield (stack, slice index in stack, instance number) for every slice of the series."""
        for stack, numbers in zip(self.stacks, self.instance_numbers):
            for k, number in enumerate(numbers):
                yield stack, k, number

    def locate(self, point: np.ndarray) -> tuple[int, float, float, float]:
        """The slice nearest to a world point whose image contains its projection.

        Returns (instance number, x = column, y = row, distance to that slice's plane in mm).
        """
        best = None
        for stack, k, number in self.slices():
            x, y, dist = stack.world_to_pixel(point, k)
            inside = 0 <= x <= stack.cols - 1 and 0 <= y <= stack.rows - 1
            key = (not inside, abs(dist))
            if best is None or key < best[0]:
                best = (key, (number, x, y, dist))
        return best[1]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _orthogonal(v: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """v made perpendicular to normal, unit length."""
    return _unit(v - (v @ normal) * normal)


def _jitter(direction: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Tilt a unit vector by a random angle of up to about `degrees` (obliquity of a planned slab)."""
    return _unit(direction + np.tan(np.radians(degrees)) * rng.uniform(-1, 1, 3) / np.sqrt(3))


def _image_size(rng, size_range, fov_mm: float, nonsquare_rate: float) -> tuple[int, int, tuple[float, float]]:
    size = int(rng.integers(size_range[0] // 16, size_range[1] // 16 + 1)) * 16
    spacing = fov_mm / size
    cols = size
    if rng.random() < nonsquare_rate:  # phase-encoding FOV reduced: fewer columns, same spacing
        cols = int(round(size * rng.choice([0.75, 0.875]) / 16)) * 16
    return size, cols, (spacing, spacing)


def plan_sagittal(spine: Spine, description: str, rng: np.random.Generator, cfg) -> SeriesPlan:
    """A sagittal slab centred on the spine, normal along the patient's left-right axis with obliquity."""
    normal = -spine.rotation[:, 0] if rng.random() > 0.2 else spine.rotation[:, 0]  # usually toward right
    normal = _jitter(normal, cfg.obliquity_deg, rng)
    col_dir = _orthogonal(np.array([0.0, 0.0, -1.0]), normal)  # image rows run head -> feet
    row_dir = np.cross(col_dir, normal)  # so that r x c = n
    step = float(rng.uniform(*cfg.sag_spacing_mm))
    n_slices = int(np.clip(np.ceil(cfg.sag_coverage_mm / step), *cfg.sag_slices))
    rows, cols, spacing = _image_size(rng, cfg.sag_size, cfg.sag_fov_mm, cfg.nonsquare_rate)
    centre = spine.spine_to_world(np.array([rng.uniform(-3, 3), rng.uniform(0, 20), rng.uniform(-15, 15)]))
    offsets = (np.arange(n_slices) - (n_slices - 1) / 2) * step
    stack = Stack(row_dir, col_dir, centre + offsets[:, None] * normal, rows, cols, spacing)
    numbers = list(range(1, n_slices + 1))
    if rng.random() < cfg.reversed_instance_rate:
        numbers.reverse()
    return SeriesPlan(description, [stack], [numbers], step * float(rng.uniform(0.8, 1.0)),
                      _patient_position(rng))


def plan_axial(spine: Spine, rng: np.random.Generator, cfg) -> SeriesPlan:
    """Axial T2: one stack through L1/L2..L5/S1, or 2-3 stacks each angled along its group of discs."""
    step = float(rng.uniform(*cfg.ax_spacing_mm))
    rows, cols, spacing = _image_size(rng, cfg.ax_size, cfg.ax_fov_mm, cfg.nonsquare_rate)
    if rng.random() < cfg.multi_stack_rate:
        groups = _level_groups(int(rng.integers(2, 4)), rng)
    else:
        groups = [list(range(5))]
    feet_first = rng.random() < 0.2
    stacks = [_axial_stack(spine, group, step, rows, cols, spacing, feet_first, rng, cfg) for group in groups]
    # Instance numbers run head -> feet through the stacks (cranial stack first), or the other way.
    numbers, start = [], 1
    for stack in stacks:
        block = list(range(start, start + len(stack.centers)))
        cranial_up = stack.normal @ spine.tangent(0.0) > 0  # then slice 0 is the most caudal one
        numbers.append(block[::-1] if cranial_up else block)
        start += len(block)
    if rng.random() < cfg.reversed_instance_rate:
        total = start - 1
        numbers = [[total + 1 - i for i in block] for block in numbers]
    return SeriesPlan("Axial T2", stacks, numbers, step * float(rng.uniform(0.8, 1.0)),
                      "FFS" if feet_first else "HFS")


def _level_groups(n_groups: int, rng) -> list[list[int]]:
    cuts = np.sort(rng.choice(np.arange(1, 5), size=n_groups - 1, replace=False))
    return [list(g) for g in np.split(np.arange(5), cuts)]


def _axial_stack(spine: Spine, levels: list[int], step: float, rows: int, cols: int, spacing, feet_first,
                 rng, cfg) -> Stack:
    disc_t = spine.disc_t[np.array(levels) + 1]
    t_mid = float(disc_t.mean())
    # Slices parallel to the discs. Feet-first scanners write IOP (-1,0,0, 0,1,0): columns run to the
    # patient's right and the normal points to the feet; head-first ones (1,0,0, 0,1,0).
    side = -1.0 if feet_first else 1.0
    normal = side * _jitter(spine.tangent(t_mid), cfg.obliquity_deg, rng)
    row_dir = _orthogonal(side * spine.rotation[:, 0], normal)
    col_dir = np.cross(normal, row_dir)  # posterior in both cases, and r x c = n
    axis_point = spine.spine_to_world(np.array([0.0, 15.0, t_mid]))
    discs = np.stack([spine.spine_to_world(np.array([0.0, 0.0, t])) for t in disc_t])
    along = (discs - axis_point) @ normal
    margin = 10.0 * spine.scale
    first, last = along.min() - margin, along.max() + margin
    n_slices = int(np.floor((last - first) / step)) + 1
    offsets = first + np.arange(n_slices) * step + ((last - first) - (n_slices - 1) * step) / 2
    return Stack(row_dir, col_dir, axis_point + offsets[:, None] * normal, rows, cols, spacing)


def _patient_position(rng) -> str:
    return "HFS" if rng.random() > 0.2 else "FFS"


def render_slice(spine: Spine, stack: Stack, k: int, sequence: str, look: dict, rng) -> np.ndarray:
    """(rows, cols) uint16 stored pixel values of slice k: phantom x bias field x gain, plus Rician noise."""
    world = stack.pixel_world(k)
    image = spine.render(world, sequence)
    rel = (world - stack.centers[k]) / 150.0  # about -1..1 over the field of view
    bias = np.exp(rel @ look["bias"])  # smooth multiplicative coil sensitivity
    signal = image * bias
    noise = look["noise"]
    noisy = np.hypot(signal + noise * rng.standard_normal(signal.shape), noise * rng.standard_normal(signal.shape))
    return np.clip(np.rint(noisy * look["gain"]), 0, 65535).astype(np.uint16)
