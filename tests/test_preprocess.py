"""python -m spine.preprocess end to end on the tiny synthetic studies: cache layout, geometry, label points
on their structures (also projected into another series), folds, re-runs, and a killed run that resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from spine.config import compose
from spine.constants import condition_from_name, level_from_name
from spine.preprocess import Cache
from spine.preprocess.cache import CACHE_VERSION
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.folds import make_folds, strata
from spine.preprocess.run import run
from spine.preprocess.volume import volume_from_dicom

# Coarser than the defaults (the tiny studies have 3-4 mm pixels), to keep the tests fast.
SPACING = ["spacing.sagittal_t1=[3,1.6,1.6]", "spacing.sagittal_t2_stir=[3,1.6,1.6]", "spacing.axial_t2=[1.6,1.6,3]"]
REPO = Path(__file__).resolve().parents[1]


def config(data_dir: Path, cache_dir: Path, *overrides: str) -> PreprocessConfig:
    return compose("preprocess", [f"data_dir={data_dir}", f"cache_dir={cache_dir}", "workers=1", "progress=false",
                                  *SPACING, *overrides], PreprocessConfig)


@pytest.fixture(scope="module")
def tiny_cache(tiny_dataset: Path, tmp_path_factory) -> Cache:
    summary = run(config(tiny_dataset, tmp_path_factory.mktemp("cache"), "split=all"))
    assert summary.exit_code == 0 and summary.n_errors == 0
    return Cache.open(Path(summary.cache_root).parent)


def sample(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """Trilinear values of a volume at continuous voxel indices (N, 3) as (i, j, k)."""
    array = sitk.GetArrayFromImage(image)  # [k, j, i]
    return ndimage.map_coordinates(array, [ijk[:, 2], ijk[:, 1], ijk[:, 0]], order=1)


def percentile_of(cache: Cache, study: int, series: int, ijk: np.ndarray) -> np.ndarray:
    """Fraction of the covered voxels of a volume darker than the volume at each point."""
    image, mask = cache.load_volume(study, series), cache.load_mask(study, series)
    covered = np.sort(sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(mask) > 0])
    return np.searchsorted(covered, sample(image, ijk)) / len(covered)


def test_cache_layout_and_series_table(tiny_dataset: Path, tiny_cache: Cache) -> None:
    listed = pd.concat([pd.read_csv(tiny_dataset / f"{s}_series_descriptions.csv") for s in ("train", "test")])
    s = tiny_cache.series
    assert len(s) == len(listed) and set(s.series_id) == set(listed.series_id)
    assert (s.status == "ok").all() and set(s.split) == {"train", "test"}
    assert tiny_cache.cache_id.startswith(f"lps-v{CACHE_VERSION}-")
    assert tiny_cache.info["params"]["spacing_mm"]["axial_t2"] == [1.6, 1.6, 3]
    for row in s.itertuples():
        path = tiny_cache.volume_path(row.study_id, row.series_id)
        assert path.suffix == ".nii" and path.is_file() and tiny_cache.mask_path(row.study_id, row.series_id).is_file()
        image = tiny_cache.load_volume(row.study_id, row.series_id)
        assert image.GetPixelID() == sitk.sitkFloat32
        assert image.GetSize() == tuple(int(v) for v in row.shape.split())
        np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())
        np.testing.assert_allclose(image.GetSpacing(), [float(v) for v in row.spacing.split()], rtol=1e-6)
        assert tiny_cache.series_of(row.study_id, row.description).count(row.series_id) == 1
    # memory-mapped, LPS-ordered NIfTI with the RAS affine diag(-sx, -sy, sz)
    row = s.iloc[0]
    array = tiny_cache.load_array(row.study_id, row.series_id)
    assert isinstance(array, np.memmap) and array.dtype == np.float32
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(tiny_cache.load_volume(row.study_id, row.series_id)).T)
    affine = nib.load(tiny_cache.volume_path(row.study_id, row.series_id)).affine
    np.testing.assert_allclose(np.diag(affine)[:3], np.array([-1, -1, 1]) * [float(v) for v in row.spacing.split()],
                               rtol=1e-6)


def test_coordinates_are_the_dicom_points_in_every_frame(tiny_dataset: Path, tiny_cache: Cache) -> None:
    labels = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    coords = tiny_cache.coordinates
    assert len(coords) == len(labels)
    pd.testing.assert_frame_equal(coords[labels.columns], labels)  # every row, original columns, same order
    assert coords[["world_x", "voxel_i"]].notna().all().all()
    for (study, series), rows in coords.groupby(["study_id", "series_id"]):
        folder = tiny_dataset / "train_images" / str(study) / str(series)
        headers = {int(ds.InstanceNumber): ds for ds in
                   (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())}
        image = tiny_cache.load_volume(study, series)
        affine = nib.load(tiny_cache.volume_path(study, series)).affine
        for row in rows.itertuples():
            ds = headers[row.instance_number]  # world = IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c
            iop = np.array(ds.ImageOrientationPatient, float)
            world = (np.array(ds.ImagePositionPatient, float) + row.x * float(ds.PixelSpacing[1]) * iop[:3]
                     + row.y * float(ds.PixelSpacing[0]) * iop[3:])
            np.testing.assert_allclose([row.world_x, row.world_y, row.world_z], world, atol=1e-4)
            ijk = [row.voxel_i, row.voxel_j, row.voxel_k]
            np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(ijk), world, atol=1e-3)
            np.testing.assert_allclose(affine @ [*ijk, 1], [-world[0], -world[1], world[2], 1], atol=1e-3)


def test_label_points_land_on_their_structures(tiny_dataset: Path, tiny_cache: Cache) -> None:
    """Canal points are CSF-bright on sagittal T2 and, projected, on axial T2; foramina fat-bright on T1."""
    truth = pd.read_csv(tiny_dataset / "truth.csv")
    narrowing = {(r.study_id, r.condition, r.level): r.narrowing for r in truth.itertuples()}
    coords = tiny_cache.coordinates
    coords["narrowing"] = [narrowing[(r.study_id, condition_from_name(r.condition), level_from_name(r.level))]
                           for r in coords.itertuples()]
    open_ = coords[coords.narrowing < 0.4]
    canal = open_[open_.condition == "Spinal Canal Stenosis"]
    assert len(canal) >= 8
    checked = 0
    for (study, series), rows in canal.groupby(["study_id", "series_id"]):
        ijk = rows[["voxel_i", "voxel_j", "voxel_k"]].to_numpy()
        assert (percentile_of(tiny_cache, study, series, ijk) > 0.9).all()
        world = rows[["world_x", "world_y", "world_z"]].to_numpy()
        behind = tiny_cache.world_to_voxel(study, series, world + [0.0, 30.0, 0.0])  # spinous process, muscle
        image = tiny_cache.load_volume(study, series)
        assert (sample(image, ijk) > 2 * sample(image, behind)).all()
        for axial in tiny_cache.series_of(study, "Axial T2"):  # cross-series projection
            ijk = tiny_cache.world_to_voxel(study, axial, world)
            mask = tiny_cache.load_mask(study, axial)
            assert (sample(mask, ijk) > 0.99).all()
            assert (percentile_of(tiny_cache, study, axial, ijk) > 0.9).all()
            checked += 1
    assert checked >= 2
    for condition, description in (("Left Neural Foraminal Narrowing", "Sagittal T1"),
                                   ("Right Subarticular Stenosis", "Axial T2")):
        for (study, series), rows in open_[open_.condition == condition].groupby(["study_id", "series_id"]):
            ijk = rows[["voxel_i", "voxel_j", "voxel_k"]].to_numpy()
            assert (percentile_of(tiny_cache, study, series, ijk) > 0.75).all(), (condition, study)


def test_inference_builds_the_cached_volume_in_memory(tiny_dataset: Path, tiny_cache: Cache) -> None:
    """One code path: the volume built in memory from the DICOM folder is the cached one, voxel for voxel."""
    coords = tiny_cache.coordinates
    for description in ("Sagittal T2/STIR", "Axial T2"):
        row = tiny_cache.series[tiny_cache.series.description == description].iloc[0]
        folder = tiny_dataset / f"{row.split}_images" / str(row.study_id) / str(row.series_id)
        volume = volume_from_dicom(folder, description, **tiny_cache.volume_options(description))
        cached = tiny_cache.load_volume(row.study_id, row.series_id)
        assert volume.image.GetOrigin() == cached.GetOrigin() and volume.image.GetSpacing() == cached.GetSpacing()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image), sitk.GetArrayViewFromImage(cached))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.mask),
                                      sitk.GetArrayFromImage(tiny_cache.load_mask(row.study_id, row.series_id)))
        for label in coords[coords.series_id == row.series_id].itertuples():
            world = volume.pixel_to_world(label.instance_number, label.x, label.y)
            np.testing.assert_allclose(world, [label.world_x, label.world_y, label.world_z], atol=1e-9)
            np.testing.assert_allclose(volume.world_to_voxel(world), [label.voxel_i, label.voxel_j, label.voxel_k],
                                       atol=1e-9)


def test_folds_are_stable_and_stratified(tiny_dataset: Path, tiny_cache: Cache) -> None:
    train = pd.read_csv(tiny_dataset / "train.csv")
    assert sorted(tiny_cache.folds.study_id) == sorted(train.study_id)
    pd.testing.assert_frame_equal(tiny_cache.folds, make_folds(train, 5, 0))
    rng = np.random.default_rng(1)
    big = pd.DataFrame({c: rng.choice(["Normal/Mild", "Moderate", "Severe"], 83, p=[0.8, 0.15, 0.05])
                        for c in train.columns[1:]})
    big.insert(0, "study_id", rng.choice(10**9, 83, replace=False))
    folds = make_folds(big, 5, seed=3)
    pd.testing.assert_frame_equal(folds, make_folds(big.sample(frac=1, random_state=0), 5, seed=3))  # order-free
    assert not folds.fold.equals(make_folds(big, 5, seed=4).fold)
    sizes = folds.fold.value_counts()
    assert set(folds.fold) == set(range(5)) and sizes.max() - sizes.min() <= 1
    table = pd.crosstab(strata(big).loc[folds.study_id].to_numpy(), folds.fold.to_numpy())
    assert (table.max(axis=1) - table.min(axis=1)).max() <= 1  # every stratum spread evenly


def test_rerun_skips_complete_series_and_keeps_folds(tiny_dataset: Path, tiny_cache: Cache) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in tiny_cache.root.rglob("*") if p.is_file()}
    summary = run(config(tiny_dataset, tiny_cache.root.parent, "split=all"))
    assert (summary.n_built, summary.n_cached, summary.n_errors) == (0, len(tiny_cache.series), 0)
    for path, stamp in stamps.items():
        if path.suffix in (".nii", ".gz", ".json") or path.name == "folds.csv":
            assert path.stat().st_mtime_ns == stamp, path


def test_cli_run_killed_at_any_moment_resumes_to_the_same_cache(tiny_dataset: Path, tiny_cache: Cache,
                                                               tmp_path: Path) -> None:
    args = [sys.executable, "-m", "spine.preprocess", f"data_dir={tiny_dataset}", f"cache_dir={tmp_path}",
            "split=all", "progress=false", *SPACING]
    first = subprocess.Popen([*args, "workers=1"], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    def records() -> list[Path]:  # complete series (a hidden .tmp.json is a record being written)
        return [p for p in tmp_path.glob("*/volumes/*/*.json") if not p.name.startswith(".")]

    while not records() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done = len(records())
    assert 0 < done < len(tiny_cache.series) and not list(tmp_path.glob("*/series.csv"))
    second = subprocess.run([*args, "workers=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{done} already complete" in second.stderr and "0 error(s)" in second.stderr
    resumed = Cache.open(tmp_path)
    assert resumed.cache_id == tiny_cache.cache_id
    reference = {p.relative_to(tiny_cache.root) for p in tiny_cache.root.rglob("*") if p.is_file()}
    assert {p.relative_to(resumed.root) for p in resumed.root.rglob("*") if p.is_file()} == reference
    for relative in reference - {Path("cache.json")}:  # byte for byte the cache of one uninterrupted run
        assert (resumed.root / relative).read_bytes() == (tiny_cache.root / relative).read_bytes(), relative


def test_cache_open_never_guesses_and_refuses_an_old_version(tmp_path):
    import json

    from spine.preprocess.cache import CACHE_VERSION, Cache, CacheError

    def make(name: str, version: int) -> Path:
        root = tmp_path / name
        root.mkdir()
        (root / "series.csv").write_text("split,study_id,series_id\n")
        (root / "cache.json").write_text(json.dumps({"params": {"version": version}}))
        return root

    with pytest.raises(CacheError, match="no preprocessing cache"):
        Cache.open(tmp_path)
    old = make(f"lps-v{CACHE_VERSION - 1}-aaaa", CACHE_VERSION - 1)
    with pytest.raises(CacheError, match="rebuild it with python -m spine.preprocess"):
        Cache.open(tmp_path)
    with pytest.raises(CacheError, match=f"version {CACHE_VERSION - 1}"):
        Cache.open(old)
    new = make(f"lps-v{CACHE_VERSION}-bbbb", CACHE_VERSION)
    assert Cache.open(tmp_path).root == new  # the one current cache; the stale one is not a candidate
    make(f"lps-v{CACHE_VERSION}-cccc", CACHE_VERSION)
    with pytest.raises(CacheError, match=r"holds 3 caches .*lps-v\d+-bbbb.*pass one of them"):
        Cache.open(tmp_path)
    assert Cache.open(new).root == new
