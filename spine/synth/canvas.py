"""Painting shapes at a set of points: signed distances, soft boundaries (partial volume), the canvas that holds
the brightness and the tissue label of each point (used by :mod:`spine.synth.anatomy`). Distances in mm."""

from __future__ import annotations

import numpy as np

_SOFT_SLOPE = 0.45  # membership = 0.5 - 0.45 sdf / edge, clipped: a ramp out to SOFT_REACH edges from a boundary
SOFT_REACH = 0.5 / _SOFT_SLOPE


class Canvas:
    """Brightness painted at a set of points, shape over shape, and the tissue label of each point if asked."""

    def __init__(self, img: np.ndarray, value: dict, edge: float, names: tuple[str, ...], label_of: dict[str, str],
                 labels: bool, tissue: np.ndarray | None = None) -> None:
        self.img, self.value, self.edge, self.names, self.label_of = img, value, edge, names, label_of
        self.tissue = tissue if tissue is not None or not labels else np.zeros(img.shape, dtype=np.uint8)
        self.boundary: np.ndarray | None = None  # where set: the smallest |signed distance| of the shapes painted

    def paint(self, inside_sdf: np.ndarray, kind: str, bright=None, label: str | None = None) -> None:
        """Paint a shape (signed distance, < 0 inside) with a kind's brightness (or ``bright``: a number, an array
        of the points, or a function of a mask of the points, called where the shape paints) and its label."""
        bright = self.value[kind] if bright is None else bright
        label_id = self.names.index(label or self.label_of[kind])
        if self.boundary is not None:
            np.minimum(self.boundary, np.abs(inside_sdf), out=self.boundary)
        if not callable(bright):
            self.img = paint_shape(self.img, inside_sdf, bright, self.edge, self.tissue, label_id)
            return
        weight = soft(inside_sdf, self.edge)
        where = weight > 0
        self.img[where] += weight[where] * (bright(where) - self.img[where])
        if self.tissue is not None:
            self.tissue[inside_sdf < 0] = label_id

    def part(self, mask: np.ndarray) -> Canvas:
        """A canvas of the points selected by ``mask`` (copies), to paint and `put` back."""
        part = Canvas(self.img[mask], self.value, self.edge, self.names, self.label_of, self.tissue is not None,
                       None if self.tissue is None else self.tissue[mask])
        part.boundary = None if self.boundary is None else self.boundary[mask]
        return part

    def put(self, mask: np.ndarray, part: Canvas) -> None:
        self.img[mask] = part.img
        if self.tissue is not None:
            self.tissue[mask] = part.tissue
        if self.boundary is not None:
            self.boundary[mask] = part.boundary


def paint_shape(image: np.ndarray, inside_sdf: np.ndarray, bright: float | np.ndarray, edge: float,
           tissue: np.ndarray | None = None, label: int = 0) -> np.ndarray:
    """``image`` with a shape painted over it (soft edge: partial volume); where ``tissue`` (labels) is given, the
    points inside the shape (signed distance < 0) become ``label`` (an id), in place."""
    if tissue is not None:
        tissue[inside_sdf < 0] = label
    weight = soft(inside_sdf, edge)
    diff = bright - image
    diff *= weight
    return image + diff


def ellipse_sdf(dx: np.ndarray, dy: np.ndarray, rx, ry) -> np.ndarray:
    """Approximate signed distance (mm, < 0 inside) to an axis-aligned ellipse with semi-axes rx, ry."""
    radius = np.minimum(rx, ry)
    return (np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) - 1.0) * radius


def soft(sdf: np.ndarray, edge: float) -> np.ndarray:
    """Membership in [0, 1] from a signed distance: a linear edge 2 SOFT_REACH `edge` mm wide (partial volume)."""
    weight = np.asarray(sdf) * (_SOFT_SLOPE / edge)  # = clip(0.5 - sdf * slope / edge, 0, 1), fewer temporaries
    np.subtract(0.5, weight, out=weight)
    return np.clip(weight, 0.0, 1.0, out=weight)
