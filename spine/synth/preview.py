"""``python -m spine.synth.preview data_dir=... [study_id=...] [out=preview.png]``: a PNG montage of one study.

Top row: mid-sagittal T1, sagittal T2/STIR with the spinal canal points, sagittal T1 through the left and the
right foramina with their points. Bottom row: the axial T2 image of each level with the subarticular points.
Points are drawn from train_label_coordinates.csv (DICOM pixel frame: x = column, y = row), so the montage is
also a visual check that labels sit on their structures. Works on real competition data as well.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from spine.config import compose_or_exit
from spine.constants import LEVEL_NAMES

COLOURS = {"Spinal Canal Stenosis": "yellow", "Left Neural Foraminal Narrowing": "lime",
           "Right Neural Foraminal Narrowing": "cyan", "Left Subarticular Stenosis": "lime",
           "Right Subarticular Stenosis": "cyan"}


@dataclass
class PreviewConfig:
    data_dir: str = "data/synth"  # RSNA-layout folder with the train split
    study_id: int = -1  # -1: the first study of train.csv
    out: str = "preview.png"  # the PNG written


def make_preview(data_dir: str | Path, study_id: int | None = None, out: str | Path = "preview.png") -> Path:
    """Write the montage of one training study; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data_dir = Path(data_dir)
    series = pd.read_csv(data_dir / "train_series_descriptions.csv")
    coords = pd.read_csv(data_dir / "train_label_coordinates.csv")
    study_id = int(series.study_id.iloc[0]) if study_id in (None, -1) else int(study_id)
    series, coords = series[series.study_id == study_id], coords[coords.study_id == study_id]
    folder = data_dir / "train_images" / str(study_id)
    panels = _panels(folder, series, coords)
    fig, axes = plt.subplots(2, 5, figsize=(20, 8.4), facecolor="black")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image, points) in zip([*axes[0, :4], *axes[1]], panels):
        if image is None:
            ax.set_title(f"{title}\n(missing)", color="white", fontsize=9)
            continue
        lo, hi = np.percentile(image, [0.5, 99.5])
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        for _, p in points.iterrows():
            ax.plot(p.x, p.y, "+", color=COLOURS[p.condition], markersize=12, markeredgewidth=1.5)
        ax.set_title(title, color="white", fontsize=9)
    fig.suptitle(f"study {study_id}: label points + yellow spinal canal, green patient left, cyan patient right",
                 color="white")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    plt.close(fig)
    return out


def _panels(folder: Path, series: pd.DataFrame, coords: pd.DataFrame):
    def series_id(description):
        ids = series.loc[series.series_description == description, "series_id"]
        return int(ids.iloc[0]) if len(ids) else None

    def image(sid, instance):
        path = folder / str(sid) / f"{int(instance)}.dcm"
        return pydicom.dcmread(path).pixel_array.astype(np.float32) if sid and path.exists() else None

    def labelled(condition_prefix, sid):
        pts = coords[(coords.series_id == sid) & coords.condition.str.startswith(condition_prefix)]
        if pts.empty:
            return None, pts
        instance = pts.instance_number.mode().iloc[0]
        return image(sid, instance), pts[pts.instance_number == instance]

    t1, t2, ax = series_id("Sagittal T1"), series_id("Sagittal T2/STIR"), series_id("Axial T2")
    none = coords.iloc[:0]
    panels = [("Sagittal T1, middle slice", image(t1, _middle_instance(folder / str(t1))) if t1 else None, none)]
    panels.append(("Sagittal T2/STIR, spinal canal", *labelled("Spinal", t2)))
    panels.append(("Sagittal T1, left foramina", *labelled("Left Neural", t1)))
    panels.append(("Sagittal T1, right foramina", *labelled("Right Neural", t1)))
    for level in LEVEL_NAMES:
        pts = coords[(coords.series_id == ax) & (coords.level == level) & coords.condition.str.contains("Subart")]
        instance = pts.instance_number.iloc[0] if len(pts) else None
        img = image(ax, instance) if instance is not None else None
        panels.append((f"Axial T2 {level}, subarticular", img, pts[pts.instance_number == instance]))
    return panels


def _middle_instance(folder: Path) -> int:
    """InstanceNumber of the spatially middle slice of the largest stack (order from IPP, via the reader)."""
    from spine.io.dicom import read_series

    stack = read_series(folder).stacks[0]
    return int(stack.instance_numbers[stack.n_slices // 2])


def main(argv: list[str] | None = None) -> int:
    cfg = compose_or_exit("preview", sys.argv[1:] if argv is None else argv, PreviewConfig, __doc__,
                          prog="python -m spine.synth.preview")
    out = make_preview(cfg.data_dir, cfg.study_id, cfg.out)
    print(f"[preview] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
