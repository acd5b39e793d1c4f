"""Damaged state and lost work (issue 20): each case plants the damage in a copy of the session fixtures and
asserts what a user sees: the exit code, the one line on stderr, the rows written, the file named.

1. A damaged series.csv in the optional cache of ``spine-predict``: the cache is dropped with one warning that
   names the file and why, every study is read from DICOM, every row is written.
2. A cached stack cut short: ``spine-train`` ends with one line naming the file and the command that rebuilds
   it (that command does), also when a DataLoader worker process met it.
3. ``spine-predict out=`` an existing folder: one line, exit code 2, before any work.
4. A damaged config.yaml (or another file) of a run folder: one line naming the file (RunFolderError).
5. DataLoader workers of a killed ``spine-train`` end with it (spine.procs.WorkerInit).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.constants import PROB_COLUMNS, study_row_ids

TRAIN_FAST = ["stage=landmarks", "model=landmark_25d_tiny", "stage.grid.size=[8,32,32]",
              "stage.grid.spacing_mm=[10,10,10]", "stage.plot_studies=0", "fold=0", "epochs=1", "batch_size=2",
              "num_workers=0", "max_steps_per_epoch=1", "progress=false", "tensorboard=false", "predict_test=false"]


def _copy_cache(tiny_cache_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(cache_dir, cache-id folder) of a private copy of the session's tiny cache, safe to damage."""
    cache_dir = tmp_path / "cache"
    shutil.copytree(tiny_cache_dir, cache_dir)
    (root,) = [d for d in cache_dir.iterdir() if (d / "series.csv").is_file()]
    return cache_dir, root


def _copy_runs(tiny_runs, tmp_path: Path) -> tuple[Path, Path]:
    copies = []
    for run in tiny_runs:
        shutil.copytree(run, tmp_path / "runs" / run.name)
        copies.append(tmp_path / "runs" / run.name)
    return copies[0], copies[1]


def _error_lines(err: str, command: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"[{command}] ") and " error: " in line]


# ----------------------------------------------------------------------- 1. damaged series.csv, spine-predict
def _damage_series_csv(path: Path, damage: str) -> None:
    if damage == "empty":
        path.write_text("")
        return
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if damage == "non-integer id":
        frame.loc[0, "study_id"] = "abc"
    else:  # missing column
        frame = frame.drop(columns=["status"])
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("damage, why", [("non-integer id", "line 2: study_id 'abc' is not an integer"),
                                         ("empty", "EmptyDataError"),
                                         ("missing column", "no column status")])
def test_predict_drops_a_cache_with_a_damaged_series_csv_and_writes_every_row(damage, why, tiny_runs, tiny_dataset,
                                                                               tiny_cache_dir, tmp_path, capsys):
    from spine.predict.__main__ import main

    cache_dir, root = _copy_cache(tiny_cache_dir, tmp_path)
    _damage_series_csv(root / "series.csv", damage)
    out = tmp_path / "submission.csv"
    assert main([f"data_dir={tiny_dataset}", f"runs=[{tiny_runs[0]},{tiny_runs[1]}]", f"out={out}", "device=cpu",
                 f"cache_dir={cache_dir}", "progress=false"]) == 0
    err = capsys.readouterr().err
    studies = pd.read_csv(tiny_dataset / "test_series_descriptions.csv").study_id.unique()
    sub = pd.read_csv(out)
    assert len(sub) == 25 * len(studies) and set(sub.row_id) == {r for s in studies for r in study_row_ids(s)}
    assert np.isfinite(sub[list(PROB_COLUMNS)].to_numpy()).all()
    log = pd.read_csv(tmp_path / "submission.log.csv", keep_default_na=False)
    assert (log.status == "ok").all() and (log.reason == "").all(), log  # read from DICOM, nothing else off
    notes = [line for line in err.splitlines() if "series.csv" in line]
    assert len(notes) == 1, err  # one note for the run, not one per study
    assert notes[0].startswith("[predict] warning: ") and str(root / "series.csv") in notes[0] and why in notes[0]
    assert "read from DICOM" in notes[0] and "python -m spine.preprocess" in notes[0]
    assert not _error_lines(err, "predict") and "Traceback" not in err


def test_a_damaged_cache_table_is_a_cache_error_naming_the_file(tiny_cache_dir, tmp_path):
    """What every stage meets (training, the doctor, the report): a CacheError (exit code 1) that names the file."""
    from spine.cache import Cache, CacheError
    from spine.errors import SpineError

    cache_dir, root = _copy_cache(tiny_cache_dir, tmp_path)
    (root / "series.csv").write_text((root / "series.csv").read_text().replace("\n", "\nnot,a,row\n", 1))
    (root / "folds.csv").write_text("")
    (root / "coordinates.csv").write_text("a,b\n1,2\n")
    cache = Cache.open(cache_dir)
    for table, expected in (("series", "study_id 'a' is not an integer"), ("folds", "EmptyDataError"),
                            ("coordinates", "no column study_id, series_id, condition, level")):
        with pytest.raises(CacheError) as caught:
            getattr(cache, table)
        assert isinstance(caught.value, SpineError) and caught.value.exit_code == 1
        assert f"{root / (table + '.csv')}" in str(caught.value) and expected in str(caught.value), caught.value
        assert "remove it and rebuild it with python -m spine.preprocess" in str(caught.value)
    (root / "cache.json").write_text("{")
    with pytest.raises(CacheError, match="damaged cache file .*cache.json: JSONDecodeError"):
        Cache.open(cache_dir)


# ------------------------------------------------------------------------- 2. a cached stack cut short
def _cut_short(cache, study: int, series: int, how: str = "cut short") -> Path:
    """Damage the first stack file of a cached series: cut to half its size, or (same size) its header."""
    record = cache.record(study, series)
    path = cache.root / "volumes" / str(study) / record["stacks"][0]["file"]
    if how == "cut short":
        os.truncate(path, path.stat().st_size // 2)
    else:
        with open(path, "r+b") as handle:
            handle.write(b"\0" * 348)
    return path


@pytest.mark.parametrize("how, why", [("cut short", "cut short ("), ("header zeroed", "ImageFileError: ")])
def test_a_damaged_stack_ends_training_with_one_line_and_the_command_that_repairs_it(how, why, tiny_cache_dir,
                                                                                     tmp_path, capsys):
    from spine.cache import Cache
    from spine.preprocess.__main__ import main as preprocess
    from spine.train.__main__ import main as train

    cache_dir, root = _copy_cache(tiny_cache_dir, tmp_path)
    cache = Cache(root)
    ok = cache.series[(cache.series.split == "train") & (cache.series.status == "ok")
                      & (cache.series.description == "Sagittal T2/STIR")]
    study, series = (int(v) for v in ok.iloc[0][["study_id", "series_id"]])
    damaged = _cut_short(cache, study, series, how)
    capsys.readouterr()
    assert train([f"cache_dir={cache_dir}", f"run_dir={tmp_path / 'run'}", *TRAIN_FAST]) == 1
    err = capsys.readouterr().err
    (line,) = _error_lines(err, "train")
    assert "Traceback" not in err and line == err.strip().splitlines()[-1], err
    assert line.startswith(f"[train] error: damaged cached stack {damaged}: {why}"), line
    assert "python -m spine.preprocess data_dir=" in line and f"cache_dir={cache_dir} split=train" in line, line
    # the command it names rebuilds the stack (preprocessing checks every stack file's size and header against
    # its record)
    command = line.split("python -m spine.preprocess ", 1)[1].split()
    assert preprocess([*command, "workers=1", "progress=false"]) == 0
    volume = Cache(root).load_volume(study, series)
    assert volume.stacks[0].pixels.shape == tuple(cache.record(study, series)["stacks"][0]["shape_ijk"][::-1])


def test_predict_reads_dicom_for_a_study_whose_cached_stack_is_cut_short(tiny_dataset, tiny_cache_dir, tmp_path):
    from spine.cache import Cache
    from spine.predict import read_listing
    from spine.predict.volumes import load_volumes

    cache_dir, root = _copy_cache(tiny_cache_dir, tmp_path)
    studies, series = read_listing(tiny_dataset, "test")
    cache = Cache(root)
    damaged = _cut_short(cache, studies[0], cache.series_of(studies[0], "Axial T2")[0])
    volumes, issues = load_volumes(studies[0], series[studies[0]], ["Axial T2", "Sagittal T1"], None, str(cache_dir))
    assert not isinstance(volumes["Axial T2"].stacks[0].pixels, np.memmap)  # from DICOM
    assert isinstance(volumes["Sagittal T1"].stacks[0].pixels, np.memmap)  # the intact series from the cache
    (note,) = [issue for issue in issues if issue.kind == "cache unusable"]
    assert note.effect == "note" and str(damaged) in note.detail and "cut short" in note.detail, issues


class _Damaged:
    """A dataset whose items meet a damaged cache file (as a landmark or grading dataset would)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        from spine.cache import CacheError

        raise CacheError("damaged cached stack /c/volumes/1/2_0.nii: cut short (1 of 2 voxel bytes); rebuild it")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_cache_error_in_a_dataloader_worker_arrives_as_itself_with_its_one_line(workers):
    from types import SimpleNamespace

    import torch

    from spine.cache import CacheError
    from spine.train.engine import _loader, batches_of

    loader = _loader(_Damaged(), 2, None, workers, SimpleNamespace(device=torch.device("cpu")))
    with pytest.raises(CacheError) as caught:
        next(batches_of(loader))
    text = str(caught.value)
    assert text.startswith("damaged cached stack /c/volumes/1/2_0.nii: cut short (1 of 2 voxel bytes); rebuild it")
    assert "Traceback" not in text and "\n" not in text
    assert text.endswith("(in DataLoader worker process 0)") == (workers > 0), text


# ------------------------------------------------------------------------- 3. out= an existing folder
def test_predict_refuses_an_output_path_it_cannot_write_before_any_work(tiny_dataset, tmp_path, capsys):
    from spine.predict.__main__ import main

    folder = tmp_path / "outdir"
    folder.mkdir()
    (tmp_path / "a_file").write_text("")
    missing_runs = f"runs=[{tmp_path / 'nope'},{tmp_path / 'nope2'}]"  # never reached: the path is checked first
    cases = [([f"out={folder}"], f"out={folder} is a folder: name the file to write, e.g. out={folder}/submission.csv"),
             ([f"out={tmp_path / 'a_file' / 'sub.csv'}"], f"{tmp_path / 'a_file'} is a file, not a folder"),
             ([f"out={tmp_path / 'x.csv'}", f"log={folder}"], f"log={folder} is a folder")]
    for overrides, expected in cases:
        assert main([f"data_dir={tiny_dataset}", missing_runs, *overrides, "device=cpu"]) == 2, overrides
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("[predict] config error: ") and expected in lines[0], lines
    assert list(folder.iterdir()) == [] and not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------------------- 4. damaged run folders
@pytest.mark.parametrize("text, why", [("stage: [\n", "not valid YAML (ParserError"),
                                       (b"\xff\xfe\x00stage", "not valid YAML (UnicodeDecodeError"),
                                       ("- a\n- b\n", "a list, not a mapping of keys"),
                                       ("stage: 3\n", "stage is a int, not a mapping of keys"),
                                       ("stage:\n  name: cooking\n", "stage.name 'cooking' is not a stage")])
def test_a_damaged_run_config_is_a_run_folder_error_naming_the_file(text, why, tmp_path):
    from spine.errors import SpineError
    from spine.run_folder import RunFolderError, load_run_config

    path = tmp_path / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RunFolderError) as caught:
        load_run_config(tmp_path)
    assert isinstance(caught.value, SpineError) and isinstance(caught.value, FileNotFoundError)
    assert caught.value.exit_code == 1
    assert str(caught.value).startswith(f"damaged run-folder file {path}: {why}"), caught.value
    path.unlink()
    with pytest.raises(RunFolderError, match="is not a run folder"):
        load_run_config(tmp_path)


def test_damaged_json_files_of_a_run_folder_are_run_folder_errors(tiny_runs, tmp_path):
    from spine.run_folder import RunFolderError, read_cache_info, read_calibration, read_model_json, read_priors

    _, grading = _copy_runs(tiny_runs, tmp_path)
    cases = [("cache.json", read_cache_info, ["{", "[]", b"\xff"]),
             ("calibration.json", read_calibration, ["{", "[]"]),
             ("priors.json", read_priors, ["{", "[]", '{"priors": 1}', '{"columns": ["a"], "priors": {}}']),
             ("fold0/model.json", lambda run: read_model_json(run / "fold0"), ["{", "[]", '{"kwargs": {}}'])]
    for name, read, damages in cases:
        assert read(grading) is not None  # intact
        for damage in damages:
            (grading / name).write_bytes(damage if isinstance(damage, bytes) else damage.encode())
            with pytest.raises(RunFolderError) as caught:
                read(grading)
            assert str(caught.value).startswith(f"damaged run-folder file {grading / name}: "), (damage, caught.value)


def test_predict_and_report_say_a_damaged_config_yaml_in_one_line(tiny_runs, tiny_dataset, tmp_path, capsys):
    from spine.predict.__main__ import main as predict
    from spine.report.__main__ import main as report

    landmarks, grading = _copy_runs(tiny_runs, tmp_path)
    (grading / "config.yaml").write_text("stage: [\n")
    expected = f"damaged run-folder file {grading / 'config.yaml'}: not valid YAML (ParserError: "
    assert predict([f"data_dir={tiny_dataset}", f"runs=[{landmarks},{grading}]", f"out={tmp_path / 's.csv'}",
                    "device=cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith(f"[predict] error: {expected}") and "Traceback" not in err, err
    assert not (tmp_path / "s.csv").exists()
    assert report([f"run={grading}", f"out={tmp_path / 'report'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err.splitlines()[-1]] and err.startswith(f"[report] error: {expected}"), err


def test_a_damaged_priors_json_costs_only_the_priors(tiny_runs, tmp_path, caplog):
    import torch

    from spine.predict.run_folders import load_run

    _, grading = _copy_runs(tiny_runs, tmp_path)
    (grading / "priors.json").write_text("{")
    run = load_run(grading, torch.device("cpu"))
    assert run.priors is None and run.calibration is not None
    assert any(f"damaged run-folder file {grading / 'priors.json'}" in r.getMessage() for r in caplog.records)
