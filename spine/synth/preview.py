"""``python -m spine.synth.preview data_dir=... [study_id=...] [out=preview.png]``: a PNG montage of one study.

Top row: mid-sagittal T1, sagittal T2/STIR with the spinal canal points, sagittal T1 through the left and the
right foramina with their points, and a far-lateral sagittal T1 slice (about 29 mm from the middle: rib heads
beside the thoracic bodies, hence the count of lumbar-type vertebrae). Bottom row: the axial T2 image of each
level with the subarticular points.
Points are drawn from train_label_coordinates.csv (DICOM pixel frame: x = column, y = row), so the montage is
also a visual check that labels sit on their structures. Works on real competition data as well.

``python -m spine.synth.preview versions=true seed=0 out=versions.png``: one synthetic study (the first of that
seed, preset small) rendered by generator version 2 (top row) and version 3 (bottom row, MR physics) with the
same anatomy and planes: mid-sagittal T1, T2 and STIR, sagittal T1 through the left foramina, axial T2 at L4/L5.
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
from spine.errors import InputError, command

COLOURS = {"Spinal Canal Stenosis": "yellow", "Left Neural Foraminal Narrowing": "lime",
           "Right Neural Foraminal Narrowing": "cyan", "Left Subarticular Stenosis": "lime",
           "Right Subarticular Stenosis": "cyan"}


@dataclass
class PreviewConfig:
    data_dir: str = "data/synth"  # RSNA-layout folder with the train split
    study_id: int = -1  # -1: the first study of train.csv
    out: str = "preview.png"  # the PNG written
    versions: bool = False  # instead of a study of data_dir: one synthetic study by generator versions 2 and 3
    seed: int = 0  # versions=true: the seed of the study (preset small)


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
        _show(ax, image, title)
        for _, p in points.iterrows():
            ax.plot(p.x, p.y, "+", color=COLOURS[p.condition], markersize=12, markeredgewidth=1.5)
    fig.suptitle(f"study {study_id}: label points + yellow spinal canal, green patient left, cyan patient right",
                 color="white")
    return _save(fig, out)


def _show(ax, image: np.ndarray, title: str) -> None:
    """An image windowed to its 0.5-99.5th percentiles, titled, on a black figure."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, color="white", fontsize=9)


def _save(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    plt.close(fig)
    return out


def make_versions_figure(seed: int = 0, out: str | Path = "versions.png") -> Path:
    """Write one study of ``seed`` (preset small) as generator version 2 and version 3 render it (the same
    anatomy, planes and noise draws; version 3's sequences at the study's field strength); returns the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spine.cli import compose
    from spine.synth import mr
    from spine.synth.acquisition import render_slice
    from spine.synth.config import SynthConfig
    from spine.synth.generate import plan_study, study_jobs

    rows = []
    for version in (2, 3):
        cfg = compose("synth", ["preset=small", f"seed={seed}", "n_train=1", "n_test=0", "out_dir=unused",
                                f"version={version}"], SynthConfig)
        _, study_id, series_ids, split, seq = study_jobs(cfg)[0]
        plan = plan_study(cfg, study_id, series_ids, split, np.random.default_rng(seq))
        rows.append((version, plan, _version_panels(plan, version, mr)))
    fig, axes = plt.subplots(2, 5, figsize=(20, 8.8), facecolor="black")
    for r, (version, plan, panels) in enumerate(rows):
        for c, (title, spec, stack, k, look) in enumerate(panels):
            image, _ = render_slice(plan.spine, stack, k, spec.plan, look, np.random.default_rng(c))
            _show(axes[r, c], image, f"v{version}: {title}")
            axes[r, c].axis("off")
    field = rows[1][1].facts.get("field_t")
    fig.suptitle(f"one study (seed {seed}), generator version 2 (top) and version 3 (bottom, MR physics, {field} T)",
                 color="white")
    return _save(fig, out)


def _version_panels(plan, version: int, mr) -> list[tuple]:
    """(title, series spec, stack, slice index, look) of the five panels of `make_versions_figure`."""
    by_type = {s.description: s for s in reversed(plan.series)}  # the first series of each type
    if len(by_type) < 3:
        raise InputError(f"study {plan.study_id} has only {', '.join(by_type)}: take another seed")
    t1, t2, axial = by_type["Sagittal T1"], by_type["Sagittal T2/STIR"], by_type["Axial T2"]
    stack = t1.plan.stacks[0]
    foramen = plan.spine.label_point("left_neural_foraminal_narrowing", 3)
    left = int(np.argmin(np.abs((stack.centers - foramen) @ stack.normal)))
    si, k, *_ = axial.plan.nearest(plan.spine.disc_centre(3))
    field = plan.facts.get("field_t", 1.5)
    maker = mr.MANUFACTURERS[1]

    def look(spec, kind: str, contrast: dict) -> dict:
        if version < 3:
            return {**spec.look, "contrast": contrast}
        return {**spec.look, "sequence": mr.sample_sequence(kind, field, maker, np.random.default_rng(1))}

    t2_stack = t2.plan.stacks[0]
    t2_mid = len(t2_stack.centers) // 2
    return [("Sagittal T1, middle", t1, stack, len(stack.centers) // 2, look(t1, "T1", {})),
            ("Sagittal T2, middle", t2, t2_stack, t2_mid, look(t2, "T2", {"fat": 0.70, "marrow": 0.50})),
            ("Sagittal STIR, middle", t2, t2_stack, t2_mid, look(t2, "STIR", {"fat": 0.15, "marrow": 0.30})),
            ("Sagittal T1, L4/L5 left foramen", t1, stack, left, look(t1, "T1", {})),
            ("Axial T2, L4/L5", axial, axial.plan.stacks[si], k, look(axial, "T2", {}))]


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


@command("preview")
def main(argv: list[str] | None = None) -> int:
    cfg = compose_or_exit("preview", sys.argv[1:] if argv is None else argv, PreviewConfig, __doc__,
                          prog="python -m spine.synth.preview")
    if cfg.versions:
        out = make_versions_figure(cfg.seed, cfg.out)
    else:
        out = make_preview(cfg.data_dir, cfg.study_id, cfg.out)
    print(f"[preview] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
