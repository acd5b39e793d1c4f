"""python -m spine.preprocess on broken and irregular data: every bad file, series or study is recorded and the
run goes on; irregular stacks are cached with their true slice positions and flagged; atomic writes and resume;
overwrite; a worker that dies; exit codes of the command line."""

from __future__ import annotations

import logging
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine.cache import Cache, record_path, remove_partials, stack_path
from spine.cli import compose
from spine.constants import LABEL_COLUMNS
from spine.preprocess import pool
from spine.preprocess.__main__ import main
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.job import process_series
from spine.preprocess.run import run
from spine.synth.dicom_writer import SliceTags, write_slice

REPO = Path(__file__).resolve().parents[1]
SAGITTAL = np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)])  # r = +y, c = -z, n = -x
AXIAL = np.eye(3)  # r = +x, c = +y, n = +z
SERIES = {  # series_id: (study_id, description, expected status, words expected in the reason)
    11: (1, "Sagittal T2/STIR", "ok", ""),
    12: (1, "Sagittal T1", "ok", "skipped 4 file(s)"),
    13: (1, "Axial T2", "error", "does not exist"),
    14: (1, "Axial T2", "error", "is empty"),
    15: (1, "Sagittal T1", "error", "single slice"),
    16: (1, "Sagittal T2/STIR", "error", "ImagePositionPatient"),
    17: (1, "Axial T2", "ok", ""),
    21: (2, "Sagittal T2/STIR", "ok", ""),
    22: (2, "Sagittal T1", "error", "not a DICOM file"),
    23: (2, "Sagittal T2/STIR", "ok", "sheared 2.00 mm (gantry tilt)"),
    24: (2, "Sagittal T1", "ok", "uneven steps 4.00..8.00 mm"),
    31: (3, "Axial T2", "ok", "duplicate position"),
}


def write_stack(folder: Path, rot: np.ndarray, origin, n_slices: int, *, first: int = 1, series_id: int = 0,
                drop: str = "", shear: float = 0.0, missing: tuple[int, ...] = ()) -> list[Path]:
    """Slices every 4 mm along the normal, slice k shifted by k * ``shear`` mm along the rows (gantry tilt);
    the slices numbered in ``missing`` are not written (their instance numbers stay unused)."""
    r, c = rot[:, 0], rot[:, 1]
    n = np.cross(r, c)
    paths = []
    for k in range(n_slices):
        if k in missing:
            continue
        ipp = np.asarray(origin, float) + 4.0 * k * n + k * shear * c
        tags = SliceTags(study_id=1, series_id=series_id, instance_number=first + k,
                         image_position=None if drop == "ipp" else tuple(ipp),
                         image_orientation=None if drop == "iop" else (*r, *c), pixel_spacing=(3.0, 3.0))
        pixels = (100 * (k + 1) + np.arange(80).reshape(8, 10)).astype(np.uint16)
        paths.append(folder / f"{first + k}.dcm")
        write_slice(paths[-1], pixels, tags)
    return paths


def make_dataset(root: Path) -> Path:
    """An RSNA-layout folder holding every kind of broken series next to good ones."""
    images = root / "train_images"
    write_stack(images / "1/11", SAGITTAL, (10.0, -20.0, 30.0), 5, series_id=11)
    good = write_stack(images / "1/12", SAGITTAL, (10.0, -20.0, 30.0), 5, series_id=12)
    extra = write_stack(images / "1/12", SAGITTAL, (-20.0, -20.0, 30.0), 3, first=9, series_id=12)
    extra[0].write_bytes(extra[0].read_bytes()[:-50])  # truncated in its pixel data: instance 9 is unreadable
    (images / "1/12/notes.txt").write_text("not a DICOM file\n")
    no_pixels = pydicom.dcmread(extra[1])
    del no_pixels.PixelData
    no_pixels.save_as(extra[1], enforce_file_format=True)
    extra[2].write_bytes(good[2].read_bytes())  # a second file at the same position: duplicate
    (images / "1/14").mkdir(parents=True)  # 13 is missing altogether
    write_stack(images / "1/15", SAGITTAL, (0.0, 0.0, 0.0), 1, series_id=15)
    write_stack(images / "1/16", SAGITTAL, (0.0, 0.0, 0.0), 2, series_id=16, drop="ipp")
    write_stack(images / "1/16", SAGITTAL, (0.0, 0.0, 0.0), 2, first=3, series_id=16, drop="iop")
    tilted = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), np.sin(0.3)], [0.0, -np.sin(0.3), np.cos(0.3)]]).T
    write_stack(images / "1/17", AXIAL, (-15.0, -12.0, 0.0), 4, series_id=17)
    write_stack(images / "1/17", tilted, (-15.0, -12.0, 20.0), 3, first=5, series_id=17)
    write_stack(images / "2/21", SAGITTAL, (5.0, -20.0, 30.0), 6, series_id=21)
    write_stack(images / "2/23", SAGITTAL, (5.0, -20.0, 30.0), 6, series_id=23, shear=0.4)
    write_stack(images / "2/24", SAGITTAL, (5.0, -20.0, 30.0), 6, series_id=24, missing=(3,))
    (images / "2/22").mkdir(parents=True)
    (images / "2/22/1.dcm").write_bytes(b"\0" * 500)
    dup = write_stack(images / "3/31", AXIAL, (0.0, 0.0, 0.0), 4, series_id=31)
    (images / "3/31/copy.dcm").write_bytes(dup[1].read_bytes())
    pd.DataFrame([(study, series, desc) for series, (study, desc, _, _) in SERIES.items()],
                 columns=["study_id", "series_id", "series_description"]).to_csv(
        root / "train_series_descriptions.csv", index=False)
    labels = pd.DataFrame({"study_id": [1, 2, 3], **{c: "Normal/Mild" for c in LABEL_COLUMNS}})
    labels.loc[0, LABEL_COLUMNS[3]] = "Severe"
    labels.to_csv(root / "train.csv", index=False)
    pd.DataFrame([(1, 11, 3, "Spinal Canal Stenosis", "L1/L2", 4.5, 2.25),  # fine
                  (1, 12, 9, "Left Neural Foraminal Narrowing", "L1/L2", 1.0, 1.0),  # truncated instance
                  (1, 13, 1, "Left Subarticular Stenosis", "L1/L2", 1.0, 1.0),  # missing series
                  (1, 15, 1, "Left Neural Foraminal Narrowing", "L2/L3", 2.0, 3.0),  # no volume, but geometry
                  (2, 23, 5, "Spinal Canal Stenosis", "L3/L4", 6.5, 3.25),  # a sheared stack
                  (2, 24, 5, "Spinal Canal Stenosis", "L3/L4", 2.0, 7.0),  # beyond the missing slice
                  (1, 17, 6, "Right Subarticular Stenosis", "L4/L5", 3.0, 4.0)],  # the second axial block
                 columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]).to_csv(
        root / "train_label_coordinates.csv", index=False)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def config(data_dir: Path, cache_dir: Path, *overrides: str) -> PreprocessConfig:
    return compose("preprocess", [f"data_dir={data_dir}", f"cache_dir={cache_dir}", "workers=1", "progress=false",
                                  *overrides], PreprocessConfig)


def volume_bytes(cache: Cache) -> dict[str, bytes]:
    return {str(p.relative_to(cache.root)): p.read_bytes() for p in sorted((cache.root / "volumes").rglob("*"))
            if p.is_file()}


def test_broken_series_are_recorded_and_the_rest_goes_on(dataset: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="spine.preprocess"):
        summary = run(config(dataset, tmp_path / "cache"))
    n_ok = sum(v[2] == "ok" for v in SERIES.values())
    assert (summary.n_built, summary.n_errors, summary.exit_code) == (n_ok, len(SERIES) - n_ok, 0)
    cache = Cache.open(tmp_path / "cache")
    table = cache.series.set_index("series_id")
    for series_id, (study, description, status, words) in SERIES.items():
        row = table.loc[series_id]
        assert (row.study_id, row.description, row.status) == (study, description, status), series_id
        assert words in row.reason, (series_id, row.reason)
        assert stack_path(cache.root, study, series_id, 0).is_file() == (status == "ok")
        assert record_path(cache.root, study, series_id).is_file() == (status == "ok")
    assert table.loc[12, "n_skipped_files"] == 4 and table.loc[17, "n_stacks"] == 2
    assert table.n_stacks.isna().sum() == 4  # series with nothing readable
    assert table.loc[15, "n_stacks"] == 0  # read, but no stack to keep
    assert "9.dcm" in table.loc[12, "reason"] and "notes.txt: not a DICOM file" in table.loc[12, "reason"]
    coords = cache.coordinates.set_index("series_id")
    assert coords.loc[11, ["world_x", "voxel_i"]].notna().all()
    assert coords.loc[12, ["world_x", "voxel_i"]].isna().all()  # its instance was the truncated file
    assert coords.loc[13, ["world_x", "voxel_i"]].isna().all()
    assert coords.loc[15, ["world_x", "world_y", "world_z"]].notna().all() and np.isnan(coords.loc[15, "voxel_i"])
    assert coords[["stack", "voxel_i"]].isna().sum().tolist() == [3, 3]  # 12, 13, 15
    assert sorted(cache.folds.study_id) == [1, 2, 3]
    err = caplog.text  # the summary: logged
    assert f"{n_ok} ok" in err and f"{len(SERIES) - n_ok} error(s)" in err and "studies/s" in err
    for series_id, (study, _, status, words) in SERIES.items():
        if status == "error":
            assert f"error {study}/{series_id}" in err


def test_irregular_and_multi_stack_series_are_cached_as_acquired(dataset: Path, tmp_path: Path) -> None:
    """A gantry-tilt stack and one with a missing slice are cached whole with their true IPPs (float64, from the
    record) and series.csv says why they are irregular; both blocks of the axial series 17 are kept; label points
    on them index the exact stack voxel."""
    run(config(dataset, tmp_path / "cache"))
    cache = Cache.open(tmp_path / "cache")
    table = cache.series.set_index("series_id")
    assert table.loc[23, "irregular"] == "stack 0: sheared 2.00 mm (gantry tilt)"
    assert table.loc[24, "irregular"] == "stack 0: uneven steps 4.00..8.00 mm"
    assert (table.drop(index=[23, 24]).irregular == "").all()
    for series_id, n_slices in ((23, 6), (24, 5), (17, None)):
        study = SERIES[series_id][0]
        files = {int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber): pydicom.dcmread(f)
                 for f in (dataset / "train_images" / str(study) / str(series_id)).iterdir()}
        volume = cache.load_volume(study, series_id)
        record = cache.record(study, series_id)
        assert [st["file"] for st in record["stacks"]] == [f"{series_id}_{n}.nii" for n in range(len(volume.stacks))]
        for stack in volume.stacks:
            for k, number in enumerate(stack.instance_numbers):  # every slice at its own IPP, with its own pixels
                ds = files[number]
                np.testing.assert_allclose(stack.image_positions_lps[k], [float(v) for v in ds.ImagePositionPatient],
                                           atol=1e-9)
                np.testing.assert_array_equal(stack.pixels[k], ds.pixel_array)
        if n_slices is not None:
            (stack,) = volume.stacks
            assert stack.n_slices == n_slices and not stack.is_regular and not record["stacks"][0]["regular"]
    assert table.loc[17, "n_stacks"] == 2 and table.loc[17, "shape"] == "10 8 4; 10 8 3"
    assert sorted(n for s in cache.load_volume(1, 17).stacks for n in s.instance_numbers) == list(range(1, 8))
    coords = cache.coordinates.set_index("series_id")
    for series_id in (23, 24, 17):
        row = coords.loc[series_id]
        stack = cache.load_volume(SERIES[series_id][0], series_id).stacks[int(row.stack)]
        k = stack.instance_numbers.index(int(row.instance_number))
        assert (row.voxel_i, row.voxel_j, row.voxel_k) == (row.x, row.y, k)
        np.testing.assert_allclose(stack.index_to_world([row.voxel_i, row.voxel_j, row.voxel_k]),
                                   [row.world_x, row.world_y, row.world_z], atol=1e-6)
    assert coords.loc[17, "stack"] == 1


def test_remove_partials_spares_series_with_a_longer_id(tmp_path: Path) -> None:
    names = [".12.999.tmp.json", ".12_0.999.tmp.nii", ".123_0.999.tmp.nii", ".123.999.tmp.json", "12_0.nii"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_partials(tmp_path, 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    remove_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["12_0.nii"]


def test_resume_redoes_partial_series_and_skips_complete_ones(dataset: Path, tmp_path: Path) -> None:
    cfg = config(dataset, tmp_path / "cache")
    run(cfg)
    cache = Cache.open(tmp_path / "cache")
    reference = volume_bytes(cache)
    n_ok = int((cache.series.status == "ok").sum())
    partial = stack_path(cache.root, 1, 11, 0)  # as if written in place and cut off
    partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 2])
    record_path(cache.root, 2, 21).unlink()  # killed before the record was written
    stack_path(cache.root, 1, 17, 1).unlink()  # one stack of a multi-stack series gone
    stale = stack_path(cache.root, 1, 17, 0).with_name(".17_0.999999.tmp.nii")
    stale.write_bytes(b"partial")
    extra = stack_path(cache.root, 2, 23, 1)  # a stack file of an earlier run that the series no longer has
    extra.write_bytes(b"old")
    record_path(cache.root, 2, 23).unlink()
    summary = run(cfg)
    assert (summary.n_built, summary.n_cached) == (4, n_ok - 4)
    assert not stale.exists() and not extra.exists() and volume_bytes(cache) == reference
    summary = run(cfg)
    assert (summary.n_built, summary.n_cached) == (0, n_ok)
    summary = run(config(dataset, tmp_path / "cache", "overwrite=true"))
    assert (summary.n_built, summary.n_cached) == (n_ok, 0) and volume_bytes(cache) == reference


def _dies_on_series_21(job):
    if job.series_id == 21:
        os._exit(3)  # as a segfault or the out-of-memory killer would end the worker
    return process_series(job)


@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="the patched job needs fork workers")
def test_a_dying_worker_costs_only_its_series(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pool, "process_series", _dies_on_series_21)  # what the pool's workers run
    summary = run(config(dataset, tmp_path / "cache", "workers=2"))
    table = Cache.open(tmp_path / "cache").series.set_index("series_id")
    assert table.loc[21, "status"] == "error" and "worker process died" in table.loc[21, "reason"]
    for series_id, (_, _, status, _) in SERIES.items():
        if series_id != 21:
            assert table.loc[series_id, "status"] == status, series_id
    assert summary.n_errors == sum(v[2] == "error" for v in SERIES.values()) + 1


def test_exit_code_is_1_only_when_nothing_could_be_processed(tmp_path: Path) -> None:
    assert main([f"data_dir={tmp_path / 'missing'}", f"cache_dir={tmp_path / 'c'}", "progress=false"]) == 1
    pd.DataFrame({"study_id": [1], "series_id": [5], "series_description": ["Axial T2"]}).to_csv(
        tmp_path / "test_series_descriptions.csv", index=False)
    args = [f"data_dir={tmp_path}", f"cache_dir={tmp_path / 'c'}", "split=test", "workers=1", "progress=false"]
    assert main(args) == 1
    assert Cache.open(tmp_path / "c").series.status.tolist() == ["error"]
    write_stack(tmp_path / "test_images/1/5", AXIAL, (0, 0, 0), 3)
    assert main(args) == 0  # errors are retried on the next run
    cache = Cache.open(tmp_path / "c")
    assert cache.series.status.tolist() == ["ok"] and cache.coordinates.empty and cache.folds.empty


def test_cli_config_errors_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "spine.preprocess", f"data_dir={tmp_path}", "workerz=2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "config error" in result.stderr and "workerz" in result.stderr
    with pytest.raises(SystemExit) as exit_info:
        main(["split=validation"])
    assert exit_info.value.code == 2
    for old in ("spacing.axial_t2=[0.8,0.8,3]", "max_voxels=1000"):  # keys of the resampled cache: gone
        result = subprocess.run([sys.executable, "-m", "spine.preprocess", f"data_dir={tmp_path}", old],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and f"Key '{old.split('.')[0].split('=')[0]}' not in" in result.stderr
