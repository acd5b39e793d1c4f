"""Typed configuration of the synthetic study generator (``configs/synth.yaml`` + ``configs/synth/preset``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SynthConfig:
    out_dir: str = "data/synth"  # the RSNA-layout folder written
    preset: str = "small"  # recorded for the dataset card; the values come from configs/synth/preset/
    seed: int = 0  # the same seed and values give the same dataset
    n_train: int = 48  # training studies (labels and coordinates given)
    n_test: int = 12  # test studies (labels in test_labels.csv only)
    workers: int = 2  # processes rendering studies in parallel (1 = in this process)
    overwrite: bool = False  # refuse to write into a non-empty out_dir unless true
    # acquisition (ranges are [low, high])
    sag_size: list[int] = field(default_factory=lambda: [160, 192])  # rows, pixels
    sag_fov_mm: float = 300.0  # sagittal field of view (rows), mm
    sag_spacing_mm: list[float] = field(default_factory=lambda: [3.0, 4.5])  # sagittal slice step, mm
    sag_slices: list[int] = field(default_factory=lambda: [15, 25])  # sagittal slices per series
    sag_coverage_mm: float = 68.0  # left-right extent the slab must cover (both foramina)
    ax_size: list[int] = field(default_factory=lambda: [128, 160])  # axial rows, pixels
    ax_fov_mm: float = 200.0  # axial field of view, mm
    ax_spacing_mm: list[float] = field(default_factory=lambda: [3.5, 4.5])  # axial slice step, mm
    obliquity_deg: float = 4.0  # max tilt of a stack against the patient axes
    multi_stack_rate: float = 0.4  # axial series made of 2-3 angled stacks
    reversed_instance_rate: float = 0.3  # InstanceNumber running against the usual direction
    nonsquare_rate: float = 0.1  # series with non-square pixels
    missing_tag_rate: float = 0.15  # per optional tag and series: SliceThickness, SliceLocation, ...
    missing_series_rate: float = 0.0  # per series: study without that series (as in the real data)
    missing_label_rate: float = 0.05  # studies with 1-3 labels left empty
    # labels
    label_noise: float = 0.10  # sigma of the reading noise on the narrowing scale (see labels.py)
