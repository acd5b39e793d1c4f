"""The figures of the report, drawn with matplotlib (Agg) and returned as PNG bytes (embedded in the page).

- :func:`png_of`: a figure -> PNG bytes; :func:`plot_png`: one of :mod:`spine.plots`' path-writing
  plots (confusion, reliability) -> PNG bytes;
- :func:`landmark_error_figure`: point errors per level and per condition group (box plots);
- :func:`views_figure` / :func:`crops_figure`: what a grading model saw of one study (the middle slice of
  every view, or the mid-sagittal and mid-axial slice of every crop channel), one row per level;
- :func:`points_figure`: predicted (x) against true (o) points over sagittal slices sampled from the cache
  through them (canal on the Sagittal T2/STIR, each foramen on the Sagittal T1).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import CONDITIONS, GROUPS, LEVEL_NAMES, LEVELS
from spine.data.grid import SamplingGrid

SHORT = {"spinal_canal_stenosis": "SCS", "left_neural_foraminal_narrowing": "LNF",
         "right_neural_foraminal_narrowing": "RNF", "left_subarticular_stenosis": "LSS",
         "right_subarticular_stenosis": "RSS"}
GRADE_SHORT = ("N/M", "Mod", "Sev")
LEVEL_COLOURS = ("tab:purple", "tab:blue", "tab:green", "tab:orange", "tab:red")
GROUP_COLOURS = {"spinal": "tab:red", "foraminal": "tab:blue", "subarticular": "tab:green"}


def pyplot():
    """matplotlib.pyplot on the Agg backend (chosen before pyplot is first imported; only figures load it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_of(fig, dpi: int = 80, rect=None) -> bytes:
    """The figure as PNG bytes (tight layout within ``rect``, default the whole figure); the figure is closed."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.tight_layout(rect=rect)
    except Exception:  # noqa: BLE001 - a layout warning never costs the figure
        pass
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def plot_png(plot: Callable[..., None], *args) -> bytes:
    """PNG bytes of a plot function that writes a PNG to the path given as its last argument."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "figure.png"
        plot(*args, path)
        return path.read_bytes()


# ----------------------------------------------------------------------------------------------- landmarks
def landmark_error_figure(errors: pd.DataFrame, dpi: int = 80) -> bytes:
    """Box plots of the point errors (mm): per level (left) and per condition group (right).

    ``errors``: one row per labelled predicted point with ``level`` (snake case), ``group`` and ``error_mm``.
    """
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [5, 3]})
    per_level = [errors.loc[errors.level == lv, "error_mm"].to_numpy(float) for lv in LEVELS]
    _boxes(left, per_level, LEVEL_NAMES, LEVEL_COLOURS)
    left.set_title("point error per level", fontsize=9)
    per_group = [errors.loc[errors.group == g, "error_mm"].to_numpy(float) for g in GROUPS]
    _boxes(right, per_group, GROUPS, [GROUP_COLOURS[g] for g in GROUPS])
    right.set_title("point error per condition group", fontsize=9)
    for ax in (left, right):
        ax.set_ylabel("error (mm)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    return png_of(fig, dpi)


def _boxes(ax, values: list[np.ndarray], names, colours) -> None:
    positions = [n for n, v in enumerate(values) if len(v)]
    if positions:
        parts = ax.boxplot([values[n] for n in positions], positions=positions, widths=0.6, showfliers=True,
                           patch_artist=True)
        for patch, n in zip(parts["boxes"], positions):
            patch.set_facecolor(colours[n])
            patch.set_alpha(0.45)
        rng = np.random.default_rng(0)
        for n in positions:
            ax.scatter(n + rng.uniform(-0.18, 0.18, len(values[n])), values[n], s=6, color=colours[n], alpha=0.6)
    ax.set_xticks(range(len(names)), [f"{name}\n(n={len(v)})" for name, v in zip(names, values)])
    ax.set_xlim(-0.6, len(names) - 0.4)


# ----------------------------------------------------------------------------------------------- images
def _show(ax, image: np.ndarray, vmax: float | None = None) -> None:
    finite = image[np.isfinite(image)]
    high = vmax if vmax is not None else (float(np.percentile(finite, 99.5)) if finite.size else 1.0)
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=max(high, 1e-6), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def views_figure(views: np.ndarray, names: list[str], cell_titles: dict | None = None, title: str = "",
                 dpi: int = 80) -> bytes:
    """The middle slice of every view of a study: ``views`` (L, K, V, S, H, W) as the views model reads them;
    rows are levels, columns conditions x views (``names[v]`` names view v of each condition, e.g.
    ``sag T2``). ``cell_titles[(level, condition)]``: a line under the first view of that condition."""
    plt = pyplot()
    n_levels, n_conditions, n_views = views.shape[:3]
    columns = n_conditions * n_views
    fig, axes = plt.subplots(n_levels, columns, figsize=(0.95 * columns + 0.6, 1.1 * n_levels + 0.5),
                             squeeze=False)
    middle = views.shape[3] // 2
    for lv in range(n_levels):
        for k in range(n_conditions):
            for v in range(n_views):
                ax = axes[lv, k * n_views + v]
                _show(ax, views[lv, k, v, middle], vmax=1.0)
                if lv == 0:
                    ax.set_title(f"{SHORT[CONDITIONS[k]]} {names[k * n_views + v]}", fontsize=6)
                if v == 0 and cell_titles and (lv, k) in cell_titles:
                    ax.set_xlabel(cell_titles[(lv, k)], fontsize=6)
            if k == 0:
                axes[lv, 0].set_ylabel(LEVEL_NAMES[lv], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return png_of(fig, dpi)


def crops_figure(crops: np.ndarray, series: list[str], title: str = "", dpi: int = 80) -> bytes:
    """Every crop channel of a study, ``crops`` (L, C, X, Y, Z) as the crop model reads them: per level and
    channel the mid-sagittal slice (head up, anterior left) and the mid-axial slice (anterior up, the patient's
    right on the left)."""
    plt = pyplot()
    n_levels, n_channels = crops.shape[:2]
    fig, axes = plt.subplots(n_levels, 2 * n_channels, figsize=(1.3 * 2 * n_channels + 0.6, 1.3 * n_levels + 0.5),
                             squeeze=False)
    for lv in range(n_levels):
        for c in range(n_channels):
            crop = crops[lv, c]
            sagittal = crop[crop.shape[0] // 2].T[::-1]  # rows: head (+k) up; columns: +j (anterior left)
            axial = crop[:, :, crop.shape[2] // 2].T  # rows: +j (anterior up); columns: +i (patient's left right)
            for p, (image, plane) in enumerate(((sagittal, "sag"), (axial, "ax"))):
                ax = axes[lv, 2 * c + p]
                _show(ax, image, vmax=1.0)
                if lv == 0:
                    ax.set_title(f"{series[c]}\n{plane}", fontsize=6)
        axes[lv, 0].set_ylabel(LEVEL_NAMES[lv], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return png_of(fig, dpi)


def sagittal_grid(centre, rows_mm: float = 200.0, cols_mm: float = 160.0, pixel_mm: float = 1.0):
    """A one-slice world-aligned sagittal :class:`~spine.data.grid.SamplingGrid` through ``centre`` (LPS mm):
    array ``(1, rows, cols)``, rows towards the feet (head at the top), columns posterior (anterior left)."""
    direction = np.stack([np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0])], axis=1)
    size = (1, int(round(rows_mm / pixel_mm)), int(round(cols_mm / pixel_mm)))
    return SamplingGrid.centred(np.asarray(centre, dtype=np.float64), size, (1.0, pixel_mm, pixel_mm), direction)


def points_figure(panels: list[dict], title: str = "", dpi: int = 80) -> bytes:
    """Predicted (x) against true (o) points over sagittal slices, one panel each.

    A panel: ``title``; ``image`` (H, W) or None with ``missing`` (why); ``true`` / ``pred``: (n, 3) grid indices
    (slice offset, row, column) of the points (NaN rows skipped); ``levels``: (n,) level index of each point
    (the colour). A line joins each predicted point to its true one; the slice offset (mm off the plane) is
    not drawn.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.set_title(panel["title"], fontsize=8)
        if panel.get("image") is None:
            ax.text(0.5, 0.5, panel.get("missing", "no image"), ha="center", va="center", fontsize=8, wrap=True,
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        _show(ax, panel["image"], vmax=1.0)
        true, pred, levels = panel["true"], panel["pred"], panel["levels"]
        for t, p, lv in zip(true, pred, levels):
            colour = LEVEL_COLOURS[int(lv)]
            if np.isfinite(t).all() and np.isfinite(p).all():
                ax.plot([t[2], p[2]], [t[1], p[1]], "-", color=colour, linewidth=0.8)
            if np.isfinite(t).all():
                ax.scatter(t[2], t[1], s=40, facecolors="none", edgecolors=colour, linewidths=1.4)
            if np.isfinite(p).all():
                ax.scatter(p[2], p[1], s=40, marker="x", color=colour, linewidths=1.4)
        height, width = panel["image"].shape
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", markerfacecolor="none", label=name)
               for c, name in zip(LEVEL_COLOURS, LEVEL_NAMES)]
    fig.legend(handles=handles, loc="lower center", ncol=len(LEVEL_NAMES), fontsize=7, frameon=False)
    fig.suptitle((title + "\n" if title else "") + "o true, x predicted (head up, anterior left)", fontsize=8)
    return png_of(fig, dpi, rect=(0, 0.06, 1, 1))

