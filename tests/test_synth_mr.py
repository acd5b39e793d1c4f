"""Generator version 3: MR physics (sequences, signal equations, their DICOM tags, image formation) and the
anatomy that carries the grades the way radiologists read them; version 2 stays selectable."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine.synth import mr
from spine.synth.acquisition import truncate_kspace
from spine.synth.anatomy import (
    CANAL_A,
    FORAMEN_A,
    FORAMEN_U,
    FORAMEN_X,
    RECESS_A,
    RECESS_X,
    TISSUE_LABELS,
    TISSUE_LABELS_V3,
    Spine,
)
from tests.conftest import make_synth

ISSUE_NAMES = ("background", "csf", "cauda_equina", "nerve_root", "vertebral_body", "cortical_bone",
               "posterior_elements", "disc_nucleus", "disc_annulus", "epidural_fat", "fat", "muscle",
               "ligamentum_flavum")


# ------------------------------------------------------------------------------------------- physics
@pytest.mark.parametrize("field_t", mr.FIELDS_T)
def test_signal_equations_give_each_sequence_its_contrast(field_t: float):
    rng = np.random.default_rng(0)
    t1 = mr.typical_sequence("Sagittal T1", field_t).tissue_values()
    t2 = mr.typical_sequence("Sagittal T2/STIR", field_t).tissue_values()
    assert max(t1, key=t1.get) == "fat" and t1["csf"] < t1["muscle"] < t1["nucleus"] < t1["fat"]
    assert max(t2, key=t2.get) == "csf" and t2["muscle"] < 0.1 and t2["nucleus"] > 2 * t2["annulus"]
    assert t1["cortical"] < 0.01 and t2["cortical"] < 0.01  # T2 < 1 ms: dark on every clinical sequence
    stir = mr.sample_sequence("STIR", field_t, mr.MANUFACTURERS[0], rng)
    fat_sat = mr.sample_sequence("T2 FS", field_t, mr.MANUFACTURERS[2], rng)
    assert stir.tissue_values()["fat"] < 0.05 < stir.tissue_values()["muscle"]  # TI at fat's null point
    plain = dataclasses.replace(fat_sat, fat_residual=1.0).tissue_values()
    assert fat_sat.tissue_values()["fat"] < 0.15 * plain["fat"]
    assert fat_sat.tissue_values()["csf"] == pytest.approx(1.0)
    # the nucleus darkens on T2 as it degenerates, toward the annulus
    nucleus = mr.typical_sequence("Axial T2", field_t).nucleus(np.linspace(0.0, 1.0, 5))
    assert np.all(np.diff(nucleus) < 0)


def test_the_stir_inversion_time_nulls_its_tissue():
    tr = 4000.0
    ti = mr.stir_null(240.0, tr)
    seq = mr.Sequence("STIR", 1.5, tr, 50.0, ti=ti, etl=12)
    assert seq.signal(1.0, 240.0, 100.0) == pytest.approx(0.0, abs=1e-9)
    assert 150 < ti < 170  # the clinical TI of STIR at 1.5 T


def test_the_dicom_headers_carry_the_sequence_and_the_pixels_follow_it(tiny_dataset: Path):
    """RepetitionTime, EchoTime, InversionTime (STIR only), MagneticFieldStrength (one per study),
    ScanningSequence, SequenceVariant, ScanOptions, EchoTrainLength, FlipAngle, Manufacturer on every file, as
    the series' description implies; and on the pixels (the tissue truth says where each tissue is) fat is
    bright on T1 and dark on STIR."""
    names = json.loads((tiny_dataset / "tissue" / "labels.json").read_text())
    fat, csf = (int(k) for name in ("fat", "csf") for k, v in names.items() if v == name)
    series = pd.read_csv(tiny_dataset / "train_series_descriptions.csv")
    fields: dict[int, set] = {}
    for row in series.itertuples():
        folder = tiny_dataset / "train_images" / str(row.study_id) / str(row.series_id)
        files = sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))
        ds = pydicom.dcmread(files[len(files) // 2])
        tr, te = float(ds.RepetitionTime), float(ds.EchoTime)
        assert tr > te > 0 and int(ds.EchoTrainLength) >= 2 and float(ds.FlipAngle) > 0
        assert ds.Manufacturer in mr.MANUFACTURERS and "SK" in ds.SequenceVariant
        fields.setdefault(row.study_id, set()).add(float(ds.MagneticFieldStrength))
        scanning = ds.ScanningSequence
        stir = "IR" in (list(scanning) if isinstance(scanning, pydicom.multival.MultiValue) else [scanning])
        assert stir == ("InversionTime" in ds)
        if row.series_description == "Sagittal T1":
            assert tr < 1000 and te < 20 and not stir
        else:
            assert tr > 2000
        truth = np.load(tiny_dataset / "tissue" / str(row.study_id) / f"{row.series_id}.npz")
        plane = truth["labels"][list(truth["instance_number"]).index(int(ds.InstanceNumber))]
        pixels = ds.pixel_array
        plane = plane[:pixels.shape[0], :pixels.shape[1]]
        if (plane == fat).sum() > 30 and (plane == csf).sum() > 30:
            ratio = np.median(pixels[plane == fat]) / np.median(pixels[plane == csf])
            if row.series_description == "Sagittal T1":  # fat 4-5x CSF; tiny's 4 mm pixels mix the two
                assert ratio > 1.5, (row.series_id, ratio)
            if stir:
                assert 150 < float(ds.InversionTime) < 260 and ds.ScanOptions == "IR"
                assert ratio < 0.3, (row.series_id, ratio)
    assert all(len(f) == 1 and f <= {1.5, 3.0} for f in fields.values())


def test_the_tissue_truth_uses_the_issue_names(tiny_dataset: Path):
    names = json.loads((tiny_dataset / "tissue" / "labels.json").read_text())
    assert [names[str(i)] for i in range(len(names))] == list(TISSUE_LABELS_V3)
    assert set(ISSUE_NAMES) <= set(TISSUE_LABELS_V3)
    seen = set()
    for path in (tiny_dataset / "tissue").glob("*/*.npz"):
        seen |= set(np.unique(np.load(path)["labels"]).tolist())
    assert {TISSUE_LABELS_V3.index(n) for n in ISSUE_NAMES} <= seen  # every tissue is drawn somewhere


# ------------------------------------------------------------------------------------------- image formation
def test_truncated_kspace_rings_at_edges_and_keeps_the_mean():
    image = np.zeros((64, 64), dtype=np.float32)
    image[:, 24:40] = 1.0
    ringing = truncate_kspace(image, (0.6, 1.0), phase_axis=1)
    assert ringing.max() > 1.05 and ringing.min() < -0.05  # Gibbs over- and undershoot beside the edges
    assert ringing.mean() == pytest.approx(image.mean(), abs=1e-5)
    assert np.allclose(truncate_kspace(image, (1.0, 1.0), 1), image, atol=1e-5)
    assert np.allclose(ringing[:, 32], ringing[0, 32])  # the readout axis (rows) kept: no change along it


def test_the_slice_profile_is_integrated_across_boundaries():
    """With a profile, the brightness at a point near a boundary is the mean of the planes; far from every
    boundary it is the point's own."""
    spine = _spine()
    sequence = mr.typical_sequence("Sagittal T1")
    normal = spine.tangent(spine.labelled_t[2])  # along the spine: across the endplate of L4's body
    top = spine.labelled_t[2] - spine.disc_height[-3] / 2
    points = spine.spine_to_world(np.array([[0.0, -2.0, top - 1.0], [0.0, -2.0, top - 12.0]]))  # 1 mm; deep
    offsets = (-2.0, 0.0, 2.0)
    integrated = spine.render(points, sequence, profile=(normal, offsets))
    planes = np.stack([spine.render(points + o * normal, sequence) for o in offsets])
    assert integrated[0] == pytest.approx(planes[:, 0].mean(), abs=1e-5)
    assert abs(planes[0, 0] - planes[2, 0]) > 0.1  # the boundary lies between the planes
    assert integrated[1] == pytest.approx(planes[1, 1], abs=1e-6)


# ------------------------------------------------------------------------------------------- anatomy
def test_canal_narrowing_effaces_the_csf_around_the_cauda_equina():
    def central(x, a):
        return np.abs(x) < 6.0

    open_, tight = (_axial_counts(_spine(spinal=n), 3, central) for n in (0.0, 1.0))
    assert tight["csf"] < 0.35 * open_["csf"]
    assert tight["cauda_equina"] > 0.5 * open_["cauda_equina"] > 0  # the roots stay, the CSF around them goes


def test_subarticular_narrowing_closes_the_recess_on_the_traversing_root():
    def recess(x, a):  # lateral of the main sac (|x| < 10 mm)
        return (x > RECESS_X - 0.5) & (x < RECESS_X + 5.0) & (np.abs(a - RECESS_A) < 4.0)

    open_, tight = (_axial_counts(_spine(left_subarticular_stenosis=n), 3, recess) for n in (0.0, 1.0))
    assert open_["nerve_root"] > 0 and tight["csf"] < 0.3 * open_["csf"]
    assert tight["nerve_root"] < open_["nerve_root"]  # squeezed by the recess


def test_foraminal_narrowing_obliterates_the_perineural_fat_and_deforms_the_root():
    open_, tight = (_foramen_counts(_spine(left_neural_foraminal_narrowing=n), 3) for n in (0.0, 1.0))
    assert tight["fat"] < 0.5 * open_["fat"] and 0 < tight["nerve_root"] < open_["nerve_root"] * 1.2
    assert tight["nerve_root"] != open_["nerve_root"]


def test_version_2_stays_selectable(tmp_path: Path):
    out = make_synth(tmp_path / "v2", "version=2", "n_train=1", "n_test=0")
    assert json.loads((out / "dataset.json").read_text())["generator_version"] == 2
    names = json.loads((out / "tissue" / "labels.json").read_text())
    assert [names[str(i)] for i in range(len(names))] == list(TISSUE_LABELS)
    first = next((out / "train_images").glob("*/*/*.dcm"))
    assert "RepetitionTime" not in pydicom.dcmread(first, stop_before_pixels=True)


# the tiny preset's first train and test study (seed 0) by version 2 before version 3 existed (commit 380d256):
# the SHA-256 of every file's PixelData and every table. Float rendering may differ in the last bit with another
# numpy, so the check runs with the numpy it was recorded with.
V2_FINGERPRINT = ("2.4.6", "d4836a244b0171adf2d2b7ccaa6f5f2ad53e9a6e6472fb2d22823c697292af5f")


def test_version_2_writes_the_images_it_always_wrote(tmp_path: Path):
    if np.__version__ != V2_FINGERPRINT[0]:
        pytest.skip(f"fingerprint recorded with numpy {V2_FINGERPRINT[0]}, this is {np.__version__}")
    import hashlib

    out = make_synth(tmp_path / "v2", "version=2", "n_train=1", "n_test=1")
    digest = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.suffix in (".dcm", ".csv"):
            digest.update(path.relative_to(out).as_posix().encode())
            digest.update(pydicom.dcmread(path).PixelData if path.suffix == ".dcm" else path.read_bytes())
    assert digest.hexdigest() == V2_FINGERPRINT[1]


# ------------------------------------------------------------------------------------------- helpers
def _spine(**narrowing: float) -> Spine:
    """An average version-3 spine in the canonical pose, every level open but the given ones at L3/L4."""
    n_discs = 8
    disc_t = 36.0 * (np.arange(n_discs)[::-1] - (n_discs - 3))
    levels = {c: np.zeros(5) for c in ("spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                                        "right_neural_foraminal_narrowing", "left_subarticular_stenosis",
                                        "right_subarticular_stenosis")}
    for condition, value in narrowing.items():
        key = "spinal_canal_stenosis" if condition == "spinal" else condition
        levels[key][2] = value
    cauda = np.c_[np.linspace(-6.0, 6.0, 10), np.tile([0.0, 3.0], 5)]
    return Spine(origin=np.zeros(3), rotation=np.eye(3), scale=1.0, radius=1e6, disc_t=disc_t,
                 disc_height=np.full(n_discs, 9.0), narrowing=levels, version=3, cauda=cauda,
                 lf_share=np.full(n_discs, 0.3), facet_share=np.full((2, n_discs), 0.5))


def _axial_counts(spine: Spine, level: int, where=None) -> dict[str, int]:
    """Tissue label counts on a 0.25 mm grid of the axial plane through a labelled disc (around the canal)."""
    x, a = np.meshgrid(np.arange(-16.0, 16.0, 0.25), np.arange(CANAL_A - 10.0, CANAL_A + 10.0, 0.25))
    if where is not None:
        keep = where(x, a)
        x, a = x[keep], a[keep]
    t = np.full(x.shape, spine.labelled_t[level - 1] + 0.5)
    return _counts(spine, np.stack([x.ravel(), a.ravel(), t.ravel()], axis=-1))


def _foramen_counts(spine: Spine, level: int) -> dict[str, int]:
    """Label counts on the left parasagittal plane through the foramen of a labelled level."""
    a, u = np.meshgrid(np.arange(FORAMEN_A - 8.0, FORAMEN_A + 8.0, 0.25), np.arange(FORAMEN_U - 9.0, FORAMEN_U + 9.0,
                                                                                       0.25))
    t = spine.labelled_t[level - 1] + u
    return _counts(spine, np.stack([np.full(a.size, FORAMEN_X), a.ravel(), t.ravel()], axis=-1))


def _counts(spine: Spine, spine_points: np.ndarray) -> dict[str, int]:
    _, tissue = spine.render(spine.spine_to_world(spine_points), "Axial T2", labels=True)
    names = spine.tissue_labels
    return {name: int((tissue == i).sum()) for i, name in enumerate(names)}


def test_the_versions_figure_draws_one_study_by_both_generators(tmp_path: Path):
    from spine.synth.preview import main

    out = tmp_path / "versions.png"
    assert main(["versions=true", "seed=0", f"out={out}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
