"""Validation pictures: predicted vs true points on the mid-sagittal slice of a few studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import CONDITION_NAMES, CONDITIONS

_COLOURS = {"spinal_canal_stenosis": "tab:red", "left_neural_foraminal_narrowing": "tab:blue",
            "right_neural_foraminal_narrowing": "tab:cyan", "left_subarticular_stenosis": "tab:green",
            "right_subarticular_stenosis": "tab:olive"}


def plot_landmarks(dataset, predictions: pd.DataFrame, indices: list[int], path: Path) -> None:
    """One panel per study: channel 0 at the grid's x slice through the true (else predicted) canal points,
    head up, anterior left; true points as circles, predictions as crosses (all points projected on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(indices), figsize=(3.2 * len(indices), 3.6), squeeze=False)
    names = {n: c for c, n in zip(CONDITIONS, CONDITION_NAMES)}
    for ax, index in zip(axes[0], indices):
        item = dataset[index]
        study = int(item["study_id"])
        origin, matrix = item["grid_origin"].numpy(), item["grid_matrix"].numpy()
        inverse = np.linalg.inv(matrix)
        rows = predictions[predictions.study_id == study]
        pred = (rows[["world_x", "world_y", "world_z"]].to_numpy(float) - origin) @ inverse.T
        true = item["target"].numpy()
        canal = [k for k, (c, _) in enumerate(dataset.names) if c == "spinal_canal_stenosis"]
        ref = true[canal] if canal and np.isfinite(true[canal]).any() else pred
        x = int(np.clip(np.round(np.nanmean(ref[:, 0])) if np.isfinite(ref).any() else item["image"].shape[1] // 2,
                        0, item["image"].shape[1] - 1))
        ax.imshow(item["image"][0, x].numpy().T, cmap="gray", origin="lower")
        for k, (condition, _) in enumerate(dataset.names):
            colour = _COLOURS[condition]
            if np.isfinite(true[k]).all():
                ax.scatter(true[k, 1], true[k, 2], s=28, facecolors="none", edgecolors=colour, linewidths=1.2)
        for (row, p) in zip(rows.itertuples(index=False), pred):
            ax.scatter(p[1], p[2], s=28, marker="x", color=_COLOURS[names[row.condition]], linewidths=1.2)
        ax.set_title(f"{study}  (x slice {x})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("o true, x predicted  (red canal, blue/cyan L/R foramen, green/olive L/R subarticular)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# grading evaluation: predictions in submission format (row_id + normal_mild, moderate, severe; other columns
# such as fold ignored) against train.csv-format labels. Only labelled rows that have a prediction are used.
# A condition without such rows gets a panel reading "no labelled rows" (so with no labelled rows at all every
# panel does); both always write a PNG (parent folder created) and raise only on malformed frames.

_GRADE_SHORT = ("N/M", "Mod", "Sev")
_GRADE_COLOURS = ("tab:green", "tab:orange", "tab:red")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grading_rows(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Labelled, predicted rows (see :func:`spine.calibrate.labelled_predictions`), probabilities sanitised
    (non-finite/negative -> 0, rows normalised, all-zero rows uniform)."""
    from spine.calibrate import labelled_predictions
    from spine.constants import PROB_COLUMNS

    rows = labelled_predictions(predictions, labels)
    p = rows[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    p = np.where(np.isfinite(p) & (p >= 0), p, 0.0)
    total = p.sum(axis=1, keepdims=True)
    rows[list(PROB_COLUMNS)] = np.divide(p, total, out=np.full_like(p, 1.0 / p.shape[1]), where=total > 0)
    return rows


def _no_rows(ax, text: str = "no labelled rows") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot_confusion(predictions: pd.DataFrame, labels: pd.DataFrame, path: Path) -> None:
    """One panel per condition: confusion matrix of true grade (rows) vs argmax predicted grade (columns).

    Cells show counts; shading is the row-normalised fraction (each true grade's recall along the diagonal).
    Titles give the condition and its number of labelled rows.
    """
    from spine.constants import SEVERITIES

    plt = _pyplot()
    rows = _grading_rows(predictions, labels)
    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(3.0 * len(CONDITIONS), 3.3), squeeze=False)
    k = len(SEVERITIES)
    for ax, condition, name in zip(axes[0], CONDITIONS, CONDITION_NAMES):
        part = rows[rows["condition"] == condition]
        ax.set_title(f"{name}\n(n={len(part)})", fontsize=8)
        if part.empty:
            _no_rows(ax)
            continue
        predicted = part[["normal_mild", "moderate", "severe"]].to_numpy().argmax(axis=1)
        counts = np.zeros((k, k), dtype=int)
        np.add.at(counts, (part["severity"].to_numpy(), predicted), 1)
        totals = counts.sum(axis=1, keepdims=True)
        fraction = np.divide(counts, totals, out=np.zeros((k, k)), where=totals > 0)
        ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                    color="white" if fraction[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), _GRADE_SHORT, fontsize=7)
        ax.set_yticks(range(k), _GRADE_SHORT, fontsize=7)
        ax.set_xlabel("predicted (argmax)", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    fig.suptitle("confusion: counts, shading = fraction of the true grade", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_reliability(predictions: pd.DataFrame, labels: pd.DataFrame, path: Path, bins: int = 10) -> None:
    """Reliability diagram per condition: for each grade, rows binned by predicted probability of that grade
    (``bins`` equal-width bins on [0, 1]); dot at (mean predicted, observed frequency of the grade), area by
    row count, unweighted (not the metric's 1/2/4 weights); empty bins are skipped; dashed diagonal = perfect.

    The metric-optimal prediction is the true probability times (1, 2, 4), renormalised, so a model (or a
    calibration) tuned for the metric sits off the diagonal here: Normal/Mild above it, Severe below.
    """
    from spine.constants import PROB_COLUMNS

    plt = _pyplot()
    rows = _grading_rows(predictions, labels)
    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(3.0 * len(CONDITIONS), 3.4), squeeze=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, condition, name in zip(axes[0], CONDITIONS, CONDITION_NAMES):
        part = rows[rows["condition"] == condition]
        ax.set_title(f"{name}\n(n={len(part)})", fontsize=8)
        if part.empty:
            _no_rows(ax)
            continue
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        y = part["severity"].to_numpy()
        for k, (column, short, colour) in enumerate(zip(PROB_COLUMNS, _GRADE_SHORT, _GRADE_COLOURS)):
            p = part[column].to_numpy(dtype=np.float64)
            which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
            n = np.bincount(which, minlength=bins)
            used = n > 0
            mean_p = np.bincount(which, weights=p, minlength=bins)[used] / n[used]
            observed = np.bincount(which, weights=(y == k).astype(float), minlength=bins)[used] / n[used]
            ax.plot(mean_p, observed, "-", color=colour, linewidth=0.8, alpha=0.6)
            ax.scatter(mean_p, observed, s=8 + 120 * n[used] / n.max(), color=colour, alpha=0.8,
                       label=f"{short} ({int((y == k).sum())})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability", fontsize=7)
        ax.set_ylabel("observed frequency", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("reliability per grade (dot area ~ rows in bin; legend: true rows of the grade)", fontsize=8)
    _save(fig, path)
    plt.close(fig)
