"""Acquisition geometry of the synthetic series: where each slice is, and what its pixels show.

All positions are world LPS mm; pixel indices follow DICOM: x = column, y = row. A series is a list of
stacks; each stack is a set of parallel, equally spaced slices with one ImageOrientationPatient (r, c),
r the direction of increasing column, c of increasing row, and slice normal n = r x c.

Planning uses the nominal anatomy (`Spine.spine_to_world(..., nominal=True)`, without the slip of an
anterolisthesis) and random nuisance only, so that nothing global about a series (its field of view, position,
slice count) depends on a grade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spine.synth.anatomy import BODY_HALF_DEPTH, CANAL_A, CANAL_HALF_DEPTH, LABELLED, Spine


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

    def __post_init__(self) -> None:
        self.normal = np.cross(self.row_dir, self.col_dir)  # r x c

    @property
    def step(self) -> float:
        """Median distance between neighbouring slices along the normal, mm (0 for one slice)."""
        if len(self.centers) < 2:
            return 0.0
        return float(np.median(np.abs(np.diff(self.centers @ self.normal))))

    def image_position(self, k: int) -> np.ndarray:
        """(3,) ImagePositionPatient of slice k: the world position of pixel (x=0, y=0)."""
        half_cols = (self.cols - 1) / 2 * self.pixel_spacing[1]
        half_rows = (self.rows - 1) / 2 * self.pixel_spacing[0]
        return self.centers[k] - half_cols * self.row_dir - half_rows * self.col_dir

    def pixel_world(self, k: int) -> np.ndarray:
        """(rows, cols, 3) world LPS mm (float32) of every pixel centre of slice k."""
        y = (np.arange(self.rows)[:, None, None] * self.pixel_spacing[0] * self.col_dir).astype(np.float32)
        x = (np.arange(self.cols)[None, :, None] * self.pixel_spacing[1] * self.row_dir).astype(np.float32)
        return self.image_position(k).astype(np.float32) + x + y

    def world_to_pixel(self, point: np.ndarray, k: int) -> tuple[float, float, float]:
        """Project a world point on slice k: (x = column, y = row, distance to the slice plane in mm)."""
        d = point - self.image_position(k)
        return (float(d @ self.row_dir / self.pixel_spacing[1]), float(d @ self.col_dir / self.pixel_spacing[0]),
                float(d @ self.normal))

    def contains(self, x: float, y: float) -> bool:
        return 0 <= x <= self.cols - 1 and 0 <= y <= self.rows - 1


@dataclass
class SeriesPlan:
    """One series: its stacks (cranial first for axial), the instance number of every slice, its tags."""

    description: str
    stacks: list[Stack]
    instance_numbers: list[list[int]]  # per stack, per slice (in the stack's spatial order)
    slice_thickness: float
    patient_position: str
    fov_mm: float = 0.0  # rows x row spacing
    coverage: str = "slab"  # sagittal "slab"; axial "block", "groups", "same-angle", "per-disc"
    levels: tuple[int, ...] = ()  # axial: the labelled discs (0 = L1/L2 .. 4 = L5/S1) it was planned on

    @property
    def n_files(self) -> int:
        return sum(len(s.centers) for s in self.stacks)

    def slices(self):
        """Yield (stack, slice index in stack, instance number) for every slice of the series."""
        for stack, numbers in zip(self.stacks, self.instance_numbers):
            for k, number in enumerate(numbers):
                yield stack, k, number

    def nearest(self, point: np.ndarray) -> tuple[int, int, float, float, float]:
        """The slice nearest to a world point whose image contains its projection:
        (stack index, slice index k, x = column, y = row, distance to that slice's plane in mm)."""
        best = None
        for si, stack in enumerate(self.stacks):
            for k in range(len(stack.centers)):
                x, y, dist = stack.world_to_pixel(point, k)
                key = (not stack.contains(x, y), abs(dist))
                if best is None or key < best[0]:
                    best = (key, (si, k, x, y, dist))
        return best[1]

    def covers(self, point: np.ndarray) -> bool:
        """Whether a slice passes within about half a step of the point, with the point inside its image."""
        si, k, x, y, dist = self.nearest(point)
        stack = self.stacks[si]
        return stack.contains(x, y) and abs(dist) <= 0.6 * max(stack.step, 2.0)

    def locate(self, point: np.ndarray) -> tuple[int, float, float, float]:
        """(instance number, x = column, y = row, distance in mm) of the nearest slice (`nearest`)."""
        si, k, x, y, dist = self.nearest(point)
        return self.instance_numbers[si][k], x, y, dist


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _orthogonal(v: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """v made perpendicular to normal, unit length."""
    return _unit(v - (v @ normal) * normal)


def _jitter(direction: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Tilt a unit vector by a random angle of up to about `degrees` (obliquity of a planned slab)."""
    return _unit(direction + np.tan(np.radians(degrees)) * rng.uniform(-1, 1, 3) / np.sqrt(3))


def _uniform(rng, bounds) -> float:
    """A value drawn in [low, high] (a single number is returned as it is)."""
    if np.ndim(bounds) == 0:
        return float(bounds)
    return float(rng.uniform(bounds[0], bounds[1]))


def _image_size(rng, size_range, fov_mm: float, nonsquare_rate: float) -> tuple[int, int, tuple[float, float]]:
    size = int(rng.integers(size_range[0] // 16, size_range[1] // 16 + 1)) * 16
    spacing = fov_mm / size
    cols = size
    if rng.random() < nonsquare_rate:  # phase-encoding FOV reduced: fewer columns, same spacing
        cols = int(round(size * rng.choice([0.75, 0.875]) / 16)) * 16
    return size, cols, (spacing, spacing)


def sagittal_required_points(spine: Spine) -> np.ndarray:
    """(n, 3) nominal world points every sagittal image shows: the vertebral bodies and canal from the T12/L1
    disc (the top of L1; T12 and above may be cut) down to the upper S1 body (the sacrum always shows), with the
    front of the bodies and the back of the canal."""
    column = spine.disc_t
    top = column[-LABELLED - 1] if len(column) > LABELLED else column[0] + 30.0
    ts = np.r_[top, spine.labelled_t, spine.labelled_t[-1] - 20.0]
    points = [[0.0, a, t] for t in ts for a in (-BODY_HALF_DEPTH, CANAL_A + CANAL_HALF_DEPTH)]
    return spine.spine_to_world(np.array(points), nominal=True)


def plan_sagittal(spine: Spine, description: str, rng: np.random.Generator, cfg,
                  place: tuple[float, float] | None = None) -> SeriesPlan:
    """A sagittal slab on the spine, normal along the patient's left-right axis with obliquity.

    ``place``: (vertical, horizontal) position of the image centre in [0, 1] within the range where the lumbar
    spine from the T12/L1 disc to the S1 body fits (with a margin); the two sagittal series of a study share
    it (with a small jitter). None: centred near L3/L4 as before version 2.
    """
    normal = -spine.rotation[:, 0] if rng.random() > 0.2 else spine.rotation[:, 0]  # usually toward right
    normal = _jitter(normal, cfg.obliquity_deg, rng)
    col_dir = _orthogonal(np.array([0.0, 0.0, -1.0]), normal)  # image rows run head -> feet
    row_dir = np.cross(col_dir, normal)  # so that r x c = n
    step = _uniform(rng, cfg.sag_spacing_mm)
    # the slab covers the foramina of both sides, around the (scoliotic) midline
    lateral = spine.spine_to_world(np.array([[0.0, 0.0, t] for t in spine.labelled_t]), nominal=True)
    across = lateral @ normal
    coverage = _uniform(rng, cfg.sag_coverage_mm)
    if description == "Sagittal T1":  # the foramina of both sides (x = 17..31 mm) are read on T1
        coverage = max(coverage, 68.0)
    coverage += float(across.max() - across.min())
    n_slices = int(np.clip(np.ceil(coverage / step), *cfg.sag_slices))
    fov = _uniform(rng, cfg.sag_fov_mm)
    rows, cols, spacing = _image_size(rng, cfg.sag_size, fov, cfg.nonsquare_rate)
    required = sagittal_required_points(spine)
    margin = 3.0
    v, w = required @ col_dir, required @ row_dir
    span_v = float(v.max() - v.min()) + 2 * margin
    if span_v > rows * spacing[0]:  # the lumbar spine must fit: widen the field of view
        spacing = (span_v / rows, span_v / rows)
    height, width = rows * spacing[0], cols * spacing[1]
    anchor = spine.spine_to_world(np.array([0.0, 15.0, 0.0]), nominal=True)  # behind the L3/L4 disc
    if place is None:
        centre_v = float(anchor @ col_dir) + rng.uniform(-15, 15)
        centre_w = float(anchor @ row_dir) + rng.uniform(-10, 10)
    else:
        lo_v, hi_v = v.max() + margin - height / 2, v.min() - margin + height / 2
        centre_v = lo_v + np.clip(place[0] + rng.uniform(-0.08, 0.08), 0, 1) * (hi_v - lo_v)
        # horizontally: the bodies and the canal inside, the centre from the front of the bodies to 60 mm
        # behind the canal
        lo_w, hi_w = w.max() + margin - width / 2, w.min() - margin + width / 2
        front, back = sorted([float(spine.spine_to_world(np.array([0.0, a, 0.0]), nominal=True) @ row_dir)
                              for a in (-20.0, CANAL_A + 45.0)])
        lo_w, hi_w = max(lo_w, front), min(hi_w, back)
        if hi_w < lo_w:
            lo_w = hi_w = float(anchor @ row_dir)
        centre_w = lo_w + np.clip(place[1] + rng.uniform(-0.08, 0.08), 0, 1) * (hi_w - lo_w)
    depth = float(np.mean(across)) + rng.uniform(-3, 3)
    centre = depth * normal + centre_v * col_dir + centre_w * row_dir  # (r, c, n) is an orthonormal basis
    offsets = (np.arange(n_slices) - (n_slices - 1) / 2) * step
    stack = Stack(row_dir, col_dir, centre + offsets[:, None] * normal, rows, cols, spacing)
    numbers = list(range(1, n_slices + 1))
    if rng.random() < cfg.reversed_instance_rate:
        numbers.reverse()
    return SeriesPlan(description, [stack], [numbers], step * float(rng.uniform(0.8, 1.0)),
                      _patient_position(rng), fov_mm=height)


def plan_axial(spine: Spine, rng: np.random.Generator, cfg, levels: list[int] | None = None,
               partial: bool = False) -> SeriesPlan:
    """Axial T2 through the labelled discs ``levels`` (default all five, 0 = L1/L2): one block, 2-3 blocks
    angled along groups of discs (gaps between them; sometimes sharing one angle: one stack with gaps), or one
    short block per disc. ``partial``: the coverage misses L5/S1 (mostly) or L1/L2."""
    levels = list(range(LABELLED)) if levels is None else list(levels)
    if partial and len(levels) > 3:
        levels = levels[:-1] if rng.random() < 0.7 else levels[1:]
    step = _uniform(rng, cfg.ax_spacing_mm)
    if rng.random() < cfg.ax_thin_rate:
        step = float(rng.uniform(1.2, 2.5))
    fov = _uniform(rng, cfg.ax_fov_mm)
    rows, cols, spacing = _image_size(rng, cfg.ax_size, fov, cfg.nonsquare_rate)
    feet_first = rng.random() < 0.2
    draw = rng.random()
    if draw < cfg.ax_per_disc_rate:
        coverage = "per-disc"
        groups, margins = [[lv] for lv in levels], None
    elif draw < cfg.ax_per_disc_rate + cfg.multi_stack_rate and len(levels) >= 2:
        coverage = "same-angle" if rng.random() < cfg.ax_same_angle_rate else "groups"
        groups, margins = _level_groups(levels, int(rng.integers(2, min(3, len(levels)) + 1)), rng), None
    else:
        coverage, groups = "block", [levels]
        # cranial, caudal margin, mm: short where the block stops short of L1/L2 or L5/S1 (no neighbour caught)
        margins = (rng.uniform(5.0, 35.0 if levels[0] == 0 else 15.0),
                   rng.uniform(5.0, 25.0 if levels[-1] == LABELLED - 1 else 15.0))
    centre_shift = np.array([rng.uniform(-8, 8), rng.uniform(0, 30)])  # in-plane (x, a) of the image centre
    shared = None
    if coverage == "same-angle":
        shared = _jitter(spine.tangent(float(np.mean(spine.labelled_t[levels]))), cfg.obliquity_deg, rng)
    stacks = []
    for group in groups:
        if coverage == "per-disc":
            n_slices = int(rng.integers(4, 8))
            half = (n_slices - 1) * step / 2 / spine.scale  # margins are scaled with the patient
            group_margins = (half, half)
        elif margins is None:
            group_margins = (rng.uniform(4.0, 14.0), rng.uniform(4.0, 14.0))
        else:
            group_margins = margins
        stacks.append(_axial_stack(spine, group, step, rows, cols, spacing, feet_first, group_margins,
                                   centre_shift, shared, rng, cfg))
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
                      "FFS" if feet_first else "HFS", fov_mm=rows * spacing[0], coverage=coverage,
                      levels=tuple(levels))


def _level_groups(levels: list[int], n_groups: int, rng) -> list[list[int]]:
    cuts = np.sort(rng.choice(np.arange(1, len(levels)), size=n_groups - 1, replace=False))
    return [list(g) for g in np.split(np.array(levels), cuts)]


def _axial_stack(spine: Spine, levels: list[int], step: float, rows: int, cols: int, spacing, feet_first,
                 margins, centre_shift, shared_normal, rng, cfg) -> Stack:
    disc_t = spine.labelled_t[np.array(levels)]
    t_mid = float(disc_t.mean())
    # Slices parallel to the discs. Feet-first scanners write IOP (-1,0,0, 0,1,0): columns run to the
    # patient's right and the normal points to the feet; head-first ones (1,0,0, 0,1,0).
    side = -1.0 if feet_first else 1.0
    along_spine = shared_normal if shared_normal is not None else _jitter(spine.tangent(t_mid), cfg.obliquity_deg,
                                                                          rng)
    normal = side * along_spine
    row_dir = _orthogonal(side * spine.rotation[:, 0], normal)
    col_dir = np.cross(normal, row_dir)  # posterior in both cases, and r x c = n
    axis_point = spine.spine_to_world(np.array([centre_shift[0], centre_shift[1], t_mid]), nominal=True)
    discs = np.stack([spine.spine_to_world(np.array([0.0, 0.0, t]), nominal=True) for t in disc_t])
    along = (discs - axis_point) @ along_spine  # + toward the head
    scale = spine.scale
    first, last = along.min() - margins[1] * scale, along.max() + margins[0] * scale
    n_slices = int(np.floor((last - first) / step + 1e-6)) + 1
    offsets = first + np.arange(n_slices) * step + ((last - first) - (n_slices - 1) * step) / 2
    centers = axis_point + offsets[:, None] * along_spine
    if side < 0:
        centers = centers[::-1]  # in increasing order along the stack normal
    return Stack(row_dir, col_dir, centers, rows, cols, spacing)


def _patient_position(rng) -> str:
    return "HFS" if rng.random() > 0.2 else "FFS"


def render_slice(spine: Spine, stack: Stack, k: int, plan: SeriesPlan, look: dict,
                 rng) -> tuple[np.ndarray, np.ndarray]:
    """((rows, cols) uint16 stored pixel values of slice k: phantom (with wrap-around and motion ghosts if the
    series has them) x bias field x gain, plus Rician noise; (rows, cols) uint8 tissue at each pixel centre, an
    index into the spine's `tissue_labels`).

    Version 3 (``look['sequence']``, an `mr.Sequence`): the slice profile is integrated (the mean of three planes
    at -T/3, 0, +T/3 of the slice thickness T, a box profile by the midpoint rule, for the column's tissues; one
    plane below 2.5 mm), the pixel by a soft boundary one pixel wide, and k-space is truncated to the acquired share of the matrix
    (``look['acquired']``: phase, readout), which blurs and rings at the edges as a real reconstruction does
    (Gibbs), before the bias field and the noise."""
    world = stack.pixel_world(k)
    sequence = look.get("sequence")
    if sequence is None:
        image, tissue = spine.render(world, plan.description, look.get("contrast"), labels=True)
    else:
        thickness = plan.slice_thickness
        offsets = (-thickness / 3, 0.0, thickness / 3) if thickness >= 2.5 else (0.0,)
        image, tissue = spine.render(world, sequence, labels=True, edge_mm=min(stack.pixel_spacing) / 2.2,
                                     profile=(stack.normal, offsets))
    phase = stack.row_dir if look.get("phase_axis", 1) == 1 else stack.col_dir
    if look.get("wrap"):  # the body beyond the field of view folds in along the phase-encoding direction
        extent = (stack.cols * stack.pixel_spacing[1] if look.get("phase_axis", 1) == 1
                  else stack.rows * stack.pixel_spacing[0])
        for sign in (-1.0, 1.0):
            image = image + spine.render(world + sign * extent * phase, sequence or plan.description,
                                         look.get("contrast"))
    if look.get("ghost"):  # motion: faint copies shifted along the phase-encoding direction
        amplitude, fraction = look["ghost"]
        axis = look.get("phase_axis", 1)
        shift = max(1, int(round(image.shape[axis] * fraction)))
        image = image + amplitude * 0.5 * (np.roll(image, shift, axis) + np.roll(image, -shift, axis))
    if sequence is not None:
        image = truncate_kspace(image, look["acquired"], look.get("phase_axis", 1))
    rel = (world - stack.centers[k].astype(np.float32)) / np.float32(150.0)  # about -1..1 over the field of view
    bias = np.exp(rel @ look["bias"].astype(np.float32))  # smooth multiplicative coil sensitivity
    signal = image * bias
    noise = np.float32(look["noise"])
    real = signal + noise * rng.standard_normal(signal.shape, dtype=np.float32)
    noisy = np.hypot(real, noise * rng.standard_normal(signal.shape, dtype=np.float32))
    return np.clip(np.rint(noisy * look["gain"]), 0, 65535).astype(np.uint16), tissue


def truncate_kspace(image: np.ndarray, acquired: tuple[float, float], phase_axis: int) -> np.ndarray:
    """The image reconstructed from the central share of its k-space: ``acquired`` = (phase, readout) shares of
    the matrix, the phase-encoding direction along ``phase_axis`` (1: columns, 0: rows); zero-filled, no
    apodisation, so sharp edges ring (Gibbs). Real-valued (the magnitude comes with the noise)."""
    from scipy import fft

    spectrum = fft.rfft2(image)  # the columns' axis holds the non-negative frequencies only
    rows, cols = image.shape
    share = (acquired[0], acquired[1]) if phase_axis == 0 else (acquired[1], acquired[0])
    keep_rows = np.abs(fft.fftfreq(rows)) * rows <= share[0] * rows / 2
    keep_cols = fft.rfftfreq(cols) * cols <= share[1] * cols / 2
    spectrum *= keep_rows[:, None] & keep_cols[None, :]
    return fft.irfft2(spectrum, s=image.shape).astype(np.float32)
