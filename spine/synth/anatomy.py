"""An analytic spine phantom: where the structures are, and how bright each is on each sequence.

Frames, all in millimetres:
- world: DICOM patient coordinates, LPS.
- canonical: the patient frame of one study before its pose, x left, y posterior, z head, origin at the
  centre of the L3/L4 disc. world = origin + scale * rotation @ canonical.
- spine: (x, a, t) with x = left-right offset from the midline, t = arc length along the centreline of the
  vertebral bodies (+ toward the head, 0 at L3/L4), a = offset from that centreline, + posterior. In the
  sagittal plane the centreline is a circular arc whose centre lies posterior of the spine (lordosis: the
  lumbar spine is convex anteriorly), straight above ``straight_above`` (the lower thoracic spine). A
  scoliotic spine also bends to the side (``scoliosis``: a lateral bump of the centreline, the discs tilted
  with it), and an anterolisthesis shifts every vertebra above a disc forward (``listhesis``).

The column: ``disc_t`` holds every modelled disc, cranial first; the **last five are the labelled ones**,
L1/L2 .. L5/S1, counted up from the sacrum. Below the lowest (mobile) disc lies the sacrum, above the labelled
discs more vertebrae; the ``n_lumbar`` vertebrae above the sacrum are lumbar-type (no ribs), those above them
carry rib heads. A transitional spine has 4 or 6 lumbar-type vertebrae: counted from the sacrum the labelled
discs stay the lowest five, counted from the ribs they would not.

Grades are rendered as *narrowing* values in [0, 1] (see :mod:`spine.synth.labels`): a narrowing of 0 is a
wide-open structure, 1 is fully closed. Each condition changes only its own structure, and by an amount that
is a function of its narrowing only; *which* tissue does the narrowing is nuisance (a random mix per level):
- spinal canal stenosis: the thecal sac loses ``CANAL_CLOSE_MM * n`` of its depth at the disc, from the front
  (disc bulge, and the step of an anterolisthesis) and from behind (ligamentum flavum thickening);
  degenerated discs are also darker on T2 and lower (disc height loss);
- neural foraminal narrowing: the fat-filled foramen lateral to the canal shrinks around the nerve root
  (bright fat on T1 and plain T2; dark on STIR);
- subarticular stenosis: the lateral recess of the thecal sac shrinks by ``0.85 n``, filled by the facet
  joint (hypertrophy) and the lateral ligamentum flavum in a random mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spine.constants import CONDITIONS, LEVELS
from spine.synth import mr
from spine.synth.canvas import SOFT_REACH, Canvas, ellipse_sdf

# Dimensions of the average study, mm, before the study's scale.
BODY_HALF_WIDTH, BODY_HALF_DEPTH = 22.0, 16.0  # vertebral body cross-section (x, a)
CANAL_A = 27.0  # centre of the spinal canal behind the body centreline
CANAL_HALF_WIDTH, CANAL_HALF_DEPTH = 11.0, 8.0
CANAL_CLOSE_MM = 0.85 * 2 * (CANAL_HALF_DEPTH - 1.0)  # depth of the thecal sac closed at narrowing 1
FORAMEN_X = 24.0  # |x| of the neural foramina (parasagittal)
FORAMEN_A = CANAL_A - 3.0
FORAMEN_U = 4.0  # foramina sit just cranial to their disc
RECESS_X = 10.5  # |x| of the subarticular (lateral) recesses
RECESS_A = CANAL_A - 3.0
FACET_X, FACET_A = 14.5, CANAL_A + 4.0
RIB_X, RIB_A = 29.0, 9.0  # rib heads beside the thoracic bodies
SAC_END_MM = 45.0  # the dural sac ends this far below the lowest disc (about S2)
SACRUM_MM = 100.0  # length of the sacrum below the lowest disc
EDGE_MM = 0.6  # width of the soft tissue boundaries (partial volume)
LABELLED = len(LEVELS)  # the last five discs of the column

# Relative brightness of each tissue on (sagittal T1, sagittal T2/STIR, axial T2). Series override some (fat
# suppression, marrow) through the ``contrast`` argument of `Spine.render`.
TISSUE_CONTRAST: dict[str, tuple[float, float, float]] = {
    "muscle": (0.30, 0.22, 0.25),
    "fat": (0.95, 0.40, 0.75),
    "marrow": (0.65, 0.40, 0.42),
    "bone": (0.33, 0.26, 0.22),  # pedicles, laminae, facets, spinous processes, the rim of the rib heads
    "disc": (0.35, 0.80, 0.65),
    "csf": (0.12, 1.00, 1.00),
    "nerve": (0.30, 0.30, 0.30),
    "ligament": (0.28, 0.16, 0.18),  # ligamentum flavum
}
SEQUENCES: tuple[str, ...] = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")
# The tissue truth (`Spine.render(..., labels=True)`): label id -> name, in the issue's vocabulary where the
# tissue exists in this phantom (it has one disc tissue, no nucleus / annulus split, and no cauda equina).
TISSUE_LABELS: tuple[str, ...] = ("background", "csf", "nerve_root", "vertebral_body", "posterior_elements", "disc",
                                  "epidural_fat", "fat", "muscle", "ligamentum_flavum", "rib")
# Generator version 3 (MR physics, refined anatomy): the issue's names, plus the ribs, the conus medullaris and the
# abdominal contents in front of the psoas.
TISSUE_LABELS_V3: tuple[str, ...] = (
    "background", "csf", "cauda_equina", "nerve_root", "vertebral_body", "cortical_bone", "posterior_elements",
    "disc_nucleus", "disc_annulus", "epidural_fat", "fat", "muscle", "ligamentum_flavum", "rib", "spinal_cord",
    "viscera")
# painted kind -> label name, per version
_LABEL_OF = {"csf": "csf", "nerve": "nerve_root", "marrow": "vertebral_body", "bone": "posterior_elements",
             "disc": "disc", "fat": "fat", "muscle": "muscle", "ligament": "ligamentum_flavum"}
_LABEL_OF_V3 = {**_LABEL_OF, "disc": "disc_annulus", "nucleus": "disc_nucleus", "cortical": "cortical_bone",
                "cauda": "cauda_equina", "viscera": "viscera", "cord": "spinal_cord"}
N_CAUDA_ROOTS = 10  # roots of the cauda equina drawn in the thecal sac (version 3)


@dataclass
class Spine:
    """The anatomy and pose of one study.

    Attributes:
        origin: (3,) world LPS mm of the L3/L4 disc centre.
        rotation: (3, 3) canonical -> world rotation (columns: canonical x, y, z in world LPS).
        scale: size of this patient relative to the average.
        radius: lordosis radius of the centreline arc, canonical mm.
        disc_t: (D,) arc position of every disc, cranial first; the last five are L1/L2 .. L5/S1.
        disc_height: (D,) canonical mm.
        narrowing: condition -> (5,) narrowing in [0, 1] per labelled level L1/L2 .. L5/S1.
        n_lumbar: lumbar-type (rib-free) vertebrae above the sacrum (5; 4 or 6 in transitional anatomy).
        straight_above: arc position above which the centreline is straight (inf: the arc throughout).
        scoliosis: (amplitude mm, centre t, width mm) of the lateral bump s(t) = A exp(-((t - c) / w)^2).
        listhesis: (D,) forward slip (mm) of the vertebra above each disc over the one below.
        lf_share: (D,) share of the canal narrowing (besides the slip's step) due to ligamentum flavum
            thickening, from behind; the rest is disc bulge, from the front.
        facet_share: (2, D) share of the (left, right) recess narrowing due to facet hypertrophy; the rest is
            lateral ligamentum flavum.
        sacral_disc: height (mm) of a rudimentary S1/S2 disc remnant; 0 for none.
        marrow: brightness factor of the vertebral marrow (fatty or not; version 2).
        version: 2 (shapes with one brightness per tissue, `TISSUE_CONTRAST`) or 3 (MR physics: `render` takes a
            `spine.synth.mr.Sequence`; cortical rims, nucleus and annulus, cauda equina, traversing roots, psoas
            and paraspinal muscles, marrow texture).
        marrow_fat: version 3: mean fat fraction of the vertebral marrow.
        marrow_waves: version 3: (W, 5) rows (kx, ka, kt, phase, amplitude) of the marrow's fat-fraction texture,
            cycles per mm in spine coordinates.
        degeneration: version 3: (D,) nucleus degeneration in [0, 1] of every disc (T2 shortened toward the
            annulus'); it follows the canal narrowing of the labelled discs, with nuisance.
        cauda: version 3: (N_CAUDA_ROOTS, 2) (x, a) offsets (mm) of the cauda equina's roots from the centre of
            the thecal sac, before its compression.
    """

    origin: np.ndarray
    rotation: np.ndarray
    scale: float
    radius: float
    disc_t: np.ndarray
    disc_height: np.ndarray
    narrowing: dict[str, np.ndarray]
    n_lumbar: int = 5
    straight_above: float = float("inf")
    scoliosis: tuple[float, float, float] = (0.0, 0.0, 80.0)
    listhesis: np.ndarray | None = None
    lf_share: np.ndarray | None = None
    facet_share: np.ndarray | None = None
    sacral_disc: float = 0.0
    marrow: float = 1.0
    version: int = 2
    marrow_fat: float = 0.4
    marrow_waves: np.ndarray | None = None
    degeneration: np.ndarray | None = None
    cauda: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.disc_t = np.asarray(self.disc_t, dtype=np.float64)
        self.disc_height = np.asarray(self.disc_height, dtype=np.float64)
        n_discs = len(self.disc_t)
        if n_discs < LABELLED or len(self.disc_height) != n_discs:
            raise ValueError(f"need at least {LABELLED} discs with a height each, got {n_discs}")
        zeros = np.zeros(n_discs)
        self.listhesis = zeros.copy() if self.listhesis is None else np.asarray(self.listhesis, dtype=np.float64)
        self.lf_share = zeros.copy() if self.lf_share is None else np.asarray(self.lf_share, dtype=np.float64)
        self.facet_share = (np.ones((2, n_discs)) if self.facet_share is None
                            else np.asarray(self.facet_share, dtype=np.float64))
        vertebra_mid = np.r_[self.disc_t[0] + 15.0, (self.disc_t[:-1] + self.disc_t[1:]) / 2, -np.inf]
        self._vertebra_mid = vertebra_mid  # vertebra k lies between discs k-1 and k (0: above the column)
        self._ribbed = np.arange(n_discs + 1) <= n_discs - 1 - self.n_lumbar
        self.degeneration = zeros.copy() if self.degeneration is None else np.asarray(self.degeneration, np.float64)
        self.marrow_waves = np.zeros((0, 5)) if self.marrow_waves is None else np.asarray(self.marrow_waves)
        self.cauda = np.zeros((0, 2)) if self.cauda is None else np.asarray(self.cauda, dtype=np.float64)

    @property
    def tissue_labels(self) -> tuple[str, ...]:
        """Label id -> tissue name of `render(..., labels=True)` (the version's vocabulary)."""
        return tissue_labels(self.version)

    @property
    def column_narrowing(self) -> dict[str, np.ndarray]:
        """condition -> (D,) narrowing of every disc of the column (the unlabelled ones are normal)."""
        pad = np.zeros(len(self.disc_t) - LABELLED)
        return {c: np.r_[pad, np.asarray(self.narrowing[c], dtype=np.float64)] for c in CONDITIONS}

    @property
    def canal_closure(self) -> tuple[np.ndarray, np.ndarray]:
        """(front, back): (D,) mm of the thecal sac's depth closed at each disc from the front (disc bulge and
        the step of a slip) and from behind (ligamentum flavum). front + back = CANAL_CLOSE_MM * narrowing."""
        total = CANAL_CLOSE_MM * self.column_narrowing["spinal_canal_stenosis"]
        step = np.minimum(self.listhesis, 0.7 * total)  # the slip's share of the narrowing, at most its size
        back = (total - step) * self.lf_share
        return total - back, back

    @property
    def labelled_t(self) -> np.ndarray:
        """(5,) arc positions of L1/L2 .. L5/S1."""
        return self.disc_t[-LABELLED:]

    # ---- frames -------------------------------------------------------------------------------------
    def world_to_spine(self, world: np.ndarray, nominal: bool = False) -> np.ndarray:
        """(..., 3) world LPS mm -> (..., 3) spine (x, a, t) canonical mm. ``nominal``: without the slip of an
        anterolisthesis (the pose a technician plans on)."""
        world = np.asarray(world)
        dtype = world.dtype if world.dtype == np.float32 else np.float64  # rendering runs in float32
        q = (world.astype(dtype, copy=False) - self.origin.astype(dtype)) @ (self.rotation / self.scale).astype(dtype)
        big_x, a, big_t = self._sagittal_inverse(q)
        x, t = self._lateral_inverse(big_x, big_t)
        if not nominal:
            a = a + self._slip(t)
        return np.stack([x, a, t], axis=-1)

    def spine_to_world(self, spine: np.ndarray, nominal: bool = False) -> np.ndarray:
        """(..., 3) spine (x, a, t) canonical mm -> (..., 3) world LPS mm."""
        spine = np.asarray(spine, dtype=np.float64)
        x, a, t = spine[..., 0], spine[..., 1], spine[..., 2]
        if not nominal:
            a = a - self._slip(t)
        big_x, big_t = self._lateral_forward(x, t)
        q = self._sagittal_forward(big_x, a, big_t)
        return self.origin + self.scale * q @ self.rotation.T

    def tangent(self, t: float) -> np.ndarray:
        """(3,) world unit vector along the (nominal) centreline at arc position t, pointing to the head."""
        ends = self.spine_to_world(np.array([[0.0, 0.0, t - 0.5], [0.0, 0.0, t + 0.5]]), nominal=True)
        d = ends[1] - ends[0]
        return d / np.linalg.norm(d)

    def _sagittal_forward(self, x, a, t) -> np.ndarray:
        r, t_hi = self.radius, self.straight_above
        theta = np.minimum(t, t_hi) / r
        d = r - a
        y, z = r - d * np.cos(theta), d * np.sin(theta)
        if np.isfinite(t_hi):
            extra = np.maximum(t - t_hi, 0.0)
            th = t_hi / r
            y, z = y + extra * np.sin(th), z + extra * np.cos(th)
        return np.stack(np.broadcast_arrays(x, y, z), axis=-1)

    def _sagittal_inverse(self, q: np.ndarray):
        r, t_hi = self.radius, self.straight_above
        dy, z = r - q[..., 1], q[..., 2]
        a = r - np.hypot(dy, z)
        t = r * np.arctan2(z, dy)
        if np.isfinite(t_hi):
            th = t_hi / r
            rel_y, rel_z = q[..., 1] - r * (1 - np.cos(th)), z - r * np.sin(th)
            along = rel_y * np.sin(th) + rel_z * np.cos(th)
            straight = along > 0
            t = np.where(straight, t_hi + along, t)
            a = np.where(straight, rel_y * np.cos(th) - rel_z * np.sin(th), a)
        return q[..., 0], a, t

    def _bump(self, t):
        """Lateral offset s(t) of the centreline and its slope s'(t)."""
        amplitude, centre, width = self.scoliosis
        s = amplitude * np.exp(-(((t - centre) / width) ** 2))
        return s, -2.0 * (t - centre) / width**2 * s

    def _lateral_forward(self, x, t):
        if self.scoliosis[0] == 0:
            return x, t
        s, ds = self._bump(t)
        k = 1.0 / np.sqrt(1.0 + ds**2)  # the point is x along the unit normal (1, -s') of the curve (s(t), t)
        return s + x * k, t - x * ds * k

    def _lateral_inverse(self, big_x, big_t):
        if self.scoliosis[0] == 0:
            return big_x, big_t
        t = big_t
        for _ in range(5):  # foot of the normal on the curve: (X - s(t)) s'(t) + (T - t) = 0
            s, ds = self._bump(t)
            t = big_t + (big_x - s) * ds
        s, ds = self._bump(t)
        return ((big_x - s) - (big_t - t) * ds) / np.sqrt(1.0 + ds**2), t

    def _slip(self, t):
        """Forward (anterior) shift at arc position t of the vertebrae above slipped discs, mm."""
        shift = np.zeros_like(t, dtype=np.result_type(t, np.float32))
        for k in np.flatnonzero(self.listhesis):
            s = np.clip((t - self.disc_t[k]) / max(self.disc_height[k], 4.0) + 0.5, 0.0, 1.0)
            shift = shift + self.listhesis[k] * s * s * (3 - 2 * s)
        return shift

    # ---- labelled points ----------------------------------------------------------------------------
    def label_point(self, condition: str, level_index: int) -> np.ndarray:
        """(3,) world LPS mm of the structure a radiologist marks for this condition and labelled level."""
        t = self.labelled_t[level_index]
        side = 1.0 if condition.startswith("left") else -1.0  # patient left is +x
        if condition == "spinal_canal_stenosis":
            x, a = 0.0, CANAL_A
        elif "foraminal" in condition:
            x, a, t = side * FORAMEN_X, FORAMEN_A, t + FORAMEN_U
        else:
            x, a = side * RECESS_X, RECESS_A
        return self.spine_to_world(np.array([x, a, t]))

    def disc_centre(self, level_index: int, nominal: bool = False) -> np.ndarray:
        """(3,) world LPS mm of the centre of a labelled disc."""
        return self.spine_to_world(np.array([0.0, 0.0, self.labelled_t[level_index]]), nominal=nominal)

    # ---- rendering ----------------------------------------------------------------------------------
    def render(self, world: np.ndarray, sequence, contrast: dict[str, float] | None = None, labels: bool = False,
               edge_mm: float = EDGE_MM, profile: tuple[np.ndarray, tuple[float, ...]] | None = None
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Noise-free brightness (about 0..1) at (..., 3) world LPS mm points.

        ``sequence``: one of ``SEQUENCES`` (version 2: the `TISSUE_CONTRAST` table, ``contrast`` overriding some
        tissues: fat suppression, marrow; version 3: that description's `mr.typical_sequence`) or a
        `spine.synth.mr.Sequence` (version 3: each tissue's signal from the sequence's equation). ``edge_mm``: the
        width parameter of the soft tissue boundaries (partial volume in the image plane, world mm; about a pixel
        / 2.2 for a linear ramp one pixel wide). ``profile``: (unit normal (3,) world, offsets world mm): the
        brightness is the mean over the planes shifted by each offset along the normal (the slice profile
        integrated); the trunk's large muscles and fat are taken at the points
        themselves, the column's tissues on every plane. ``labels=True`` also returns the tissue at each point
        (uint8 index into `tissue_labels`: the last tissue painted whose signed distance is negative there, the
        same shapes in the same order as the brightness), at the points themselves."""
        world = np.asarray(world, dtype=np.float32)
        x, a, t = np.moveaxis(self.world_to_spine(world), -1, 0)
        canvas = Canvas(np.zeros_like(x), self._tissue_values(sequence, contrast), edge_mm / self.scale,
                        self.tissue_labels, _LABEL_OF_V3 if self.version >= 3 else _LABEL_OF, labels)
        trunk = ellipse_sdf(x, a + 45.0, 165.0, 125.0)
        canvas.paint(trunk, "fat")
        canvas.paint(trunk + 14.0, "muscle")  # inside 14 mm subcutaneous fat
        if self.version >= 3:
            self._paint_trunk(canvas, x, a, t, trunk)
        # everything else lies in a box around the column: rendered there only
        box = (50.0, -30.0, 76.0) if self.version >= 3 else (55.0, -40.0, 82.0)  # |x|, a: version 2's kept as it was
        near = ((np.abs(x) < box[0]) & (a > box[1]) & (a < box[2]) & (t < self.disc_t[0] + 45.0)
                & (t > self.disc_t[-1] - SACRUM_MM - 10.0))
        if near.any():
            under = canvas.img[near]
            column = canvas.part(near)
            if profile is not None:
                column.boundary = np.full(under.shape, np.inf, dtype=np.float32)
            self._render_column(column, x[near], a[near], t[near])
            canvas.put(near, column)
            if profile is not None and len(profile[1]) > 1:
                canvas.img[near] = self._integrate(column, under, world[near], a[near], *profile)
        return (canvas.img, canvas.tissue) if labels else canvas.img

    def _integrate(self, column: Canvas, under: np.ndarray, world: np.ndarray, a: np.ndarray, normal: np.ndarray,
                   offsets: tuple[float, ...]) -> np.ndarray:
        """The column's brightness averaged over the planes at ``offsets`` (world mm) along ``normal``. Points
        farther than the largest offset from every boundary painted on the centre plane (``column.boundary``, a
        lower bound of the distance in spine mm) keep the centre's value: nothing changes within their reach. A
        world offset spans up to r / (r - a) / scale spine mm behind the centreline (the lordotic arc's radius
        r), so the reach is taken per point; the marrow texture is slow enough (12-30 mm) to ignore."""
        stretch = self.radius / (self.radius - np.clip(a, 0.0, 0.8 * self.radius))
        reach = max(abs(o) for o in offsets) / self.scale * 1.05 * stretch + SOFT_REACH * column.edge
        mixed = column.boundary < reach
        total = column.img.copy()
        if mixed.any():
            others = [o for o in offsets if o != 0]  # the other planes' points rendered together (one pass)
            normal = np.asarray(normal, dtype=np.float32)
            shifted = np.concatenate([world[mixed] + np.float32(o) * normal for o in others])
            sx, sa, st = np.moveaxis(self.world_to_spine(shifted), -1, 0)
            plane = Canvas(np.tile(under[mixed], len(others)), column.value, column.edge, column.names,
                           column.label_of, False)
            self._render_column(plane, sx, sa, st)
            sums = plane.img.reshape(len(others), -1).sum(axis=0)
            if len(others) < len(offsets):
                sums += column.img[mixed]
            total[mixed] = sums / np.float32(len(offsets))
        return total

    def _tissue_values(self, sequence, contrast: dict[str, float] | None) -> dict:
        """Painted kind -> brightness (a number, or a function of the points for version 3's marrow and
        nucleus)."""
        if isinstance(sequence, str) and self.version >= 3:
            if contrast:
                raise ValueError("version 3 takes an mr.Sequence for a fat-suppressed or other contrast")
            sequence = mr.typical_sequence(sequence)
        if isinstance(sequence, str):
            col = SEQUENCES.index(sequence)
            value = {tissue: v[col] for tissue, v in TISSUE_CONTRAST.items()}
            value.update(contrast or {})
            value["marrow"] *= self.marrow
            value["col"] = col
            return value
        value = sequence.tissue_values()
        value.update(disc=value["annulus"], cauda=value["nerve"], cord=value["nerve"], col=1,
                     nucleus_scale=sequence.scale, sequence=sequence)
        return value

    def _paint_trunk(self, canvas: Canvas, x, a, t, trunk) -> None:
        """Version 3: the abdominal contents in front of the spine behind a muscular wall, the psoas muscles
        beside the lumbar bodies (growing toward the sacrum) in a thin fat plane, the paraspinal muscles."""
        canvas.paint(np.maximum(trunk + 20.0, ellipse_sdf(x, a + 78.0, 125.0, 62.0)), "viscera")
        region = (np.abs(x) < 60.0) & (a > -24.0) & (a < 93.0)  # where the psoas and paraspinal muscles lie
        if not region.any():
            return
        whole, canvas = canvas, canvas.part(region)
        x, a, t, trunk = x[region], a[region], t[region], trunk[region]
        top = self.disc_t[-LABELLED - 1]
        grow = np.clip((top - t) / max(top - self.disc_t[-1], 1.0), 0.0, 1.0)  # 0 at T12/L1, 1 at L5/S1
        in_range = np.maximum(t - top - 10.0, (self.disc_t[-1] - 40.0) - t)
        for side in (1.0, -1.0):
            psoas = ellipse_sdf(side * x - (BODY_HALF_WIDTH + 8.0 + 8.0 * grow), a + 2.0 - 6.0 * grow,
                                6.0 + 10.0 * grow, 6.0 + 8.0 * grow)
            psoas = np.maximum(psoas, in_range)
            canvas.paint(psoas - 1.2, "fat")
            canvas.paint(psoas, "muscle")
            erector = np.maximum(ellipse_sdf(side * x - 24.0, a - (CANAL_A + 38.0), 20.0, 24.0),
                                 trunk + 14.0)  # under the subcutaneous fat
            canvas.paint(erector - 1.2, "fat")
            canvas.paint(erector, "muscle")
        whole.put(region, canvas)

    def _marrow(self, value: dict, x, a, t):
        """Marrow brightness: version 2 one value; version 3 a function of a mask of the points giving the
        two-component mix at the local fat fraction (the study's mean plus a smooth texture of random waves,
        fixed to the anatomy), evaluated only where a shape paints marrow."""
        if self.version < 3:
            return value["marrow"]

        def at(mask: np.ndarray) -> np.ndarray:
            px, pa, pt = x[mask], a[mask], t[mask]
            fraction = np.full(px.shape, self.marrow_fat, dtype=np.float32)
            for kx, ka, kt, phase, amplitude in self.marrow_waves:
                angle = np.float32(2 * np.pi * kx) * px + np.float32(2 * np.pi * ka) * pa
                angle += np.float32(2 * np.pi * kt) * pt + np.float32(phase)
                fraction += np.float32(amplitude) * np.cos(angle)
            np.clip(fraction, 0.05, 0.95, out=fraction)
            return fraction * value["fat"] + (1.0 - fraction) * value["red_marrow"]

        return at

    def _bone(self, canvas: Canvas, sdf, marrow, label: str | None = None) -> None:
        """Bone: version 2 one tissue; version 3 a cortex about 1 mm thick around marrow."""
        if self.version < 3:
            canvas.paint(sdf, "bone", label=label)
            return
        canvas.paint(sdf, "cortical")
        canvas.paint(sdf + 1.0, "marrow", marrow, label=label or "posterior_elements")

    def _render_column(self, canvas: Canvas, x, a, t) -> None:
        """The column's tissues painted over the canvas (the points near the column)."""
        v3 = self.version >= 3
        value = canvas.value
        level = self._nearest_disc(t)
        u = t - self.disc_t[level]  # signed distance from the nearest disc plane, + cranial
        n = {c: v[level] for c, v in self.column_narrowing.items()}
        canal_front, canal_back = self.canal_closure
        lowest = self.disc_t[-1]
        marrow = self._marrow(value, x, a, t)

        self._bone(canvas, _posterior_elements_sdf(x, a, u, v3), marrow)
        epidural = ellipse_sdf(x, a - CANAL_A, CANAL_HALF_WIDTH, CANAL_HALF_DEPTH)
        canvas.paint(epidural, "fat", label="epidural_fat")
        # ligamentum flavum: a thin band behind the sac, thickened at the disc by its share of the narrowing
        bump = np.exp(-((u / 7.0) ** 2) - (x / 10.0) ** 2)
        back = canal_back[level] * bump
        canvas.paint(np.maximum(epidural, CANAL_A + CANAL_HALF_DEPTH - 2.5 - back - a), "ligament")
        for side, name in ((1.0, "left"), (-1.0, "right")):
            grow = (1.0 - self.facet_share[0 if side > 0 else 1][level]) * n[f"{name}_subarticular_stenosis"]
            lateral = ellipse_sdf(side * x - (RECESS_X - 1.0), a - (RECESS_A + 4.5), 1.5 + 3.0 * grow,
                                  1.2 + 2.5 * grow)
            canvas.paint(np.maximum(lateral, np.abs(u) - 9.0), "ligament")
        # disc material in front of the sac where the disc bulges (or the body below a slip steps) into it
        front = canal_front[level] * bump
        degenerate = 1.0 - 0.45 * n["spinal_canal_stenosis"]  # version 2: desiccated discs are darker on T2
        disc_value = value["disc"] * (degenerate if value["col"] and not v3 else 1.0)
        canvas.paint(np.maximum(epidural, a - (CANAL_A - CANAL_HALF_DEPTH + front)), "disc", disc_value)
        sac = self._thecal_sac_sdf(x, a, u, n, front, back)
        sac = np.maximum(sac, (lowest - SAC_END_MM) - t)
        canvas.paint(sac, "csf")
        if v3:
            self._paint_sac_contents(canvas, x, a, t, u, sac, front, back, n)
        # vertebral bodies from above the column down through the sacrum (wider at the alae, tapering)
        below = np.clip((lowest - t) / SACRUM_MM, 0.0, 1.0)
        in_column = np.maximum(t - self.disc_t[0] - 30.0, (lowest - SACRUM_MM) - t)
        body = ellipse_sdf(x, a + 1.0 + 8.0 * below, BODY_HALF_WIDTH + 20.0 * np.clip(4.0 * below, 0.0, 1.0),
                           BODY_HALF_DEPTH * (1.0 - 0.45 * below))
        if v3:  # the cortex around the body and the endplates at each disc
            height = self.disc_height[level]
            bone = np.maximum(body, in_column)
            endplate = np.abs(np.abs(u) - height / 2 - 0.5) - 0.5  # < 0 in the 1 mm beyond the disc's surface
            canvas.paint(bone, "cortical")
            canvas.paint(np.maximum(bone + 1.0, -endplate), "marrow", marrow)
        else:
            canvas.paint(np.maximum(body, in_column), "marrow")
        disc = np.maximum(ellipse_sdf(x, a + 1.0, BODY_HALF_WIDTH + 1.5, BODY_HALF_DEPTH + 1.0),
                          np.abs(u) - self.disc_height[level] / 2)
        canvas.paint(disc, "disc", disc_value)
        if v3:  # the nucleus: the inner part of the disc, its T2 signal lost with degeneration
            nucleus = np.maximum(ellipse_sdf(x, a + 0.5, 0.55 * BODY_HALF_WIDTH, 0.5 * BODY_HALF_DEPTH),
                                 np.abs(u) - 0.3 * self.disc_height[level])
            bright = value["nucleus_scale"] * value["sequence"].nucleus(self.degeneration[level])
            canvas.paint(nucleus, "nucleus", bright.astype(np.float32))
        if self.sacral_disc > 0:  # rudimentary S1/S2 disc: thin, smaller, dark
            us = t - (lowest - 0.8 * (self.disc_t[-2] - lowest))
            remnant = np.maximum(ellipse_sdf(x, a + 3.0, BODY_HALF_WIDTH - 6.0, BODY_HALF_DEPTH - 5.0),
                                 np.abs(us) - self.sacral_disc / 2)
            canvas.paint(remnant, "disc", 0.6 * value["disc"])
        for side, name in ((1.0, "left"), (-1.0, "right")):
            self._paint_foramen(canvas, side * x, a, u, n[f"{name}_neural_foraminal_narrowing"], v3)
            share = self.facet_share[0 if side > 0 else 1][level]
            radius = 3.5 * (1.0 + 0.9 * share * n[f"{name}_subarticular_stenosis"])
            facet = ellipse_sdf(side * x - FACET_X, a - FACET_A, radius, radius)
            self._bone(canvas, np.maximum(facet, np.abs(u) - 8.0), marrow)
        vertebra = np.searchsorted(-self.disc_t, -t)  # 0 above the top disc, k between discs k-1 and k
        ribbed = self._ribbed[vertebra]
        if ribbed.any():
            rib = np.maximum(ellipse_sdf(np.abs(x) - RIB_X, a - RIB_A, 7.0, 5.0),
                             np.abs(t - self._vertebra_mid[vertebra]) - 7.0)
            rib = np.where(ribbed, rib, 1e3)
            canvas.paint(rib, "cortical" if v3 else "bone", label="rib")
            canvas.paint(rib + 1.2, "marrow", marrow, label="rib")  # rim, marrow

    def _paint_sac_contents(self, canvas: Canvas, x, a, t, u, sac, front, back, n: dict) -> None:
        """Version 3: the cord above L1 (tapering into the conus), the cauda equina below it, and a traversing root
        in each lateral recess, all inside the thecal sac. The canal narrowing moves the roots together with the
        sac's walls (front and back), so a tight canal is filled by roots: the CSF around them is effaced; a
        narrowed recess closes on its traversing root."""
        inside = sac < SOFT_REACH * canvas.edge + 0.05  # every content lies inside the sac, its soft edge this far
        if not inside.any():
            return
        x, a, t, u, sac = x[inside], a[inside], t[inside], u[inside], sac[inside]
        front, back = np.broadcast_to(front, inside.shape)[inside], np.broadcast_to(back, inside.shape)[inside]
        n = {c: np.broadcast_to(v, inside.shape)[inside] for c, v in n.items()}
        depth = CANAL_HALF_DEPTH - 1.0
        squeeze = np.clip(1.0 - (front + back) / (2.0 * depth), 0.15, 1.0)  # the sac's remaining share of depth
        centre = CANAL_A + (front - back) / 2
        conus = self.labelled_t[0] + 8.0  # the cord ends at about the L1/L2 disc
        taper = np.clip((t - conus) / 25.0, 0.0, 1.0)
        cord = ellipse_sdf(x, a - CANAL_A - 1.0, 0.5 + 4.5 * taper, 0.5 + 3.5 * taper)
        roots = np.full(x.shape, 1e3, dtype=np.float32)
        for dx, da in self.cauda:
            root = ellipse_sdf(x - dx, a - (centre + da * squeeze), 1.1, 1.1)
            roots = np.minimum(roots, root)
        roots = np.maximum(roots, t - conus - 8.0)  # the cauda equina begins at the conus
        part = canvas.part(inside)
        part.paint(np.maximum(np.maximum(cord, sac), conus - t), "cord")
        part.paint(np.maximum(roots, sac), "cauda")
        for side, name in ((1.0, "left"), (-1.0, "right")):  # the traversing roots in the lateral recesses: a
            # narrowed recess flattens its root against the facet and the ligament (up to 1 mm beyond the sac)
            squeeze = n[f"{name}_subarticular_stenosis"] * np.clip(1.0 - (u / 9.0) ** 2, 0.0, 1.0)
            root = ellipse_sdf(side * x - (RECESS_X + 0.5), a - RECESS_A, 1.4 * (1.0 - 0.5 * squeeze),
                               1.4 * (1.0 + 0.3 * squeeze))
            part.paint(np.maximum(root, sac - 1.0), "nerve")
        canvas.put(inside, part)

    def _nearest_disc(self, t: np.ndarray) -> np.ndarray:
        # Discs are sorted cranial -> caudal (decreasing t); midpoints split the arc into per-disc zones.
        mids = (self.disc_t[:-1] + self.disc_t[1:]) / 2
        return np.searchsorted(-mids, -t)

    def _thecal_sac_sdf(self, x, a, u, n, front, back) -> np.ndarray:
        """CSF space: canal ellipse, indented by ``front`` mm from the front and ``back`` mm from behind at the
        disc, plus the two lateral recesses (shrunk by their narrowing)."""
        sac = ellipse_sdf(x, a - CANAL_A, CANAL_HALF_WIDTH - 1.0, CANAL_HALF_DEPTH - 1.0)
        sac = np.maximum(sac, CANAL_A - (CANAL_HALF_DEPTH - 1.0) + front - a)  # > 0 anterior of the front
        sac = np.maximum(sac, a - (CANAL_A + CANAL_HALF_DEPTH - 1.0 - back))  # > 0 posterior of the back
        for side, name in ((1.0, "left"), (-1.0, "right")):
            open_ = (1.0 - 0.85 * n[f"{name}_subarticular_stenosis"]) * np.clip(1.0 - (u / 9.0) ** 2, 0, 1)
            recess = ellipse_sdf(side * x - RECESS_X, a - RECESS_A, 4.5 * open_ + 1e-3, 3.5 * open_ + 1e-3)
            sac = np.minimum(sac, recess)
        return sac

    @staticmethod
    def _paint_foramen(canvas: Canvas, lateral_x, a, u, narrowing, v3: bool = False) -> None:
        """One side's foramen (lateral_x > 0 on that side): fat around a nerve root, between pedicles. Version 3
        deforms the root as the foramen closes (flattened cranio-caudally, pushed against the disc)."""
        band = np.abs(lateral_x - FORAMEN_X) - 7.0  # the foramen spans x = 17..31 mm from the midline
        height = 6.5 * (1.0 - 0.75 * narrowing)
        depth = 4.5 * (1.0 - 0.55 * narrowing)
        foramen = np.maximum(ellipse_sdf(u - FORAMEN_U, a - FORAMEN_A, height, depth), band)
        canvas.paint(foramen, "fat")
        if v3:
            root = ellipse_sdf(u - FORAMEN_U - 0.35 * height, a - FORAMEN_A, 1.8 * (1.0 - 0.4 * narrowing),
                               1.8 * (1.0 + 0.25 * narrowing))
        else:
            root = ellipse_sdf(u - FORAMEN_U - 0.35 * height, a - FORAMEN_A, 1.8, 1.8)
        canvas.paint(np.maximum(root, band), "nerve")


def tissue_labels(version: int) -> tuple[str, ...]:
    """Label id -> tissue name of the tissue truth a generator version writes."""
    return TISSUE_LABELS_V3 if version >= 3 else TISSUE_LABELS


def _posterior_elements_sdf(x, a, u, gaps: bool = False) -> np.ndarray:
    """Pedicles and laminae around the canal, the spinous process behind it. ``gaps`` (version 3): the spinous
    processes of neighbouring vertebrae separated at the disc level (the interspinous space)."""
    arch = ellipse_sdf(x, a - CANAL_A - 2.0, FORAMEN_X + 8.0, CANAL_HALF_DEPTH + 8.0)
    spinous = np.maximum(np.abs(x) - 4.0, np.abs(a - CANAL_A - 28.0) - 18.0)
    if gaps:
        spinous = np.maximum(spinous, 3.0 - np.abs(u + 6.0))  # the process points down: the gap lies below the disc
    return np.minimum(arch, spinous)


LEVEL_COUNT = len(LEVELS)
