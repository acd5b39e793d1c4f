"""Generate a synthetic dataset in the exact layout of the RSNA 2024 competition.

Layout written under ``out_dir`` (see docs/synthetic.md):
    train.csv, train_label_coordinates.csv, train_series_descriptions.csv, train_images/{study}/{series}/{n}.dcm
    test_series_descriptions.csv, test_images/..., sample_submission.csv
    test_labels.csv (hidden truth, train.csv format), oracle_submission.csv (Bayes-optimal), truth.csv
    dataset.json (how it was made, generator_version), studies.csv (per study: anatomy and acquisition variations)
    tissue/{study}/{series}.npz (the tissue at every pixel centre of every file), tissue/labels.json (id -> name)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from spine.constants import (
    CONDITION_NAMES,
    CONDITION_SERIES,
    CONDITIONS,
    LABEL_COLUMNS,
    LEVEL_NAMES,
    LEVELS,
    PROB_COLUMNS,
    SEVERITIES,
    label_column,
    study_row_ids,
)
from spine.errors import InputError
from spine.procs import worker_pool
from spine.synth import labels as label_model
from spine.synth import mr
from spine.synth.acquisition import SeriesPlan, plan_axial, plan_sagittal, render_slice
from spine.synth.anatomy import LABELLED, N_CAUDA_ROOTS, Spine, tissue_labels
from spine.synth.config import SynthConfig
from spine.synth.dicom_writer import SeriesWriter, SliceTags

GENERATOR_VERSION = SynthConfig.version  # the default, recorded in dataset.json: numbers measured on different
# versions are not comparable; version 2 stays selectable (version=2) and writes the same bytes as before
# Intensity scale (gain) ranges of three scanner vendors and how common each is: stored values from hundreds to
# several thousands.
VENDOR_GAINS = ((350.0, 900.0), (900.0, 2500.0), (2500.0, 6000.0))
VENDOR_WEIGHTS = (0.35, 0.4, 0.25)
N_DISCS = 12  # discs modelled per spine: the five labelled ones and seven above them
SERIES_IDS = 5  # series ids drawn per study (at most five series)
TISSUE_DIR = "tissue"  # tissue/{study}/{series}.npz and tissue/labels.json: the tissue truth of every series
OPTIONAL_TAGS = ("SliceThickness", "SliceLocation", "SpacingBetweenSlices", "SeriesDescription", "PatientPosition")
_MISSING_LEVEL_WEIGHTS = (0.05, 0.05, 0.1, 0.2, 0.6)  # which level a study's missing labels are at


@dataclass
class SeriesSpec:
    """One series of a study, planned: geometry, appearance and tags (rendering only adds the pixel noise)."""

    series_id: int
    description: str
    plan: SeriesPlan
    look: dict
    drop: set  # optional tags left out
    flip_location: bool  # SliceLocation with the wrong sign
    rescale: tuple[float, float] | None  # (RescaleSlope, RescaleIntercept) written, or None


@dataclass
class StudyPlan:
    """Everything sampled for one study before its pixels are rendered."""

    study_id: int
    split: str
    spine: Spine
    series: list[SeriesSpec]
    labels: dict  # row of train.csv / test_labels.csv
    coordinates: list[dict]  # rows of train_label_coordinates.csv
    narrowing: dict  # condition -> (5,) latent narrowing
    facts: dict  # row of studies.csv


@dataclass
class StudyResult:
    """Everything one study contributes to the CSV files."""

    study_id: int
    split: str
    series: list[dict]  # rows of *_series_descriptions.csv
    labels: dict  # row of train.csv / test_labels.csv
    coordinates: list[dict]  # rows of train_label_coordinates.csv
    narrowing: dict  # condition -> list of 5 latent narrowing values (the truth the oracle uses)
    geometry: list[dict]  # per series: stacks, slices, spacing (for the dataset card)
    facts: dict  # anatomy and acquisition variations of the study (studies.csv)


def generate(cfg: SynthConfig) -> Path:
    """Write the dataset described by ``cfg``; returns the output folder. Deterministic for ``cfg.seed``."""
    out = Path(cfg.out_dir)
    _prepare_out_dir(out, cfg.overwrite)
    started = time.perf_counter()
    jobs = study_jobs(cfg)
    if cfg.workers > 1:
        with worker_pool(cfg.workers) as pool:
            results = list(pool.map(_study_job, jobs, chunksize=1))
    else:
        results = [_study_job(job) for job in jobs]
    _write_tables(out, results, cfg)
    (out / TISSUE_DIR).mkdir(exist_ok=True)
    names = tissue_labels(cfg.version)
    (out / TISSUE_DIR / "labels.json").write_text(json.dumps(dict(enumerate(names)), indent=1) + "\n")
    _write_card(out, results, cfg, time.perf_counter() - started)
    return out


def study_jobs(cfg: SynthConfig) -> list[tuple]:
    """(cfg, study id, series ids, split, seed sequence) of every study of the dataset, in order."""
    root = np.random.SeedSequence(cfg.seed)
    ids = _unique_ids(np.random.default_rng(root.spawn(1)[0]), cfg.n_train + cfg.n_test, 1 + SERIES_IDS)
    return [(cfg, int(ids[i, 0]), [int(s) for s in ids[i, 1:]], "train" if i < cfg.n_train else "test", seq)
            for i, seq in enumerate(root.spawn(cfg.n_train + cfg.n_test))]


def _study_job(job) -> StudyResult:
    cfg, study_id, series_ids, split, seed = job
    return make_study(cfg, study_id, series_ids, split, np.random.default_rng(seed))


def make_study(cfg: SynthConfig, study_id: int, series_ids: list[int], split: str,
               rng: np.random.Generator) -> StudyResult:
    """Sample one study's anatomy, labels and acquisitions and write its DICOM files."""
    plan = plan_study(cfg, study_id, series_ids, split, rng)
    images_dir = Path(cfg.out_dir) / f"{split}_images" / str(study_id)
    tissue_dir = Path(cfg.out_dir) / TISSUE_DIR / str(study_id)
    for spec in plan.series:
        _write_series(images_dir / str(spec.series_id), tissue_dir / f"{spec.series_id}.npz", plan.spine, spec,
                      study_id, rng)
    return StudyResult(study_id, split,
                       [{"study_id": study_id, "series_id": s.series_id, "series_description": s.description}
                        for s in plan.series],
                       plan.labels, plan.coordinates, {c: plan.narrowing[c].tolist() for c in CONDITIONS},
                       [_series_geometry(s) for s in plan.series], plan.facts)


def plan_study(cfg: SynthConfig, study_id: int, series_ids: list[int], split: str,
               rng: np.random.Generator) -> StudyPlan:
    """Everything about one study but its pixels: anatomy, grades, series and their looks, labels, points.

    The grades' reading noise is drawn right after the anatomy, from the same generator as the nuisance but
    independently of it, so the images (a function of the narrowing and of nuisance) say nothing about the
    noise: the oracle stays Bayes-optimal."""
    narrowing = label_model.sample_narrowing(rng)
    # what only version 3 draws comes from a stream of its own: the studies' geometry, grades, labels and points
    # are those of version 2 for a seed, only the images differ
    physics = physics_stream(rng) if cfg.version >= 3 else None
    spine, facts = _sample_spine(narrowing, rng, cfg, physics)
    grades = {c: label_model.read_label(narrowing[c], cfg.label_noise, rng) for c in CONDITIONS}
    layout = _series_layout(rng, cfg)
    place = (float(rng.beta(0.5, 0.5)), float(rng.random())) if rng.random() < cfg.sag_placement_rate else None
    vendor = int(rng.choice(len(VENDOR_GAINS), p=VENDOR_WEIGHTS))
    vendor_gain = float(rng.uniform(*VENDOR_GAINS[vendor]))
    scanner = None  # version 3: (field strength T, manufacturer)
    if physics is not None:
        scanner = (3.0 if physics.random() < cfg.field_3t_rate else 1.5, mr.MANUFACTURERS[vendor])
        facts["field_t"] = scanner[0]
    specs, first_axial = [], True
    for (description, levels), series_id in zip(layout, series_ids):
        if description == "Axial T2":
            plan = plan_axial(spine, rng, cfg, levels, partial=first_axial and rng.random() < cfg.ax_partial_rate)
            first_axial = False
        else:
            plan = plan_sagittal(spine, description, rng, cfg, place)
        specs.append(SeriesSpec(series_id, description, plan,
                                _sample_look(description, vendor_gain, rng, cfg, scanner, physics),
                                *_sample_tags(rng, cfg)))
    label_series, uncovered = _label_series(spine, specs, rng)
    missing = uncovered | _missing_labels(rng, cfg.missing_label_rate)
    labels = {"study_id": study_id}
    for c in CONDITIONS:
        for li, lv in enumerate(LEVELS):
            labels[label_column(c, lv)] = None if (c, lv) in missing else SEVERITIES[grades[c][li]]
    coordinates = _label_coordinates(spine, label_series, study_id, labels, rng, cfg) if split == "train" else []
    sagittal = [s for s in specs if s.description.startswith("Sagittal")]
    facts.update(
        study_id=study_id, split=split, n_series=len(specs),
        series=";".join(s.description for s in specs), vendor=int(vendor),
        sagittal_placed=place is not None,
        sagittal_centre_mm=round(_sagittal_centre_offset(spine, sagittal[0].plan), 1) if sagittal else None,
        axial_coverage=";".join(f"{s.plan.coverage}:{''.join(str(v) for v in s.plan.levels)}"
                                for s in specs if s.description == "Axial T2"),
        missing_labels=sum(v is None for k, v in labels.items() if k != "study_id"))
    return StudyPlan(study_id, split, spine, specs, labels, coordinates, narrowing, facts)


def physics_stream(rng: np.random.Generator) -> np.random.Generator:
    """The random stream of what only version 3 draws for a study: a child of the study's seed sequence with a
    fixed key (not `Generator.spawn`, whose counter would give another child each time a study is planned)."""
    seed = rng.bit_generator.seed_seq
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, 0)))


def _sample_spine(narrowing: dict[str, np.ndarray], rng: np.random.Generator, cfg: SynthConfig,
                  physics: np.random.Generator | None = None) -> tuple[Spine, dict]:
    """Pose and shape of one patient's spine (world LPS mm), and what is unusual about it (facts)."""
    angles = np.radians(rng.uniform([-10, -5, -4], [10, 5, 4]))  # pitch (x), roll (y), yaw (z)
    rotation = _rotation(*angles)
    origin = np.array([rng.uniform(-10, 10), rng.uniform(0, 40), rng.uniform(-150, 150)])
    n_lumbar = 5
    if rng.random() < cfg.transitional_rate:
        n_lumbar = 4 if rng.random() < 0.5 else 6
    pitch = rng.uniform(34.0, 39.0)  # disc-to-disc distance along the arc, lumbar
    thoracic_pitch = pitch * rng.uniform(0.78, 0.88)
    # vertebra k lies between discs k-1 and k; the lowest n_lumbar ones are lumbar-type
    lumbar = np.arange(N_DISCS) >= N_DISCS - n_lumbar
    gaps = np.where(lumbar, pitch, thoracic_pitch) + rng.normal(0, 1.5, N_DISCS)
    disc_t = np.zeros(N_DISCS)
    l3_l4 = N_DISCS - 3
    for k in range(l3_l4 + 1, N_DISCS):
        disc_t[k] = disc_t[k - 1] - gaps[k]
    for k in range(l3_l4 - 1, -1, -1):
        disc_t[k] = disc_t[k + 1] + gaps[k + 1]
    height = np.where(lumbar, rng.uniform(8.0, 11.0, N_DISCS), rng.uniform(5.0, 7.0, N_DISCS))
    height[-LABELLED:] *= 1.0 - 0.3 * narrowing["spinal_canal_stenosis"]  # degenerated discs lose height
    straight_above = float(disc_t[-LABELLED - 1] + rng.uniform(0.0, 25.0))
    scoliosis, cobb = (0.0, 0.0, 80.0), 0.0
    if rng.random() < cfg.scoliosis_rate:
        cobb = float(rng.uniform(min(4.0, cfg.scoliosis_max_deg), cfg.scoliosis_max_deg))
        width = float(rng.uniform(60.0, 110.0))
        # the bump's tangents tilt by +-atan(0.858 A / w): the Cobb angle is twice that
        amplitude = np.tan(np.radians(cobb) / 2) * width / np.sqrt(2 / np.e) * (1 if rng.random() < 0.5 else -1)
        scoliosis = (float(amplitude), float(rng.uniform(-60.0, 60.0)), width)
    listhesis = np.zeros(N_DISCS)
    listhesis_level = ""
    if rng.random() < cfg.listhesis_rate:
        k = N_DISCS - 2 if rng.random() < 0.7 else N_DISCS - 1  # L4 over L5, or L5 over S1
        listhesis[k] = rng.uniform(2.0, 7.0)
        listhesis_level = LEVEL_NAMES[k - (N_DISCS - LABELLED)]
    lf_share = np.zeros(N_DISCS)
    lf_share[-LABELLED:] = rng.uniform(0.0, 0.6, LABELLED)
    facet_share = np.ones((2, N_DISCS))
    facet_share[:, -LABELLED:] = rng.uniform(0.3, 1.0, (2, LABELLED))
    sacral_disc = float(rng.uniform(1.5, 3.0)) if rng.random() < cfg.sacral_disc_rate else 0.0
    spine = Spine(origin=origin, rotation=rotation, scale=float(rng.uniform(0.9, 1.1)),
                  radius=float(rng.uniform(250.0, 450.0)), disc_t=disc_t, disc_height=height,
                  narrowing=narrowing, n_lumbar=n_lumbar, straight_above=straight_above, scoliosis=scoliosis,
                  listhesis=listhesis, lf_share=lf_share, facet_share=facet_share, sacral_disc=sacral_disc,
                  marrow=float(rng.uniform(0.85, 1.15)))
    if physics is not None:
        _sample_tissue(spine, narrowing, physics)
    facts = {"n_lumbar": n_lumbar, "cobb_deg": round(cobb, 1), "listhesis_level": listhesis_level,
             "listhesis_mm": round(float(listhesis.max()), 2)}
    return spine, facts


def _sample_tissue(spine: Spine, narrowing: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Version 3: the physics and the finer anatomy of one patient (marrow fat and its texture, the nuclei's
    degeneration, where the roots of the cauda equina lie)."""
    spine.version = 3
    spine.marrow_fat = float(rng.uniform(0.25, 0.6))  # adult lumbar marrow: about 30-50 % fat
    # a smooth texture of 5-10 points of fat fraction (the spread within a vertebra), wavelengths 12-30 mm: slow
    # enough that a slice's thickness averages little of it (the slice profile is integrated near boundaries only)
    n_waves = 4
    direction = rng.normal(size=(n_waves, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    frequency = 1.0 / rng.uniform(12.0, 30.0, n_waves)
    spine.marrow_waves = np.c_[direction * frequency[:, None], rng.uniform(0, 2 * np.pi, n_waves),
                               rng.uniform(0.03, 0.07, n_waves)]
    degeneration = rng.uniform(0.0, 0.25, N_DISCS)  # the nucleus' T2 loss follows the canal narrowing, with nuisance
    degeneration[-LABELLED:] += 0.8 * narrowing["spinal_canal_stenosis"]
    spine.degeneration = np.clip(degeneration, 0.0, 1.0)
    # roots layered in the dorsal half of the sac (supine), two loose rows
    spine.cauda = np.c_[rng.uniform(-6.5, 6.5, N_CAUDA_ROOTS), rng.uniform(-1.0, 4.5, N_CAUDA_ROOTS)]


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _series_layout(rng: np.random.Generator, cfg: SynthConfig) -> list[tuple[str, list[int] | None]]:
    """(description, axial levels or None) of each series of a study: the three usual ones, 0-2 extra ones (a
    second Axial T2 through L3-S1 or all discs, or a repeated sagittal), rarely without one sagittal."""
    layout: list[tuple[str, list[int] | None]] = [("Sagittal T1", None), ("Sagittal T2/STIR", None),
                                                  ("Axial T2", None)]
    p4, p5 = (list(cfg.extra_series_rates) + [0.0, 0.0])[:2]
    draw = rng.random()
    n_extra = 2 if draw < p5 else 1 if draw < p5 + p4 else 0
    for _ in range(n_extra):
        if rng.random() < cfg.extra_axial_share:
            layout.append(("Axial T2", [2, 3, 4] if rng.random() < 0.5 else None))
        else:
            layout.append(("Sagittal T1" if rng.random() < 0.5 else "Sagittal T2/STIR", None))
    if rng.random() < cfg.missing_sagittal_rate:
        gone = "Sagittal T1" if rng.random() < 2 / 3 else "Sagittal T2/STIR"
        layout.remove((gone, None))
    return layout


def _sample_look(description: str, vendor_gain: float, rng: np.random.Generator, cfg: SynthConfig,
                 scanner: tuple[float, str] | None = None, physics: np.random.Generator | None = None) -> dict:
    """Appearance of one series: gain (the vendor's scale), noise, bias field, fat suppression, artefacts.
    Version 3 (``scanner``: field strength, manufacturer; ``physics``: the generator of what only version 3
    draws): the series' `mr.Sequence` (its kind from the same draw as version 2's contrast) and the share of
    k-space acquired (phase, readout), in place of the contrast table's overrides."""
    contrast: dict[str, float] = {}
    kind = "T1"
    if description == "Sagittal T2/STIR":
        stir = rng.random() < cfg.stir_rate
        contrast, kind = ({"fat": 0.15, "marrow": 0.30}, "STIR") if stir else ({"fat": 0.70, "marrow": 0.50}, "T2")
    elif description == "Axial T2":
        kind = "T2"
        if rng.random() < cfg.axial_fat_sat_rate:
            contrast, kind = {"fat": 0.15, "marrow": 0.30}, "T2 FS"
    look = {"gain": vendor_gain * float(rng.uniform(0.8, 1.25)), "noise": float(rng.uniform(*cfg.noise)),
            "bias": rng.uniform(-cfg.bias_max, cfg.bias_max, 3), "contrast": contrast,
            "phase_axis": 1 if description.startswith("Sagittal") else int(rng.integers(0, 2)),
            "ghost": None, "wrap": False}
    if rng.random() < cfg.ghosting_rate:
        look["ghost"] = (float(rng.uniform(0.04, 0.12)), float(rng.uniform(0.15, 0.45)))
    look["wrap"] = bool(rng.random() < cfg.wrap_rate)
    if scanner is not None and physics is not None:
        look.update(contrast={}, sequence=mr.sample_sequence(kind, *scanner, physics),
                    acquired=(float(physics.uniform(*cfg.acquired_fraction)), float(physics.uniform(0.9, 1.0))))
    return look


def _sample_tags(rng: np.random.Generator, cfg: SynthConfig) -> tuple[set, bool, tuple[float, float] | None]:
    drop = {tag for tag in OPTIONAL_TAGS if rng.random() < cfg.missing_tag_rate}
    flip_location = bool(rng.random() < 0.2)  # SliceLocation with the wrong sign, as some scanners write it
    rescale = None
    if rng.random() < cfg.rescale_rate:  # mostly the identity (integers stay integers), rarely a float slope
        rescale = (round(float(rng.uniform(0.5, 3.5)), 5), 0.0) if rng.random() < cfg.rescale_nonintegral_share \
            else (1.0, 0.0)
    return drop, flip_location, rescale


def _label_series(spine: Spine, specs: list[SeriesSpec],
                  rng: np.random.Generator) -> tuple[dict, set[tuple[str, str]]]:
    """The series each (condition, level) is marked on, and the (condition, level) no series shows.

    Sagittal conditions: one series of their type chosen per study (the other sagittal type if the study lacks
    it). Subarticular: per level the first axial series, in a random order, that covers the recess."""
    chosen: dict = {}
    by_type = {d: [s for s in specs if s.description == d] for d in ("Sagittal T1", "Sagittal T2/STIR", "Axial T2")}
    pick = {}
    for description, other in (("Sagittal T2/STIR", "Sagittal T1"), ("Sagittal T1", "Sagittal T2/STIR")):
        candidates = by_type[description] or by_type[other]
        pick[description] = candidates[int(rng.integers(len(candidates)))] if candidates else None
    axials = [by_type["Axial T2"][i] for i in rng.permutation(len(by_type["Axial T2"]))]
    uncovered = set()
    for c in CONDITIONS:
        for li, lv in enumerate(LEVELS):
            if CONDITION_SERIES[c] != "Axial T2":
                spec = pick[CONDITION_SERIES[c]]
            else:
                point = spine.label_point(c, li)
                spec = next((s for s in axials if s.plan.covers(point)), None)
            if spec is None:
                uncovered.add((c, lv))
            chosen[(c, lv)] = spec
    return chosen, uncovered


def _missing_labels(rng: np.random.Generator, rate: float) -> set[tuple[str, str]]:
    """1-3 conditions of one level (mostly L5/S1) left unlabelled, in a share ``rate`` of studies."""
    if rng.random() >= rate:
        return set()
    level = LEVELS[int(rng.choice(len(LEVELS), p=_MISSING_LEVEL_WEIGHTS))]
    picks = rng.choice(len(CONDITIONS), size=int(rng.integers(1, 4)), replace=False)
    return {(CONDITIONS[i], level) for i in picks}


def _write_series(folder: Path, tissue_path: Path, spine: Spine, spec: SeriesSpec, study_id: int, rng) -> None:
    """Render and write every slice of a series as ``{InstanceNumber}.dcm``, and its tissue truth to
    ``tissue_path`` (``labels`` (n, rows, columns) uint8, plane p the file whose InstanceNumber is
    ``instance_number[p]``; planes of another matrix size are padded with 255)."""
    plan, drop = spec.plan, spec.drop
    planes, numbers = [], []
    writer = SeriesWriter()
    for stack, k, number in plan.slices():
        ipp = stack.image_position(k)
        location = float(stack.centers[k] @ stack.normal) * (-1 if spec.flip_location else 1)
        tags = SliceTags(
            study_id=study_id, series_id=spec.series_id, instance_number=number,
            image_position=tuple(ipp), image_orientation=tuple(np.r_[stack.row_dir, stack.col_dir]),
            pixel_spacing=stack.pixel_spacing,
            slice_thickness=None if "SliceThickness" in drop else plan.slice_thickness,
            spacing_between_slices=None if "SpacingBetweenSlices" in drop else plan.slice_thickness,  # often wrong
            slice_location=None if "SliceLocation" in drop else location,
            series_description=None if "SeriesDescription" in drop else plan.description,
            patient_position=None if "PatientPosition" in drop else plan.patient_position,
            rescale=spec.rescale, uid_seed=f"{study_id}/{spec.series_id}/{number}",
            extra=spec.look["sequence"].tags() if "sequence" in spec.look else {},
        )
        pixels, tissue = render_slice(spine, stack, k, plan, spec.look, rng)
        writer.write(folder / f"{number}.dcm", pixels, tags)
        planes.append(tissue)
        numbers.append(number)
    _write_tissue(tissue_path, planes, numbers)


def _write_tissue(path: Path, planes: list[np.ndarray], numbers: list[int]) -> None:
    """One series' tissue truth (see `_write_series`), compressed; byte-identical for the same planes."""
    rows, cols = max(p.shape[0] for p in planes), max(p.shape[1] for p in planes)
    labels = np.full((len(planes), rows, cols), 255, dtype=np.uint8)
    for n, plane in enumerate(planes):
        labels[n, :plane.shape[0], :plane.shape[1]] = plane
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, labels=labels, instance_number=np.asarray(numbers, dtype=np.int32))


def _label_coordinates(spine: Spine, label_series: dict, study_id: int, labels: dict, rng: np.random.Generator,
                       cfg: SynthConfig) -> list[dict]:
    """Rows of train_label_coordinates.csv (DICOM pixel frame): each labelled structure as a radiologist clicks
    it, with click noise in the image plane and sometimes on the neighbouring slice."""
    rows = []
    for ci, condition in enumerate(CONDITIONS):
        for li, level in enumerate(LEVELS):
            spec = label_series[(condition, level)]
            if labels[label_column(condition, level)] is None or spec is None:
                continue  # unlabelled items have no coordinates either
            point = spine.label_point(condition, li)
            si, k, _, _, _ = spec.plan.nearest(point)
            stack = spec.plan.stacks[si]
            if rng.random() < cfg.click_slice_rate and len(stack.centers) > 1:
                k = k + 1 if (rng.random() < 0.5 and k + 1 < len(stack.centers)) or k == 0 else k - 1
            noisy = point + cfg.click_noise_mm * (rng.standard_normal() * stack.row_dir
                                                  + rng.standard_normal() * stack.col_dir)
            x, y, _ = stack.world_to_pixel(noisy, k)
            x, y = float(np.clip(x, 0, stack.cols - 1)), float(np.clip(y, 0, stack.rows - 1))
            rows.append({"study_id": study_id, "series_id": spec.series_id,
                         "instance_number": spec.plan.instance_numbers[si][k],
                         "condition": CONDITION_NAMES[ci], "level": LEVEL_NAMES[li], "x": x, "y": y})
    return rows


def _sagittal_centre_offset(spine: Spine, plan: SeriesPlan) -> float:
    """Head-ward distance (mm, along the image's vertical) of a sagittal image's centre from the L3/L4 disc."""
    stack = plan.stacks[0]
    centre = stack.centers[len(stack.centers) // 2]
    return float((spine.disc_centre(2, nominal=True) - centre) @ stack.col_dir)


def _series_geometry(spec: SeriesSpec) -> dict:
    plan = spec.plan
    return {"description": spec.description, "stacks": len(plan.stacks), "slices": plan.n_files,
            "step_mm": plan.stacks[0].step, "rows": plan.stacks[0].rows, "cols": plan.stacks[0].cols,
            "pixel_mm": plan.stacks[0].pixel_spacing[0], "fov_mm": plan.fov_mm, "coverage": plan.coverage,
            "rescale": spec.rescale is not None, "stir": _fat_suppressed(spec.look),
            "ghost": spec.look["ghost"] is not None, "wrap": spec.look["wrap"]}


def _fat_suppressed(look: dict) -> bool:
    if "sequence" in look:
        return look["sequence"].kind in ("STIR", "T2 FS")
    return look["contrast"].get("fat", 1.0) < 0.2


def _unique_ids(rng: np.random.Generator, n: int, per_row: int) -> np.ndarray:
    """(n, per_row) distinct integer ids in the real data's range (study and series ids)."""
    ids = rng.choice(np.arange(4_000_000, 4_290_000_000, dtype=np.int64), size=n * per_row, replace=False) \
        if n * per_row > 10**6 else _distinct(rng, n * per_row)
    return ids.reshape(n, per_row)


def _distinct(rng: np.random.Generator, count: int) -> np.ndarray:
    ids: set[int] = set()
    while len(ids) < count:
        ids.update(int(v) for v in rng.integers(4_000_000, 4_290_000_000, size=count - len(ids)))
    return np.array(sorted(ids, key=lambda v: rng.random()), dtype=np.int64)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out} is not empty; pass overwrite=true to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _write_tables(out: Path, results: list[StudyResult], cfg: SynthConfig) -> None:
    train = [r for r in results if r.split == "train"]
    test = [r for r in results if r.split == "test"]
    label_frame = lambda rs: pd.DataFrame([r.labels for r in rs], columns=["study_id", *LABEL_COLUMNS])  # noqa: E731
    label_frame(train).to_csv(out / "train.csv", index=False)
    label_frame(test).to_csv(out / "test_labels.csv", index=False)
    coord_cols = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    pd.DataFrame([c for r in train for c in r.coordinates], columns=coord_cols).to_csv(
        out / "train_label_coordinates.csv", index=False)
    series_cols = ["study_id", "series_id", "series_description"]
    pd.DataFrame([s for r in train for s in r.series], columns=series_cols).to_csv(
        out / "train_series_descriptions.csv", index=False)
    pd.DataFrame([s for r in test for s in r.series], columns=series_cols).to_csv(
        out / "test_series_descriptions.csv", index=False)
    row_ids = [rid for r in test for rid in study_row_ids(r.study_id)]
    sample = pd.DataFrame({"row_id": row_ids, **{c: 1.0 / 3 for c in PROB_COLUMNS}})
    sample.to_csv(out / "sample_submission.csv", index=False)
    truth = pd.DataFrame([{"study_id": r.study_id, "condition": c, "level": lv, "narrowing": r.narrowing[c][li],
                           "true_grade": SEVERITIES[int(label_model.true_grade(r.narrowing[c][li]))],
                           "split": r.split} for r in results for c in CONDITIONS for li, lv in enumerate(LEVELS)],
                         columns=["study_id", "condition", "level", "narrowing", "true_grade", "split"])
    oracle = label_model.oracle_submission(truth[truth.split == "test"], cfg.label_noise)
    assert list(oracle.row_id) == row_ids  # the test studies' rows, in the sample submission's order
    oracle.to_csv(out / "oracle_submission.csv", index=False)
    truth.to_csv(out / "truth.csv", index=False)
    columns = STUDY_COLUMNS + (["field_t"] if cfg.version >= 3 else [])
    pd.DataFrame([r.facts for r in results], columns=columns).to_csv(out / "studies.csv", index=False)


STUDY_COLUMNS = ["study_id", "split", "n_series", "series", "n_lumbar", "cobb_deg", "listhesis_level", "listhesis_mm",
                 "vendor", "sagittal_placed", "sagittal_centre_mm", "axial_coverage", "missing_labels"]


def _write_card(out: Path, results: list[StudyResult], cfg: SynthConfig, seconds: float) -> None:
    geometry = pd.DataFrame([g for r in results for g in r.geometry])
    facts = pd.DataFrame([r.facts for r in results], columns=STUDY_COLUMNS)
    card = {"generator": "spine.synth", "generator_version": cfg.version, "config": asdict(cfg),
            "seconds": round(seconds, 2),
            "studies": {"train": sum(r.split == "train" for r in results),
                        "test": sum(r.split == "test" for r in results)},
            "variations": {
                "series_per_study": {str(k): int(v) for k, v in facts.n_series.value_counts().sort_index().items()},
                "transitional": int((facts.n_lumbar != 5).sum()), "scoliosis": int((facts.cobb_deg > 0).sum()),
                "listhesis": int((facts.listhesis_level != "").sum()),
                "missing_labels": int((facts.missing_labels > 0).sum()),
                "rescale_files": int(geometry.loc[geometry.rescale, "slices"].sum()),
                "files": int(geometry.slices.sum())},
            "series": geometry.groupby("description").agg(
                count=("slices", "size"), slices_min=("slices", "min"), slices_max=("slices", "max"),
                step_min=("step_mm", "min"), step_max=("step_mm", "max"),
                multi_stack=("stacks", lambda s: int((s > 1).sum())), rows_min=("rows", "min"),
                rows_max=("rows", "max"), fov_min=("fov_mm", "min"), fov_max=("fov_mm", "max"),
                rescale=("rescale", "sum"), stir=("stir", "sum"), ghost=("ghost", "sum"), wrap=("wrap", "sum"),
            ).round(2).reset_index().to_dict("records")}
    (out / "dataset.json").write_text(json.dumps(card, indent=2, default=float))
