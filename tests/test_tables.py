"""Bad tables in, a clear message out and nothing else lost: train.csv, the series listings and the label
coordinates as read by preprocess, training and spine-predict (spine/io/tables.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.cache import Cache
from spine.cli import compose
from spine.constants import LABEL_COLUMNS, PROB_COLUMNS, SERIES_TYPES, canonical_description, study_row_ids
from spine.io.tables import TableError, read_coordinates, read_listing, read_train_labels
from spine.preprocess.config import PreprocessConfig
from spine.preprocess.folds import make_folds
from spine.preprocess.run import run

BINARY = bytes(range(256)) * 8


def subset(src: Path, dst: Path, n_studies: int = 1) -> tuple[Path, list[int]]:
    """The first ``n_studies`` train studies of ``src`` in a new RSNA-layout folder (images linked, CSVs copied)."""
    dst.mkdir(parents=True)
    studies = [int(s) for s in pd.read_csv(src / "train.csv").study_id[:n_studies]]
    for name in ("train.csv", "train_series_descriptions.csv", "train_label_coordinates.csv"):
        frame = pd.read_csv(src / name)
        frame[frame.study_id.isin(studies)].to_csv(dst / name, index=False)
    (dst / "train_images").mkdir()
    for study in studies:
        os.symlink(src / "train_images" / str(study), dst / "train_images" / str(study))
    return dst, studies


def preprocess_config(data_dir: Path, cache_dir: Path) -> PreprocessConfig:
    return compose("preprocess", [f"data_dir={data_dir}", f"cache_dir={cache_dir}", "split=train", "workers=1",
                                  "progress=false", "n_folds=2"], PreprocessConfig)


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# -------------------------------------------------------------------------------------- descriptions
def test_descriptions_are_matched_in_any_case_and_spacing():
    for text in SERIES_TYPES:
        assert canonical_description(text) == (text, False)
    assert canonical_description("sagittal t1") == ("Sagittal T1", True)
    assert canonical_description(" SAGITTAL T2/STIR ") == ("Sagittal T2/STIR", True)
    assert canonical_description("Sagittal  T2 / STIR") == ("Sagittal T2/STIR", True)
    assert canonical_description("Sagittal T2") == ("Sagittal T2/STIR", True)
    assert canonical_description("axial t2") == ("Axial T2", True)
    for other in ("Axial T1", "Coronal T2", "", None, float("nan")):
        assert canonical_description(other) == (None, False)
    from spine.constants import series_type

    assert series_type("Sagittal T2") == series_type(" sagittal t2/stir ") == "Sagittal T2/STIR"
    assert series_type(" axial T2") == "Axial T2"


# ----------------------------------------------------------------------------------------- train.csv
def test_train_labels_refuse_differing_duplicates_unknown_grades_and_missing_columns(tiny_dataset, tmp_path, caplog):
    train = pd.read_csv(tiny_dataset / "train.csv")
    first, second = int(train.study_id[0]), int(train.study_id[1])

    identical = pd.concat([train, train.iloc[[0]]], ignore_index=True)
    identical.to_csv(tmp_path / "identical.csv", index=False)
    with caplog.at_level(logging.WARNING):
        kept = read_train_labels(tmp_path / "identical.csv")
    assert len(kept) == len(train) and sorted(kept.study_id) == sorted(train.study_id)
    assert "kept once" in warnings_of(caplog) and str(first) in warnings_of(caplog)
    pd.testing.assert_frame_equal(make_folds(kept, 2, 0), make_folds(train, 2, 0))

    differing = pd.concat([train, train.iloc[[0, 1]]], ignore_index=True)
    differing.loc[len(train), LABEL_COLUMNS[0]] = "Severe" if train.loc[0, LABEL_COLUMNS[0]] != "Severe" else "Moderate"
    differing.loc[len(train) + 1, LABEL_COLUMNS[1]] = np.nan if pd.notna(train.loc[1, LABEL_COLUMNS[1]]) else "Moderate"
    differing.to_csv(tmp_path / "differing.csv", index=False)
    with pytest.raises(TableError) as err:
        read_train_labels(tmp_path / "differing.csv")
    assert "\n" not in str(err.value) and str(first) in str(err.value) and str(second) in str(err.value)

    huge = train.astype({"study_id": object})
    huge.loc[1, "study_id"] = 99999999999999999999999
    huge.loc[2, "study_id"] = -4
    huge.to_csv(tmp_path / "huge.csv", index=False)
    with pytest.raises(TableError) as err:
        read_train_labels(tmp_path / "huge.csv")
    assert "\n" not in str(err.value)
    for expected in ("line 3: study_id '99999999999999999999999' is out of range", "line 4: study_id '-4' is out "
                     "of range"):
        assert expected in str(err.value), str(err.value)

    for value in ("Sever", "EXTREME"):
        bad = train.copy()
        bad.loc[2, LABEL_COLUMNS[3]] = value
        bad.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(TableError, match=value) as err:
            read_train_labels(tmp_path / "bad.csv")
        assert "\n" not in str(err.value) and LABEL_COLUMNS[3] in str(err.value)
        with pytest.raises(ValueError, match=value):  # the folds use the same rules, whoever calls them
            make_folds(bad, 2, 0)

    train[["study_id"]].to_csv(tmp_path / "ids_only.csv", index=False)
    with pytest.raises(TableError, match="missing required columns"):
        read_train_labels(tmp_path / "ids_only.csv")
    (tmp_path / "binary.csv").write_bytes(BINARY)
    with pytest.raises(TableError, match="not a CSV text file"):
        read_train_labels(tmp_path / "binary.csv")


def test_preprocess_stops_with_one_line_on_unusable_train_tables(tiny_dataset, tmp_path, capfd):
    from spine.preprocess.__main__ import main

    data, (study,) = subset(tiny_dataset, tmp_path / "data")
    train = pd.read_csv(data / "train.csv")
    coordinates = (data / "train_label_coordinates.csv").read_bytes()
    other = train.copy()
    other.loc[0, LABEL_COLUMNS[0]] = "Severe" if train.loc[0, LABEL_COLUMNS[0]] != "Severe" else "Moderate"
    spoiled = train.copy()
    spoiled.loc[0, LABEL_COLUMNS[5]] = "Sever"
    cases = [("train.csv", pd.concat([train, other]).to_csv(index=False).encode(), str(study)),
             ("train.csv", spoiled.to_csv(index=False).encode(), "'Sever'"),
             ("train.csv", train[["study_id"]].to_csv(index=False).encode(), "missing required columns"),
             ("train.csv", BINARY, "not a CSV text file"),
             ("train.csv", train.iloc[:0].to_csv(index=False).encode(), "no study, only a header"),
             ("train.csv", b"", "EmptyDataError"),
             ("train.csv", train.to_csv(index=False).replace(str(study), "99999999999999999999999", 1).encode(),
              "study_id '99999999999999999999999' is out of range"),
             ("train_label_coordinates.csv", BINARY, "not a CSV text file"),
             ("train_label_coordinates.csv", b"study_id,x\n1,2\n", "missing column(s) series_id")]
    for name, content, expected in cases:
        (data / "train.csv").write_bytes(train.to_csv(index=False).encode())
        (data / "train_label_coordinates.csv").write_bytes(coordinates)
        (data / name).write_bytes(content)
        assert main([f"data_dir={data}", f"cache_dir={tmp_path / 'cache'}", "workers=1", "progress=false"]) == 2
        err = capfd.readouterr().err
        assert expected in one_line(err) and name in err, (name, expected, err)
        assert not list(tmp_path.glob("cache/*/volumes")), "refused before any work"


def test_training_refuses_unknown_grades_with_one_line(tiny_cache_dir, tmp_path, capsys):
    from spine.train.__main__ import main as train

    labels = pd.read_csv(Path(Cache.open(tiny_cache_dir).info["data_dir"]) / "train.csv")
    labels.loc[0, LABEL_COLUMNS[0]] = "EXTREME"
    labels.to_csv(tmp_path / "train.csv", index=False)
    assert train(["stage=grading", "model=grading_3d_tiny", f"cache_dir={tiny_cache_dir}", "fold=0",
                  f"stage.labels={tmp_path / 'train.csv'}", f"run_dir={tmp_path / 'run'}", "epochs=1",
                  "num_workers=0", "progress=false", "tensorboard=false", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "'EXTREME'" in err.strip().splitlines()[-1] and "Traceback" not in err, err


# -------------------------------------------------------------------------------- listing, coordinates
def test_listing_rows_with_bad_ids_are_skipped_with_a_reason(tmp_path, caplog):
    (tmp_path / "listing.csv").write_text("study_id,series_id,series_description\n"
                                          "1,10,sagittal t1\n../../x,11,Axial T2\n2,abc,Axial T2\n"
                                          "2,12, SAGITTAL T2/STIR \n3,,Axial T2\n1,10,Sagittal T1\n4,13,Sagittal T2\n"
                                          "99999999999999999999999,1,Axial T2\n4,9223372036854775808,Axial T2\n"
                                          "5,12345678901234567.0,Axial T2\n9223372036854775807.00,+14,Axial T2\n")
    with caplog.at_level(logging.WARNING):
        listing = read_listing(tmp_path / "listing.csv")
    assert listing.studies == [1, 2, 3, 4, 5, 2**63 - 1]
    assert listing.series[["study_id", "series_id", "description"]].values.tolist() == [
        [1, 10, "Sagittal T1"], [2, 12, "Sagittal T2/STIR"], [4, 13, "Sagittal T2/STIR"],
        [5, 12345678901234567, "Axial T2"], [2**63 - 1, 14, "Axial T2"]]  # exactly, not through float
    assert listing.skipped.line.tolist() == [3, 4, 6, 7, 9, 10]
    assert listing.skipped_of(2) == ["line 4: series_id 'abc' is not an integer"]
    assert listing.skipped_of(4) == ["line 10: series_id '9223372036854775808' is out of range "
                                     "(0..9223372036854775807)"]
    logged = warnings_of(caplog)
    for expected in ("line 3 skipped: study_id '../../x' is not an integer", "line 6 skipped: no series_id",
                     "line 7 skipped: series 1/10 listed again (first on line 2)",
                     "line 9 skipped: study_id '99999999999999999999999' is out of range",
                     "'Sagittal T2' read as 'Sagittal T2/STIR'"):
        assert expected in logged, logged


def test_coordinates_with_bad_numbers_are_set_aside(tmp_path):
    (tmp_path / "c.csv").write_text("study_id,series_id,instance_number,condition,level,x,y\n"
                                    "1,10,3,Spinal Canal Stenosis,L1/L2,12.5,13\n"
                                    "1,10,3,Spinal Canal Stenosis,L2/L3,abc,13\n"
                                    "1,x,,Spinal Canal Stenosis,L3/L4,1,inf\n"
                                    "99999999999999999999999,10,3,Spinal Canal Stenosis,L4/L5,1,2\n"
                                    "1,12345678901234567.0,3.0,Spinal Canal Stenosis,L5/S1,1,2\n")
    good, rejected = read_coordinates(tmp_path / "c.csv")
    assert good.line.tolist() == [2, 6] and good.x.dtype == np.float64 and good.study_id.dtype == np.int64
    assert good.series_id.tolist() == [10, 12345678901234567] and good.instance_number.tolist() == [3, 3]
    assert rejected.line.tolist() == [3, 4, 5]
    assert rejected.reason.tolist() == ["x 'abc' is not a number", "series_id 'x' is not an integer; no "
                                        "instance_number; y 'inf' is not a number",
                                        "study_id '99999999999999999999999' is out of range (0..9223372036854775807)"]


def test_preprocess_skips_bad_rows_maps_descriptions_and_lists_unresolved_points(tiny_dataset, tmp_path, caplog,
                                                                                 capfd):
    data, (study,) = subset(tiny_dataset, tmp_path / "data")
    listing = pd.read_csv(data / "train_series_descriptions.csv")
    by_type = dict(zip(listing.series_description, listing.series_id))
    listing["series_description"] = listing.series_description.map(
        {"Sagittal T1": "sagittal t1", "Sagittal T2/STIR": "Sagittal T2", "Axial T2": " AXIAL T2 "})
    bad_rows = pd.DataFrame({"study_id": ["../../x", str(study)], "series_id": ["5", "abc"],
                             "series_description": ["Axial T2", "Axial T2"]})
    pd.concat([listing.astype(str), bad_rows]).to_csv(data / "train_series_descriptions.csv", index=False)
    train = pd.read_csv(data / "train.csv")
    pd.concat([train, train]).to_csv(data / "train.csv", index=False)  # the same row twice: kept once
    points = pd.read_csv(data / "train_label_coordinates.csv")
    planted = points.iloc[[0, 0, 0, 0]].astype(str).reset_index(drop=True)
    planted.loc[0, "instance_number"] = "999"
    planted.loc[1, "series_id"] = "12345"
    planted.loc[2, "study_id"] = "777"
    planted.loc[3, "x"] = "abc"
    pd.concat([points.astype(str), planted]).to_csv(data / "train_label_coordinates.csv", index=False)

    with caplog.at_level(logging.INFO, logger="spine"):
        summary = run(preprocess_config(data, tmp_path / "cache"))
    assert (summary.exit_code, summary.n_ok, summary.n_errors) == (0, 3, 0), summary
    assert (summary.n_coordinates, summary.n_coordinates_unresolved) == (len(points) + 4, 4)
    cache = Cache(summary.cache_root)
    assert sorted(cache.series.description) == sorted(SERIES_TYPES)
    for name, series_id in by_type.items():
        assert cache.series_of(study, name) == [series_id]
        assert cache.series_of(study, f" {name.upper()} ") == [series_id]
        record = (Path(summary.cache_root) / "volumes" / str(study) / f"{series_id}.json").read_text()
        assert f'"description": "{name}"' in record
    assert cache.folds.study_id.tolist() == [study]
    coords = cache.coordinates
    assert len(coords) == len(points) + 3  # the non-numeric row is only in the unresolved list
    assert np.isfinite(coords.iloc[: len(points)][["world_x", "voxel_i"]].to_numpy()).all()
    unresolved = pd.read_csv(Path(summary.cache_root) / "coordinates_unresolved.csv")
    assert unresolved.line.tolist() == list(range(len(points) + 2, len(points) + 6))
    assert [r.split(" (")[0] for r in unresolved.reason] == [
        f"instance 999 not in series {points.series_id[0]}", f"series 12345 of study {study} not listed",
        "study 777 not listed", "x 'abc' is not a number"]
    logged = warnings_of(caplog)
    for expected in ("study_id '../../x' is not an integer", "series_id 'abc' is not an integer",
                     "'Sagittal T2' read as 'Sagittal T2/STIR'", "kept once", "coordinates_unresolved.csv"):
        assert expected in logged, logged
    err = caplog.text + capfd.readouterr().err  # the summary is logged
    assert "4 unresolved (listed in coordinates_unresolved.csv)" in err and "Traceback" not in err, err


def test_unresolved_points_name_the_skipped_listing_row(tiny_dataset, tmp_path, capfd):
    """A series whose listing row was skipped (an id out of int64): its points say which row and why; ids out
    of range in the coordinates are set aside; no traceback."""
    from spine.preprocess.__main__ import main

    data, (study,) = subset(tiny_dataset, tmp_path / "data")
    listing = pd.read_csv(data / "train_series_descriptions.csv").astype(str)
    axial = listing.index[listing.series_description == "Axial T2"][0]
    listing.loc[axial, "study_id"] = "99999999999999999999999"
    listing.to_csv(data / "train_series_descriptions.csv", index=False)
    points = pd.read_csv(data / "train_label_coordinates.csv").astype(str)
    on_axial = int((points.series_id == listing.series_id[axial]).sum())
    assert on_axial > 0
    planted = points.iloc[[0]].copy()
    planted["study_id"] = "99999999999999999999999"
    pd.concat([points, planted]).to_csv(data / "train_label_coordinates.csv", index=False)

    assert main([f"data_dir={data}", f"cache_dir={tmp_path / 'cache'}", "workers=1", "progress=false"]) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and f"{on_axial + 1} unresolved" in err, err
    (root,) = (tmp_path / "cache").iterdir()
    unresolved = pd.read_csv(root / "coordinates_unresolved.csv", dtype=str).set_index("line")
    line = axial + 2
    expected = f"listing row skipped (line {line}: study_id '99999999999999999999999' is out of range"
    reasons = unresolved.reason.tolist()
    assert sum(r.startswith(expected) for r in reasons) == on_axial, reasons
    assert unresolved.loc[str(len(points) + 2), "reason"].startswith("study_id '99999999999999999999999' is out of "
                                                                     "range"), reasons


# ------------------------------------------------------------------------------------------ predict
def test_predict_skips_bad_listing_rows_and_maps_descriptions(tiny_runs, tiny_dataset, tmp_path, caplog, capsys):
    from spine.predict.__main__ import main

    data = tmp_path / "data"
    data.mkdir()
    os.symlink(tiny_dataset / "test_images", data / "test_images")
    (data / "sample_submission.csv").write_bytes((tiny_dataset / "sample_submission.csv").read_bytes())
    listing = pd.read_csv(tiny_dataset / "test_series_descriptions.csv").astype(str)
    mapped, clean = listing.study_id.unique()[:2]
    variants = {"Sagittal T1": "SAGITTAL T1 ", "Sagittal T2/STIR": "Sagittal T2", "Axial T2": "axial  t2"}
    listing.loc[listing.study_id == mapped, "series_description"] = listing.series_description.map(variants)
    bad_rows = pd.DataFrame({"study_id": ["../../x", "555", clean, "99999999999999999999999"],
                             "series_id": ["1", "abc", "1e3x", "1"], "series_description": ["Axial T2"] * 4})
    pd.concat([listing, bad_rows]).to_csv(data / "test_series_descriptions.csv", index=False)
    out, log = tmp_path / "submission.csv", tmp_path / "log.csv"
    with caplog.at_level(logging.WARNING):
        assert main([f"data_dir={data}", f"runs=[{tiny_runs[0]},{tiny_runs[1]}]", f"out={out}", f"log={log}",
                     "device=cpu", "workers=0", "progress=false"]) == 0
    sub = pd.read_csv(out)
    assert set(sub.row_id) == {r for s in (mapped, clean, "555") for r in study_row_ids(s)} and len(sub) == 75
    trained = pd.read_csv(tiny_runs[1] / "submission.csv").set_index("row_id")
    for study in (mapped, clean):  # the model's answer, as from the listing as written by Kaggle
        rows = sub[sub.row_id.str.startswith(f"{study}_")]
        np.testing.assert_allclose(rows[list(PROB_COLUMNS)].to_numpy(),
                                   trained.loc[rows.row_id, list(PROB_COLUMNS)].to_numpy(), atol=1e-4)
    entries = pd.read_csv(log, keep_default_na=False, dtype={"study_id": str}).set_index("study_id")
    assert entries.loc[mapped, "status"] == "ok" and "'Sagittal T2' read as 'Sagittal T2/STIR'" in \
        entries.loc[mapped, "reason"]
    assert entries.loc[clean, "status"] == "ok" and "series_id '1e3x' is not an integer" in entries.loc[clean, "reason"]
    assert entries.loc["555", "answer"] == "priors" and "series_id 'abc' is not an integer" in \
        entries.loc["555", "reason"]
    assert "study_id '../../x' is not an integer" in warnings_of(caplog)
    assert "study_id '99999999999999999999999' is out of range" in warnings_of(caplog)


def test_predict_refuses_a_binary_listing_with_one_line(tmp_path, capsys):
    from spine.predict.__main__ import main

    (tmp_path / "test_series_descriptions.csv").write_bytes(BINARY)
    assert main([f"data_dir={tmp_path}", f"out={tmp_path / 'x.csv'}", "device=cpu"]) == 1
    assert "not a CSV text file" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.csv").exists()
