"""An analytic lumbar spine phantom: where the structures are, and how bright each is on each sequence.

Frames, all in millimetres:
- world: DICOM patient coordinates, LPS.
- canonical: the patient frame of one study before its pose, x left, y posterior, z head, origin at the
  centre of the L3/L4 disc. world = origin + scale * rotation @ canonical.
- spine: (x, a, t) with x = canonical x (patient left), t = arc length along the lordotic centreline of
  the vertebral bodies (+ toward the head, 0 at L3/L4), a = offset from that centreline, + posterior.
  The centreline is a circular arc in the canonical y-z plane whose centre lies posterior of the spine
  (lordosis: the lumbar spine is convex anteriorly).

Grades are rendered as *narrowing* values in [0, 1] (see :mod:`spine.synth.labels`): a narrowing of 0 is a
wide-open structure, 1 is fully closed. Each condition changes only its own structure:
- spinal canal stenosis: a posterior disc bulge indents the thecal sac at the level (sagittal T2, axial);
- neural foraminal narrowing: the fat-filled foramen lateral to the canal shrinks around the nerve root
  (bright fat on sagittal T1; suppressed on the STIR-like sagittal T2);
- subarticular stenosis: the lateral recess of the thecal sac shrinks and the facet joint grows (axial T2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spine.constants import CONDITIONS, LEVELS

# Dimensions of the average study, mm, before the study's scale.
BODY_HALF_WIDTH, BODY_HALF_DEPTH = 22.0, 16.0  # vertebral body cross-section (x, a)
CANAL_A = 27.0  # centre of the spinal canal behind the body centreline
CANAL_HALF_WIDTH, CANAL_HALF_DEPTH = 11.0, 8.0
FORAMEN_X = 24.0  # |x| of the neural foramina (parasagittal)
FORAMEN_A = CANAL_A - 3.0
FORAMEN_U = 4.0  # foramina sit just cranial to their disc
RECESS_X = 10.5  # |x| of the subarticular (lateral) recesses
RECESS_A = CANAL_A - 3.0
FACET_X, FACET_A = 14.5, CANAL_A + 4.0
EDGE_MM = 0.6  # width of the soft tissue boundaries (partial volume)

# Relative brightness of each tissue on (sagittal T1, sagittal T2/STIR, axial T2).
TISSUE_CONTRAST: dict[str, tuple[float, float, float]] = {
    "muscle": (0.30, 0.22, 0.25),
    "fat": (0.95, 0.40, 0.75),  # fat is suppressed on the STIR-like sagittal T2
    "marrow": (0.65, 0.40, 0.42),
    "bone": (0.33, 0.26, 0.22),  # pedicles, laminae, facets, spinous processes
    "disc": (0.35, 0.80, 0.65),
    "csf": (0.12, 1.00, 1.00),
    "nerve": (0.30, 0.30, 0.30),
}
SEQUENCES: tuple[str, ...] = ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")


@dataclass
class Spine:
    """The anatomy and pose of one study.

    Attributes:
        origin: (3,) world LPS mm of the L3/L4 disc centre.
        rotation: (3, 3) canonical -> world rotation (columns: canonical x, y, z in world LPS).
        scale: size of this patient relative to the average.
        radius: lordosis radius of the centreline arc, canonical mm.
        disc_t: (6,) arc position of the discs T12/L1, L1/L2 .. L5/S1, canonical mm.
        disc_height: (6,) canonical mm.
        narrowing: condition -> (5,) narrowing in [0, 1] per level L1/L2 .. L5/S1.
    """

    origin: np.ndarray
    rotation: np.ndarray
    scale: float
    radius: float
    disc_t: np.ndarray
    disc_height: np.ndarray
    narrowing: dict[str, np.ndarray]

    # ---- frames -------------------------------------------------------------------------------------
    def world_to_spine(self, world: np.ndarray) -> np.ndarray:
        """(..., 3) world LPS mm -> (..., 3) spine (x, a, t) canonical mm."""
        q = (world - self.origin) @ self.rotation / self.scale
        dy, z = self.radius - q[..., 1], q[..., 2]
        a = self.radius - np.hypot(dy, z)
        t = self.radius * np.arctan2(z, dy)
        return np.stack([q[..., 0], a, t], axis=-1)

    def spine_to_world(self, spine: np.ndarray) -> np.ndarray:
        """(..., 3) spine (x, a, t) canonical mm -> (..., 3) world LPS mm."""
        x, a, t = spine[..., 0], spine[..., 1], spine[..., 2]
        theta, d = t / self.radius, self.radius - a
        q = np.stack([x, self.radius - d * np.cos(theta), d * np.sin(theta)], axis=-1)
        return self.origin + self.scale * q @ self.rotation.T

    def tangent(self, t: float) -> np.ndarray:
        """(3,) world unit vector along the centreline at arc position t, pointing to the head."""
        theta = t / self.radius
        return self.rotation @ np.array([0.0, np.sin(theta), np.cos(theta)])

    # ---- labelled points ----------------------------------------------------------------------------
    def label_point(self, condition: str, level_index: int) -> np.ndarray:
        """(3,) world LPS mm of the structure a radiologist marks for this condition and level."""
        t = self.disc_t[level_index + 1]
        side = 1.0 if condition.startswith("left") else -1.0  # patient left is +x
        if condition == "spinal_canal_stenosis":
            x, a = 0.0, CANAL_A
        elif "foraminal" in condition:
            x, a, t = side * FORAMEN_X, FORAMEN_A, t + FORAMEN_U
        else:
            x, a = side * RECESS_X, RECESS_A
        return self.spine_to_world(np.array([x, a, t]))

    # ---- rendering ----------------------------------------------------------------------------------
    def render(self, world: np.ndarray, sequence: str) -> np.ndarray:
        """Noise-free brightness (about 0..1) at (..., 3) world LPS mm points, for one of ``SEQUENCES``."""
        x, a, t = np.moveaxis(self.world_to_spine(world), -1, 0)
        col = SEQUENCES.index(sequence)
        level = self._nearest_disc(t)
        u = t - self.disc_t[level]  # signed distance from the nearest disc plane, + cranial
        n = {c: np.concatenate([[0.0], self.narrowing[c]])[level] for c in CONDITIONS}  # T12/L1: normal
        edge = EDGE_MM / self.scale

        def paint(image: np.ndarray, inside_sdf: np.ndarray, tissue: str, value: float | None = None):
            weight = _soft(inside_sdf, edge)
            bright = TISSUE_CONTRAST[tissue][col] if value is None else value
            return image + weight * (bright - image)

        img = np.zeros_like(x)
        trunk = _ellipse_sdf(x, a + 45.0, 165.0, 125.0)
        img = paint(img, trunk, "fat")
        img = paint(img, trunk + 14.0, "muscle")  # muscle inside a 14 mm subcutaneous fat layer
        img = paint(img, self._posterior_elements_sdf(x, a, u), "bone")
        img = paint(img, _ellipse_sdf(x, a - CANAL_A, CANAL_HALF_WIDTH, CANAL_HALF_DEPTH), "fat")  # epidural
        img = paint(img, self._thecal_sac_sdf(x, a, u, n), "csf")
        in_lumbar = np.maximum(t - self.disc_t[0] - 30.0, self.disc_t[-1] - 45.0 - t)
        body = np.maximum(_ellipse_sdf(x, a + 1.0, BODY_HALF_WIDTH, BODY_HALF_DEPTH), in_lumbar)
        img = paint(img, body, "marrow")
        disc = np.maximum(_ellipse_sdf(x, a + 1.0, BODY_HALF_WIDTH + 1.5, BODY_HALF_DEPTH + 1.0),
                          np.abs(u) - self.disc_height[level] / 2)
        degenerate = 1.0 - 0.45 * n["spinal_canal_stenosis"]  # desiccated discs are darker on T2
        disc_value = TISSUE_CONTRAST["disc"][col] * (degenerate if col else 1.0)
        img = paint(img, disc, "disc", disc_value)
        for side, name in ((1.0, "left"), (-1.0, "right")):
            img = self._paint_foramen(img, paint, side * x, a, u, n[f"{name}_neural_foraminal_narrowing"])
            facet = _ellipse_sdf(side * x - FACET_X, a - FACET_A, *(3.5 * (1.0 + 0.9 * n[f"{name}_subarticular_stenosis"]),) * 2)
            img = paint(img, np.maximum(facet, np.abs(u) - 8.0), "bone")
        return img

    def _nearest_disc(self, t: np.ndarray) -> np.ndarray:
        # Discs are sorted cranial -> caudal (decreasing t); midpoints split the arc into per-disc zones.
        mids = (self.disc_t[:-1] + self.disc_t[1:]) / 2
        return np.searchsorted(-mids, -t)

    def _thecal_sac_sdf(self, x, a, u, n) -> np.ndarray:
        """CSF space: canal ellipse, indented anteriorly by the disc bulge, plus the two lateral recesses."""
        sac = _ellipse_sdf(x, a - CANAL_A, CANAL_HALF_WIDTH - 1.0, CANAL_HALF_DEPTH - 1.0)
        bulge = 0.85 * n["spinal_canal_stenosis"] * 2 * (CANAL_HALF_DEPTH - 1.0)
        bulge = bulge * np.exp(-((u / 7.0) ** 2) - (x / 10.0) ** 2)
        front = CANAL_A - (CANAL_HALF_DEPTH - 1.0) + bulge - a  # > 0 anterior of the indented front
        sac = np.maximum(sac, front)
        for side, name in ((1.0, "left"), (-1.0, "right")):
            open_ = (1.0 - 0.85 * n[f"{name}_subarticular_stenosis"]) * np.clip(1.0 - (u / 9.0) ** 2, 0, 1)
            recess = _ellipse_sdf(side * x - RECESS_X, a - RECESS_A, 4.5 * open_ + 1e-3, 3.5 * open_ + 1e-3)
            sac = np.minimum(sac, recess)
        return sac

    @staticmethod
    def _posterior_elements_sdf(x, a, u) -> np.ndarray:
        """Pedicles and laminae around the canal, the spinous process behind it."""
        arch = _ellipse_sdf(x, a - CANAL_A - 2.0, FORAMEN_X + 8.0, CANAL_HALF_DEPTH + 8.0)
        spinous = np.maximum(np.abs(x) - 4.0, np.abs(a - CANAL_A - 28.0) - 18.0)
        return np.minimum(arch, spinous)

    def _paint_foramen(self, img, paint, lateral_x, a, u, narrowing):
        """One side's foramen (lateral_x > 0 on that side): fat around a nerve root, between pedicles."""
        band = np.abs(lateral_x - FORAMEN_X) - 7.0  # the foramen spans x = 17..31 mm from the midline
        height = 6.5 * (1.0 - 0.75 * narrowing)
        depth = 4.5 * (1.0 - 0.55 * narrowing)
        foramen = np.maximum(_ellipse_sdf(u - FORAMEN_U, a - FORAMEN_A, height, depth), band)
        img = paint(img, foramen, "fat")
        root = _ellipse_sdf(u - FORAMEN_U - 0.35 * height, a - FORAMEN_A, 1.8, 1.8)
        return paint(img, np.maximum(root, band), "nerve")


def _ellipse_sdf(dx: np.ndarray, dy: np.ndarray, rx, ry) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an axis-aligned ellipse with semi-axes rx, ry."""
    radius = np.minimum(rx, ry)
    return (np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) - 1.0) * radius


def _soft(sdf: np.ndarray, edge: float) -> np.ndarray:
    """Membership in [0, 1] from a signed distance: a smooth edge of about `edge` mm (partial volume)."""
    return 0.5 * (1.0 - np.tanh(sdf / edge))


LEVEL_COUNT = len(LEVELS)
