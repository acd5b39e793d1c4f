"""Issue 20, the silent failures: each bad input is planted and what a user sees is asserted (exit code, the one
line, the rows written, the file named). A label never lands on a guessed slice or under an unknown name, and no
stage trains on nothing."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from spine.cache import UNRESOLVED_CSV, Cache
from spine.cli import compose
from spine.constants import LABEL_COLUMNS, canonical_condition, canonical_level
from spine.preprocess.lock import writer_lock

TRAIN = ["epochs=1", "batch_size=2", "num_workers=0", "max_steps_per_epoch=1", "progress=false",
         "tensorboard=false", "device=cpu"]
LANDMARKS = ["stage=landmarks", "model=landmark_25d_tiny", "stage.grid.size=[8,32,32]",
             "stage.grid.spacing_mm=[10,10,10]", "stage.plot_studies=0"]


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def copy_study(src: Path, dst: Path) -> tuple[Path, int]:
    """The first train study of ``src`` in a new RSNA-layout folder, its DICOM copied (so it can be altered)."""
    dst.mkdir(parents=True)
    study = int(pd.read_csv(src / "train.csv").study_id[0])
    for name in ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv"):
        frame = pd.read_csv(src / name)
        frame[frame.study_id == study].to_csv(dst / name, index=False)
    shutil.copytree(src / "train_images" / str(study), dst / "train_images" / str(study))
    return dst, study


def preprocess(data: Path, cache: Path, *extra: str) -> int:
    from spine.preprocess.__main__ import main

    return main([f"data_dir={data}", f"cache_dir={cache}", "split=train", "workers=1", "progress=false",
                 "n_folds=2", *extra])


def copy_cache(cache_dir: Path, dst: Path) -> Cache:
    shutil.copytree(Cache.open(cache_dir).root, dst / "cache")
    return Cache(dst / "cache")


# ------------------------------------------------------------------------------ a label on a guessed slice
def test_a_label_on_an_ambiguous_instance_number_is_never_placed_and_the_doctor_fails_it(tiny_dataset, tmp_path):
    data, study = copy_study(tiny_dataset, tmp_path / "data")
    coords = pd.read_csv(data / "train_label_coordinates.csv")
    point = coords.iloc[0]
    folder = data / "train_images" / str(study) / str(int(point.series_id))
    files = {int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber): p for p in folder.glob("*.dcm")}
    target = int(point.instance_number)
    other = next(n for n in sorted(files) if n != target)  # another slice now claims the labelled number
    ds = pydicom.dcmread(files[other])
    ds.InstanceNumber = target
    ds.save_as(files[other], enforce_file_format=True)

    assert preprocess(data, tmp_path / "cache") == 0
    cache = Cache.open(tmp_path / "cache")
    unresolved = pd.read_csv(cache.root / UNRESOLVED_CSV)
    on_it = coords[(coords.series_id == point.series_id) & (coords.instance_number == target)]
    assert len(unresolved) == len(on_it) and set(unresolved.line) == set(on_it.index + 2)
    assert all("ambiguous instance" in r and f"InstanceNumber {target}" in r for r in unresolved.reason)
    placed = cache.coordinates[(cache.coordinates.series_id == point.series_id)
                               & (cache.coordinates.instance_number == target)]
    assert placed[["world_x", "world_y", "world_z", "voxel_k"]].isna().all().all()  # no position, no slice

    from spine.doctor.__main__ import main as doctor

    out = tmp_path / "doctor"
    assert doctor([f"cache_dir={tmp_path / 'cache'}", f"data_dir={data}", f"out={out}", "checks=[label_positions]",
                   "image_studies=0"]) == 1
    report = json.loads((out / "doctor.json").read_text())
    (check,) = [c for c in report["checks"] if c["name"] == "label_positions"]
    assert check["status"] == "fail" and any("ambiguous instance" in d for d in check["details"]), check


# ------------------------------------------------------------------------------ label names training knows
def test_label_names_in_other_spellings_are_mapped_and_unknown_ones_set_aside(tiny_dataset, tmp_path, caplog):
    data, _ = copy_study(tiny_dataset, tmp_path / "data")
    path = data / "train_label_coordinates.csv"
    coords = pd.read_csv(path)
    written = coords.copy()
    written["condition"] = written.condition.str.lower()  # every condition in lower case
    written.loc[0, "level"] = written.level[0].lower()  # l1/l2
    written.loc[1, "level"] = written.level[1].replace("/", "-")  # L1-L2
    written.loc[2, "level"] = "L6/S1"
    written.loc[3, "condition"] = "Central Canal Thing"
    written.to_csv(path, index=False)

    with caplog.at_level(logging.WARNING, logger="spine"):
        assert preprocess(data, tmp_path / "cache") == 0
    cache = Cache.open(tmp_path / "cache")
    placed = cache.coordinates
    assert len(placed) == len(coords) - 2
    expected = coords.drop(index=[2, 3])
    assert list(placed.condition) == list(expected.condition) and list(placed.level) == list(expected.level)
    unresolved = pd.read_csv(cache.root / UNRESOLVED_CSV)
    assert list(unresolved.line) == [4, 5]
    assert "unknown level 'L6/S1'" in unresolved.reason[0] and "unknown condition" in unresolved.reason[1]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "read as 'Spinal Canal Stenosis'" in warned and "'l1/l2' read as 'L1/L2'" in warned


def test_the_names_of_conditions_and_levels():
    assert canonical_condition("spinal canal stenosis") == "Spinal Canal Stenosis"
    assert canonical_condition(" LEFT_neural_foraminal_narrowing ") == "Left Neural Foraminal Narrowing"
    assert canonical_condition("Left Foraminal") is None and canonical_condition(None) is None
    assert [canonical_level(t) for t in ("l1/l2", "L1-L2", "L1 / L2", "l5_s1")] == ["L1/L2"] * 3 + ["L5/S1"]
    assert canonical_level("L6/S1") is None and canonical_level("L1L2") is None


def test_a_point_off_its_image_is_set_aside(tiny_dataset, tmp_path):
    data, _ = copy_study(tiny_dataset, tmp_path / "data")
    path = data / "train_label_coordinates.csv"
    coords = pd.read_csv(path)
    coords.loc[0, "x"] = 99999.0
    coords.loc[1, "y"] = -3.0
    coords.to_csv(path, index=False)

    assert preprocess(data, tmp_path / "cache") == 0
    cache = Cache.open(tmp_path / "cache")
    unresolved = pd.read_csv(cache.root / UNRESOLVED_CSV)
    assert list(unresolved.line) == [2, 3] and all("off its image" in r for r in unresolved.reason)
    assert "x 99999" in unresolved.reason[0] and "columns" in unresolved.reason[0]
    assert cache.coordinates.loc[:1, ["world_x", "voxel_i"]].isna().all().all()
    assert np.isfinite(cache.coordinates.loc[2:, ["world_x", "world_y", "world_z"]].to_numpy(dtype=float)).all()


# ------------------------------------------------------------------------------------ training on nothing
@pytest.mark.parametrize("fold", ["all", "0"])
def test_training_refuses_a_cache_without_labelled_studies(tiny_cache_dir, tmp_path, capsys, fold):
    from spine.train.__main__ import main as train

    cache = copy_cache(tiny_cache_dir, tmp_path)
    (cache.root / "folds.csv").write_text("study_id,fold\n")
    assert train([*LANDMARKS, f"cache_dir={cache.root}", f"fold={fold}", f"run_dir={tmp_path / 'run'}", *TRAIN]) == 2
    line = one_line(capsys.readouterr().err)
    assert "nothing to train on" in line and "folds.csv lists no study" in line
    assert not (tmp_path / "run").exists()


def test_the_landmark_stage_refuses_zero_label_points(tiny_cache_dir, tmp_path, capsys):
    from spine.train.__main__ import main as train

    cache = copy_cache(tiny_cache_dir, tmp_path)
    coords = pd.read_csv(cache.root / "coordinates.csv")
    coords[["world_x", "world_y", "world_z"]] = np.nan  # as if every point had been set aside
    coords.to_csv(cache.root / "coordinates.csv", index=False)
    assert train([*LANDMARKS, f"cache_dir={cache.root}", "fold=0", f"run_dir={tmp_path / 'run'}", *TRAIN]) == 2
    line = one_line(capsys.readouterr().err)
    assert "no label point to train the landmark stage on" in line and UNRESOLVED_CSV in line


def test_the_grading_stage_refuses_zero_grades(tiny_cache_dir, tmp_path, capsys):
    from spine.train.__main__ import main as train

    labels = pd.read_csv(Path(Cache.open(tiny_cache_dir).info["data_dir"]) / "train.csv")
    labels[list(LABEL_COLUMNS)] = np.nan  # every grade missing
    labels.to_csv(tmp_path / "train.csv", index=False)
    assert train(["stage=grading", "model=grading_3d_tiny", f"cache_dir={tiny_cache_dir}", "fold=0",
                  "stage.crop.size=[16,16,16]", f"stage.labels={tmp_path / 'train.csv'}",
                  f"run_dir={tmp_path / 'run'}", *TRAIN]) == 2
    line = one_line(capsys.readouterr().err)
    assert "nothing to train the grading stage on" in line and "has a grade in train.csv" in line


def test_training_says_when_train_csv_gained_studies_after_preprocessing(tiny_cache_dir, tmp_path, caplog):
    from spine.train.__main__ import main as train

    cache = copy_cache(tiny_cache_dir, tmp_path)
    data = Path(cache.info["data_dir"])
    shutil.copytree(data, tmp_path / "data", symlinks=True, ignore=shutil.ignore_patterns("*_images"))
    labels = pd.read_csv(data / "train.csv")
    extra = labels.iloc[:2].assign(study_id=[990001, 990002])
    pd.concat([labels, extra]).to_csv(tmp_path / "data" / "train.csv", index=False)
    info = {**cache.info, "data_dir": str(tmp_path / "data")}
    (cache.root / "cache.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="spine"):
        assert train([*LANDMARKS, f"cache_dir={cache.root}", "fold=0", f"run_dir={tmp_path / 'run'}", *TRAIN]) == 0
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert f"lists {len(labels) + 2} studies, the cache's folds.csv {len(labels)}" in warned
    assert "2 not in the cache (e.g. [990001, 990002])" in warned and "overwrite=true" in warned


# ------------------------------------------------------------------------------------ one writer at a time
def test_a_second_preprocessing_run_into_a_busy_cache_refuses_and_loses_nothing(tiny_dataset, tmp_path, capsys):
    from spine.cache import cache_id, cache_params
    from spine.preprocess.config import PreprocessConfig

    data, _ = copy_study(tiny_dataset, tmp_path / "data")
    cfg = compose("preprocess", [f"data_dir={data}", f"cache_dir={tmp_path / 'cache'}"], PreprocessConfig)
    root = tmp_path / "cache" / cache_id(cache_params(cfg.min_slices, cfg.max_gap_factor))
    with writer_lock(root):  # another run is writing this cache
        assert preprocess(data, tmp_path / "cache") == 1
        line = one_line(capsys.readouterr().err)
        assert "being written by another preprocessing run (pid" in line and str(root) in line
        assert not (root / "series.csv").exists() and not (root / "volumes").exists()
    assert preprocess(data, tmp_path / "cache") == 0  # released: the next run works
    assert (root / "series.csv").is_file()


@pytest.mark.parametrize("damage", [b"", b"study_id,series_id\nabc,1\n", b"\x00\x01garbage"])
def test_a_rerun_rewrites_a_damaged_series_csv(tiny_dataset, tmp_path, caplog, damage):
    data, study = copy_study(tiny_dataset, tmp_path / "data")
    assert preprocess(data, tmp_path / "cache") == 0
    root = Cache.open(tmp_path / "cache").root
    good = (root / "series.csv").read_bytes()
    (root / "series.csv").write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="spine"):
        assert preprocess(data, tmp_path / "cache") == 0
    assert (root / "series.csv").read_bytes() == good
    assert "series.csv is damaged" in caplog.text
