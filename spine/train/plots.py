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
