"""Typed configuration of the synthetic study generator (``configs/synth.yaml`` + ``configs/synth/preset``).

Every variation of the studies is a key with its rate (share of studies or series, 0 turns it off), so that a
preset can keep the variety while staying small; docs/synthetic.md lists them with the real data's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spine.cli import require_pairs, require_range


@dataclass
class SynthConfig:
    out_dir: str = "data/synth"  # the RSNA-layout folder written
    preset: str = "small"  # recorded for the dataset card; the values come from configs/synth/preset/
    seed: int = 0  # the same seed and values give the same dataset (the same bytes)
    n_train: int = 48  # training studies (labels and coordinates given); at least 1
    n_test: int = 12  # test studies (labels in test_labels.csv only); 0: none
    workers: int = 2  # processes rendering studies in parallel (0 or 1 = in this process)
    overwrite: bool = False  # refuse to write into a non-empty out_dir unless true
    # 3: MR physics (sequences, signal equations, slice profile, Gibbs) and the refined anatomy; 2: the previous
    # generator (shapes painted with one brightness per tissue), byte-identical to what it wrote, for comparison
    version: int = 3
    sag_size: list[int] = field(default_factory=lambda: [160, 192])  # rows, pixels
    sag_fov_mm: list[float] = field(default_factory=lambda: [280.0, 420.0])  # sagittal field of view (rows), mm
    sag_spacing_mm: list[float] = field(default_factory=lambda: [3.0, 4.5])  # sagittal slice step, mm
    sag_slices: list[int] = field(default_factory=lambda: [10, 38])  # sagittal slices per series (clip)
    sag_coverage_mm: list[float] = field(default_factory=lambda: [40.0, 84.0])  # left-right extent, mm (T1: 68+)
    ax_size: list[int] = field(default_factory=lambda: [128, 160])  # axial rows, pixels
    ax_fov_mm: list[float] = field(default_factory=lambda: [160.0, 240.0])  # axial field of view, mm
    ax_spacing_mm: list[float] = field(default_factory=lambda: [3.5, 4.5])  # axial slice step, mm
    obliquity_deg: float = 4.0  # max tilt of a stack against the patient axes
    reversed_instance_rate: float = 0.3  # InstanceNumber running against the usual direction
    nonsquare_rate: float = 0.1  # series with non-square pixels
    missing_tag_rate: float = 0.15  # per optional tag and series: SliceThickness, SliceLocation, ...
    # sagittal centre anywhere the lumbar spine (T12/L1 disc to S1) fits, Beta(0.5, 0.5) in that range; else L3/L4
    sag_placement_rate: float = 1.0
    multi_stack_rate: float = 0.3  # 2-3 blocks, each angled along its group of discs (gaps between them)
    ax_per_disc_rate: float = 0.15  # one short block (4-7 slices) per disc, angled along it
    ax_same_angle_rate: float = 0.1  # of the multi-block series: blocks sharing one angle (one stack, gaps)
    ax_thin_rate: float = 0.007  # axial series with thin slices (1.2-2.5 mm: 60-190 files, as the longest real ones)
    ax_partial_rate: float = 0.06  # the first axial series misses L5/S1 (mostly) or L1/L2: no labels there
    extra_series_rates: list[float] = field(default_factory=lambda: [0.157, 0.015])  # 4 and 5 series
    extra_axial_share: float = 0.7  # an extra series is a second Axial T2 (L3-S1 or all again), else a sagittal
    missing_sagittal_rate: float = 0.0015  # studies without their Sagittal T1 (2 in 3) or T2/STIR (1 in 3)
    transitional_rate: float = 0.1  # 4 or 6 lumbar-type vertebrae (labels still count up from the sacrum)
    scoliosis_rate: float = 0.12  # lateral curvature, Cobb angle 4 degrees to scoliosis_max_deg
    scoliosis_max_deg: float = 15.0  # largest Cobb angle of a scoliotic spine, degrees
    listhesis_rate: float = 0.08  # anterolisthesis of L4 (7 in 10) or L5 by 2-7 mm
    sacral_disc_rate: float = 0.4  # a rudimentary S1/S2 disc remnant below L5/S1
    noise: list[float] = field(default_factory=lambda: [0.012, 0.05])  # Rician noise sigma, share of CSF signal
    bias_max: float = 0.3  # coil sensitivity: exp(linear ramp) of up to this log-slope over 150 mm
    ghosting_rate: float = 0.04  # motion ghosts along the phase-encoding direction
    wrap_rate: float = 0.03  # wrap-around of the body outside the field of view (phase direction)
    stir_rate: float = 0.5  # Sagittal T2/STIR series that are fat-suppressed (STIR); the rest plain T2
    axial_fat_sat_rate: float = 0.1  # fat-suppressed Axial T2
    field_3t_rate: float = 0.5  # version 3: studies at 3 T (the rest 1.5 T)
    acquired_fraction: list[float] = field(default_factory=lambda: [0.6, 0.9])  # version 3: k-space acquired along
    # the phase-encoding direction, share of the image matrix (Gibbs ringing, blur); the readout acquires 0.9-1
    rescale_rate: float = 0.18  # series with RescaleSlope/RescaleIntercept tags (integral: integers stay)
    rescale_nonintegral_share: float = 0.1  # of those: a non-integral slope (the modality values are floats)
    label_noise: float = 0.10  # sigma of the reading noise on the narrowing scale (see labels.py)
    missing_label_rate: float = 0.05  # studies with 1-3 labels of one level (mostly L5/S1) left empty
    click_noise_mm: float = 1.0  # sigma of each in-plane coordinate of a label point, mm
    click_slice_rate: float = 0.08  # label points marked on a neighbouring slice

    def __post_init__(self) -> None:
        if self.n_train < 1:
            raise ValueError(f"n_train must be >= 1 (training needs studies), got {self.n_train}")
        require_range(self, "n_test seed workers", 0)
        if self.version not in (2, 3):
            raise ValueError(f"version must be 2 or 3 (the generator's version), got {self.version}")
        require_range(self, _RATES, 0.0, 1.0)
        if sum(self.extra_series_rates) > 1 or len(self.extra_series_rates) > 2:
            raise ValueError(f"extra_series_rates: at most 2 rates (4 and 5 series) summing to <= 1, got "
                             f"{self.extra_series_rates}")
        require_range(self, "obliquity_deg bias_max label_noise click_noise_mm", 0.0)
        require_range(self, "scoliosis_max_deg", 0.0, 90.0)
        require_pairs(self, "sag_size ax_size", 16)  # pixels, in steps of 16
        require_pairs(self, "sag_slices", 1)
        require_pairs(self, "sag_fov_mm sag_spacing_mm sag_coverage_mm ax_fov_mm ax_spacing_mm", 0.0, low_open=True)
        require_pairs(self, "noise", 0.0)
        require_pairs(self, "acquired_fraction", 0.2, 1.0)


# the keys that are a share of studies or series: probabilities
_RATES = ("reversed_instance_rate nonsquare_rate missing_tag_rate sag_placement_rate multi_stack_rate ax_per_disc_rate "
          "ax_same_angle_rate ax_thin_rate ax_partial_rate extra_series_rates extra_axial_share missing_sagittal_rate "
          "transitional_rate scoliosis_rate listhesis_rate sacral_disc_rate stir_rate axial_fat_sat_rate field_3t_rate "
          "ghosting_rate "
          "wrap_rate rescale_rate rescale_nonintegral_share missing_label_rate click_slice_rate")
