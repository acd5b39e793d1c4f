"""python -m spine.preprocess end to end on the tiny synthetic studies: cache layout (the acquired stacks),
geometry, label points on their structures (also projected into another series), the stored integers, folds,
re-runs, and a killed run that resumes."""

from __future__ import annotations

import os
import pickle
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

from spine.cache import CACHE_VERSION, LPS_TO_RAS, SERIES_COLUMNS, Cache, parse_triple, record_path, stack_path
from spine.cli import compose
from spine.constants import condition_from_name, level_from_name
from spine.data.grid import SamplingGrid
from spine.data.volume import SeriesVolume
from spine.io.dicom import read_series
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.folds import make_folds, strata
from spine.preprocess.run import run
from spine.preprocess.volume import pixel_to_world, volume_from_dicom

REPO = Path(__file__).resolve().parents[1]
NIFTI_HEADER_BYTES = 352


def config(data_dir: Path, cache_dir: Path, *overrides: str) -> PreprocessConfig:
    return compose("preprocess", [f"data_dir={data_dir}", f"cache_dir={cache_dir}", "workers=1", "progress=false",
                                  *overrides], PreprocessConfig)


@pytest.fixture(scope="module")
def tiny_cache(tiny_dataset: Path, tmp_path_factory) -> Cache:
    summary = run(config(tiny_dataset, tmp_path_factory.mktemp("cache"), "split=all"))
    assert summary.exit_code == 0 and summary.n_errors == 0
    return Cache.open(Path(summary.cache_root).parent)


def series_folder(data: Path, cache: Cache, study: int, series: int) -> Path:
    return data / f"{cache.row(study, series).split}_images" / str(study) / str(series)


def values_at(volume: SeriesVolume, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(modality value, covered) of the series at each world point (N, 3): trilinear between stack voxels."""
    out = [volume.sample(SamplingGrid.centred(point, (1, 1, 1), (1.0, 1.0, 1.0)), normalise=False,
                         antialias=False) for point in np.atleast_2d(world)]
    return np.array([v[0, 0, 0] for v, _ in out]), np.array([c[0, 0, 0] for _, c in out])


def percentile_of(volume: SeriesVolume, world: np.ndarray) -> np.ndarray:
    """Fraction of the series' voxels (all stacks) darker than the series at each world point (all covered)."""
    voxels = np.sort(np.concatenate([np.asarray(s.pixels, dtype=np.float32).ravel() for s in volume.stacks]))
    values, covered = values_at(volume, world)
    assert covered.all()
    return np.searchsorted(voxels, values) / len(voxels)


def test_cache_layout_and_series_table(tiny_dataset: Path, tiny_cache: Cache) -> None:
    listed = pd.concat([pd.read_csv(tiny_dataset / f"{s}_series_descriptions.csv") for s in ("train", "test")])
    s = tiny_cache.series
    assert list(pd.read_csv(tiny_cache.root / "series.csv").columns) == SERIES_COLUMNS
    assert len(s) == len(listed) and set(s.series_id) == set(listed.series_id)
    assert (s.status == "ok").all() and set(s.split) == {"train", "test"}
    assert tiny_cache.cache_id.startswith(f"stacks-v{CACHE_VERSION}-")
    params = tiny_cache.info["params"]
    assert (params["min_slices"], params["max_gap_factor"]) == (2, 2.5) and "spacing_mm" not in params
    assert tiny_cache.volume_options() == {"min_slices": 2, "max_gap_factor": 2.5}
    for row in s.itertuples():
        record = tiny_cache.record(row.study_id, row.series_id)
        folder = record_path(tiny_cache.root, row.study_id, row.series_id).parent
        names = [f"{row.series_id}_{n}.nii" for n in range(row.n_stacks)]
        assert sorted(p.name for p in folder.glob(f"{row.series_id}_*.nii")) == sorted(names)
        assert [st["file"] for st in record["stacks"]] == names and record["version"] == CACHE_VERSION
        volume = tiny_cache.load_volume(row.study_id, row.series_id)
        assert len(volume.stacks) == row.n_stacks >= 1 and volume.source == "cache"
        # the DICOM's own stored integers (int16 or uint16 as its PixelRepresentation says), never floats
        assert set(row.dtype.split("; ")) <= {"int16", "uint16"} and row.irregular == ""
        shapes, spacings = row.shape.split("; "), row.spacing.split("; ")
        for n, (stack, st) in enumerate(zip(volume.stacks, record["stacks"])):
            assert isinstance(stack.pixels, np.memmap) and stack.pixels.dtype in (np.int16, np.uint16)
            assert not stack.pixels.flags.writeable
            assert list(parse_triple(shapes[n])) == list(stack.shape[::-1]) == st["shape_ijk"]
            np.testing.assert_allclose(parse_triple(spacings[n]), stack.spacing, rtol=1e-5)
            np.testing.assert_array_equal(stack.image_positions_lps, st["ipp"])
            assert stack.is_regular and st["regular"] and st["irregular"] == ""
            # dcm2niix-like NIfTI: array [i, j, k] = column, row, slice; RAS affine of the stack's LPS affine
            image = nib.load(stack_path(tiny_cache.root, row.study_id, row.series_id, n))
            assert image.shape == tuple(st["shape_ijk"]) and image.get_data_dtype() == stack.pixels.dtype
            np.testing.assert_allclose(image.affine, LPS_TO_RAS @ stack.affine_lps, atol=1e-4)
            np.testing.assert_array_equal(np.asanyarray(image.dataobj), np.asarray(stack.pixels).transpose(2, 1, 0))
        assert tiny_cache.series_of(row.study_id, row.description).count(row.series_id) == 1


def test_multi_stack_axial_series_keep_every_stack(tiny_dataset: Path, tiny_cache: Cache) -> None:
    """Axial T2 as 2-3 blocks angled per disc: every block cached as it was acquired, none merged or resampled."""
    s = tiny_cache.series
    axial = s[s.description == "Axial T2"]
    assert (axial.n_stacks > 1).sum() >= 2
    for row in axial.itertuples():
        read = read_series(series_folder(tiny_dataset, tiny_cache, row.study_id, row.series_id))
        cached = tiny_cache.load_volume(row.study_id, row.series_id)
        assert row.n_stacks == len(read.stacks) == len(cached.stacks)
        assert row.shape == "; ".join(" ".join(str(v) for v in st.shape[::-1]) for st in read.stacks)
        for ours, theirs in zip(cached.stacks, read.stacks):
            np.testing.assert_array_equal(ours.pixels, theirs.pixels)
            np.testing.assert_array_equal(ours.image_positions_lps, theirs.image_positions_lps)
            np.testing.assert_array_equal(ours.direction_lps, theirs.direction_lps)
            assert ours.instance_numbers == theirs.instance_numbers


def test_cache_bytes_are_the_dicom_pixel_bytes(tiny_dataset: Path, tiny_cache: Cache) -> None:
    """The stored 16-bit integers, uncompressed: a series' stack files are its DICOM pixel data plus a 352-byte
    header per stack."""
    total_cache = total_dicom = 0
    for row in tiny_cache.series.itertuples():
        files = list(series_folder(tiny_dataset, tiny_cache, row.study_id, row.series_id).iterdir())
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        dicom = sum(int(h.Rows) * int(h.Columns) * int(h.BitsAllocated) // 8 for h in headers)
        cache = sum(stack_path(tiny_cache.root, row.study_id, row.series_id, n).stat().st_size
                    for n in range(row.n_stacks))
        assert cache == dicom + NIFTI_HEADER_BYTES * row.n_stacks, (row.study_id, row.series_id)
        total_cache, total_dicom = total_cache + cache, total_dicom + dicom
    on_disk = sum(p.stat().st_size for p in (tiny_cache.root / "volumes").rglob("*.nii"))
    assert on_disk == total_cache <= 1.1 * total_dicom


def test_coordinates_are_the_dicom_points_in_every_frame(tiny_dataset: Path, tiny_cache: Cache) -> None:
    """world_* is the DICOM pixel of the instance in LPS mm; stack and voxel_* are that very point in the cached
    stack holding the instance: (x, y, slice of the instance)."""
    labels = pd.read_csv(tiny_dataset / "train_label_coordinates.csv")
    coords = tiny_cache.coordinates
    assert len(coords) == len(labels)
    pd.testing.assert_frame_equal(coords[labels.columns], labels)  # every row, original columns, same order
    assert coords[["world_x", "stack", "voxel_i"]].notna().all().all()
    for (study, series), rows in coords.groupby(["study_id", "series_id"]):
        folder = series_folder(tiny_dataset, tiny_cache, study, series)
        headers = {int(ds.InstanceNumber): ds for ds in
                   (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir())}
        dicom = read_series(folder)
        volume = tiny_cache.load_volume(study, series)
        for row in rows.itertuples():
            ds = headers[row.instance_number]  # world = IPP + x * PixelSpacing[1] * r + y * PixelSpacing[0] * c
            iop = np.array(ds.ImageOrientationPatient, float)
            world = (np.array(ds.ImagePositionPatient, float) + row.x * float(ds.PixelSpacing[1]) * iop[:3]
                     + row.y * float(ds.PixelSpacing[0]) * iop[3:])
            ours = np.array([row.world_x, row.world_y, row.world_z])
            np.testing.assert_allclose(ours, world, atol=1e-4)
            np.testing.assert_allclose(ours, pixel_to_world(dicom, row.instance_number, row.x, row.y), atol=1e-9)
            stack = volume.stacks[int(row.stack)]
            ijk = np.array([row.voxel_i, row.voxel_j, row.voxel_k])
            assert (row.voxel_i, row.voxel_j) == (row.x, row.y) and row.voxel_k == int(row.voxel_k)
            assert stack.instance_numbers[int(row.voxel_k)] == row.instance_number
            np.testing.assert_allclose(stack.index_to_world(ijk), ours, atol=1e-6)
            affine = nib.load(stack_path(tiny_cache.root, study, series, int(row.stack))).affine
            np.testing.assert_allclose(affine @ [*ijk, 1], [-ours[0], -ours[1], ours[2], 1], atol=1e-3)


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
        world = rows[["world_x", "world_y", "world_z"]].to_numpy()
        volume = tiny_cache.load_volume(study, series)
        assert (percentile_of(volume, world) > 0.9).all()
        behind, _ = values_at(volume, world + [0.0, 30.0, 0.0])  # spinous process, muscle
        assert (values_at(volume, world)[0] > 2 * behind).all()
        for axial in tiny_cache.series_of(study, "Axial T2"):  # cross-series projection through world space
            assert (percentile_of(tiny_cache.load_volume(study, axial), world) > 0.9).all()
            checked += 1
    assert checked >= 2
    # The labels carry click noise (about 1 mm per axis, sometimes on the neighbouring slice) and foramina and
    # recesses are a few mm across: the brightest of the point and its neighbours 2 mm away along each axis.
    steps = np.array([[0, 0, 0], [2, 0, 0], [-2, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 2], [0, 0, -2]], float)
    for condition, description in (("Left Neural Foraminal Narrowing", "Sagittal T1"),
                                   ("Right Subarticular Stenosis", "Axial T2")):
        for (study, series), rows in open_[open_.condition == condition].groupby(["study_id", "series_id"]):
            world = rows[["world_x", "world_y", "world_z"]].to_numpy()
            volume = tiny_cache.load_volume(study, series)
            best = np.max([percentile_of(volume, world + step) for step in steps], axis=0)
            assert (best > 0.75).all(), (condition, study)


def test_inference_builds_the_cached_volume_in_memory(tiny_dataset: Path, tiny_cache: Cache) -> None:
    """One code path: the stacks selected in memory from the DICOM folder are the cached ones, voxel for voxel,
    and sample alike; a grid equal to a stack's own grid gives that stack's voxels back."""
    s = tiny_cache.series
    for description in ("Sagittal T2/STIR", "Axial T2"):
        for row in s[s.description == description].iloc[:2].itertuples():
            folder = series_folder(tiny_dataset, tiny_cache, row.study_id, row.series_id)
            volume = volume_from_dicom(folder, description, **tiny_cache.volume_options())
            cached = tiny_cache.load_volume(row.study_id, row.series_id)
            assert len(volume.stacks) == len(cached.stacks) and volume.notes == cached.notes
            for ours, theirs in zip(volume.stacks, cached.stacks):
                np.testing.assert_array_equal(ours.pixels, theirs.pixels)
                np.testing.assert_array_equal(ours.image_positions_lps, theirs.image_positions_lps)
                np.testing.assert_array_equal(ours.spacing, theirs.spacing)
                np.testing.assert_array_equal(ours.direction_lps, theirs.direction_lps)
            grid = SamplingGrid.centred(cached.centre, (24, 24, 12), (2.3, 1.9, 3.1),
                                        np.linalg.qr(np.array([[1.0, 0.2, 0.1], [-0.1, 1.0, 0.3], [0.2, -0.3, 1.0]]))[0])
            for normalise in (False, True):
                a, b = volume.sample(grid, normalise=normalise), cached.sample(grid, normalise=normalise)
                np.testing.assert_array_equal(a[0], b[0])
                np.testing.assert_array_equal(a[1], b[1])
                assert b[1].sum() > 1000
            for n, stack in enumerate(cached.stacks):
                own = SamplingGrid(stack.origin_lps, stack.direction_lps, stack.spacing, stack.shape[::-1])
                values, covered = cached.sample(own, normalise=False, antialias=False)
                others = np.zeros(own.size, bool)  # where another block overlaps, the two are averaged
                for m, other in enumerate(cached.stacks):
                    if m != n:
                        others |= SeriesVolume([other]).sample(own, normalise=False, antialias=False)[1]
                assert covered.all() and (~others).sum() > 0.5 * others.size
                expected = np.asarray(stack.pixels, dtype=np.float32).transpose(2, 1, 0)
                np.testing.assert_array_equal(values[~others], expected[~others])


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
            "split=all", "progress=false"]
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

    from spine.cache import CACHE_VERSION, Cache, CacheError

    def make(name: str, version: int) -> Path:
        root = tmp_path / name
        root.mkdir()
        (root / "series.csv").write_text("split,study_id,series_id\n")
        (root / "cache.json").write_text(json.dumps({"params": {"version": version}}))
        return root

    with pytest.raises(CacheError, match="no preprocessing cache"):
        Cache.open(tmp_path)
    old = make(f"stacks-v{CACHE_VERSION - 1}-aaaa", CACHE_VERSION - 1)
    with pytest.raises(CacheError, match="rebuild it with python -m spine.preprocess"):
        Cache.open(tmp_path)
    with pytest.raises(CacheError, match=f"version {CACHE_VERSION - 1}"):
        Cache.open(old)
    new = make(f"stacks-v{CACHE_VERSION}-bbbb", CACHE_VERSION)
    assert Cache.open(tmp_path).root == new  # the one current cache; the stale one is not a candidate
    make(f"stacks-v{CACHE_VERSION}-cccc", CACHE_VERSION)
    with pytest.raises(CacheError, match=r"holds 3 caches .*stacks-v\d+-bbbb.*pass one of them"):
        Cache.open(tmp_path)
    assert Cache.open(new).root == new


def test_load_volume_reads_each_record_once_and_a_pickled_cache_still_loads(tiny_cache: Cache, monkeypatch) -> None:
    """The parsed record is kept per Cache (only what load_volume reads); each load still gets its own slice
    positions; a pickled Cache (DataLoader workers) carries no parsed records and reads its own."""
    study, series = (int(v) for v in tiny_cache.series.loc[tiny_cache.series.status == "ok",
                                                            ["study_id", "series_id"]].iloc[0])
    cache = Cache(tiny_cache.root)
    reads = []
    record = Cache.record
    monkeypatch.setattr(Cache, "record", lambda self, *key: reads.append(key) or record(self, *key))
    first = cache.load_volume(study, series)
    again = cache.load_volume(study, series, (2.0, 98.0))
    assert reads == [(study, series)]
    for one, other, stored in zip(first.stacks, again.stacks, record(cache, study, series)["stacks"]):
        np.testing.assert_array_equal(one.image_positions_lps, stored["ipp"])
        np.testing.assert_array_equal(one.image_positions_lps, other.image_positions_lps)
        assert one.image_positions_lps is not other.image_positions_lps and one.image_positions_lps.flags.writeable
    clone = pickle.loads(pickle.dumps(cache))
    assert list(cache._volume_records) == [(study, series)] and clone._volume_records == {}
    volume = clone.load_volume(study, series)
    assert reads == [(study, series)] * 2
    for one, other in zip(volume.stacks, first.stacks):
        np.testing.assert_array_equal(np.asarray(one.pixels), np.asarray(other.pixels))
        np.testing.assert_array_equal(one.image_positions_lps, other.image_positions_lps)
    assert volume.intensity_range() == first.intensity_range()
