"""``python -m spine.synth.preview data_dir=... [study_id=...] [out=preview.png]``: a PNG montage of one study.

Top row: mid-sagittal T1, sagittal T2/STIR with the spinal canal points, sagittal T1 through the left and the
right foramina with their points, and a far-lateral sagittal T1 slice (about 29 mm from the middle: rib heads
beside the thoracic bodies, hence the count of lumbar-type vertebrae). Bottom row: the axial T2 image of each
level with the subarticular points.
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

from spine.cli import compose_or_exit
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
    for ax, (title, image, points) in zip([*axes[0, :4], *axes[1], axes[0, 4]], panels):
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
    def series_id(description, condition_prefix=None, level=None):
        """The series of that type holding the points of the condition (and level), else the first one (a study
        may have two series of a type, the points on either)."""
        ids = [int(v) for v in series.loc[series.series_description == description, "series_id"]]
        if condition_prefix is not None:
            pts = coords[coords.series_id.isin(ids) & coords.condition.str.startswith(condition_prefix)]
            if level is not None:
                pts = pts[pts.level == level]
            if len(pts):
                return int(pts.series_id.mode().iloc[0])
        return ids[0] if ids else None

    def image(sid, instance):
        path = folder / str(sid) / f"{int(instance)}.dcm"
        return pydicom.dcmread(path).pixel_array.astype(np.float32) if sid and path.exists() else None

    def labelled(condition_prefix, description):
        sid = series_id(description, condition_prefix)
        pts = coords[(coords.series_id == sid) & coords.condition.str.startswith(condition_prefix)]
        if pts.empty:
            return None, pts
        instance = pts.instance_number.mode().iloc[0]
        return image(sid, instance), pts[pts.instance_number == instance]

    t1 = series_id("Sagittal T1", "Left Neural")
    none = coords.iloc[:0]
    panels = [("Sagittal T1, middle slice", image(t1, _middle_instance(folder / str(t1))) if t1 else None, none)]
    panels.append(("Sagittal T2/STIR, spinal canal", *labelled("Spinal", "Sagittal T2/STIR")))
    panels.append(("Sagittal T1, left foramina", *labelled("Left Neural", "Sagittal T1")))
    panels.append(("Sagittal T1, right foramina", *labelled("Right Neural", "Sagittal T1")))
    for level in LEVEL_NAMES:
        ax = series_id("Axial T2", "Left Subart", level) or series_id("Axial T2", "Right Subart", level)
        pts = coords[(coords.series_id == ax) & (coords.level == level) & coords.condition.str.contains("Subart")]
        instance = pts.instance_number.iloc[0] if len(pts) else None
        img = image(ax, instance) if instance is not None else None
        panels.append((f"Axial T2 {level}, subarticular", img, pts[pts.instance_number == instance]))
    panels.append(("Sagittal T1, far lateral (rib heads)", image(t1, _lateral_instance(folder / str(t1))) if t1
                   else None, none))
    return panels


def _lateral_instance(folder: Path, offset_mm: float = 29.0) -> int:
    """InstanceNumber of the slice about ``offset_mm`` from the middle of the largest stack (toward the end of
    higher IPP along the normal)."""
    from spine.io.dicom import read_series

    stack = read_series(folder).stacks[0]
    depth = stack.image_positions_lps @ stack.direction_lps[:, 2]  # along the slice normal
    step = float(np.median(np.abs(np.diff(depth)))) if stack.n_slices > 1 else 1.0
    k = min(stack.n_slices - 1, stack.n_slices // 2 + int(round(offset_mm / max(step, 1e-3))))
    return int(stack.instance_numbers[k])


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
