"""``spine-predict``: every study gets 25 valid rows, in memory like training, whatever its files hold.

A landmark run and a grading run are trained once per module through the public ``spine-train`` CLI with the
tiniest settings on the tiny synthetic cache; then the tiny test split is predicted as it is, and a copy of
it is broken in every way a hidden test set can be broken.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.constants import PROB_COLUMNS, study_row_ids
from spine.predict.__main__ import main


@pytest.fixture(scope="module")
def runs(tiny_runs) -> tuple[Path, Path]:
    """(landmark run, grading run), both fold=all, one step per epoch (tests/conftest.py)."""
    return tiny_runs


def _valid(sub: pd.DataFrame) -> None:
    assert list(sub.columns) == ["row_id", *PROB_COLUMNS]
    p = sub[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    assert np.isfinite(p).all() and (p > 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    assert not sub.row_id.duplicated().any()


def test_predicts_the_test_split_like_training(runs, tiny_dataset, tmp_path, capsys):
    from spine.metric import score

    landmarks, grading = runs
    out = tmp_path / "sub" / "submission.csv"
    assert main([f"data_dir={tiny_dataset}", f"runs=[{landmarks},{grading}]", f"out={out}", "device=cpu",
                 "workers=1", "progress=false"]) == 0
    summary = capsys.readouterr().out
    assert "0 fallback" in summary and "s/study" in summary and "720 studies" in summary, summary
    sub = pd.read_csv(out)
    _valid(sub)
    sample = pd.read_csv(tiny_dataset / "sample_submission.csv")
    studies = pd.read_csv(tiny_dataset / "test_series_descriptions.csv").study_id.unique()
    assert list(sub.row_id) == list(sample.row_id)
    assert len(sub) == 25 * len(studies) and set(sub.row_id) == {r for s in studies for r in study_row_ids(s)}
    log = pd.read_csv(tmp_path / "sub" / "submission.log.csv", keep_default_na=False)
    assert sorted(log.study_id) == sorted(studies) and (log.status == "ok").all() and (log.reason == "").all()
    result = score(pd.read_csv(tiny_dataset / "test_labels.csv"), sub)
    assert math.isfinite(result["score"])
    # Same numbers as the grading run's own test predictions (built from the cache, calibrated): the volumes
    # built in memory, the landmarks and the crops are those of training.
    trained = pd.read_csv(grading / "submission.csv").set_index("row_id").loc[sub.row_id, list(PROB_COLUMNS)]
    np.testing.assert_allclose(sub[list(PROB_COLUMNS)].to_numpy(), trained.to_numpy(), atol=1e-4)


def test_predictor_api_with_flip_tta_and_a_cache(runs, tiny_dataset, tiny_cache_dir):
    from spine.predict import Predictor, read_listing

    studies, series = read_listing(tiny_dataset, "test")
    plain = Predictor.from_runs(list(runs), device="cpu")
    tta = Predictor.from_runs(list(runs), device="cpu", tta=True, cache_dir=str(tiny_cache_dir))
    frame, info = plain.predict_study(studies[0], series[studies[0]])
    assert list(frame.row_id) == study_row_ids(studies[0]) and info.status == "ok" and info.answer == "model"
    mirrored, info = tta.predict_study(studies[0], series[studies[0]])
    _valid(frame)
    _valid(mirrored)
    assert info.status == "ok" and info.seconds > 0
    assert not np.allclose(frame[list(PROB_COLUMNS)], mirrored[list(PROB_COLUMNS)])  # the mirror was averaged in


def test_model_failures_fall_back_to_the_priors(runs, tiny_dataset):
    import torch

    from spine.predict import Predictor, read_listing

    class NaNGrading(torch.nn.Module):
        def forward(self, image, level, present):
            return torch.full((len(image), 5, 3), float("nan"))

    class Broken(torch.nn.Module):
        def forward(self, image):
            raise RuntimeError("boom")

    studies, series = read_listing(tiny_dataset, "test")
    predictor = Predictor.from_runs(list(runs), device="cpu")
    volumes, issues = predictor.load(studies[0], series[studies[0]])
    priors = predictor.fallback(studies[0])
    cases = [("grading_runs", NaNGrading(), "non-finite output"), ("landmark_runs", Broken(), "boom")]
    for attribute, model, reason in cases:
        run = getattr(predictor, attribute)[0]
        saved, run.models = run.models, [model]
        frame, info = predictor.predict_volumes(studies[0], volumes, issues)
        run.models = saved
        assert (info.status, info.answer) == ("fallback", "priors") and reason in info.reason, info
        assert frame.equals(priors)
    predictor.points = lambda volumes, info: np.full((5, 5, 3), 1e4)  # 10 m away from the patient
    frame, info = predictor.predict_volumes(studies[0], volumes, issues)
    assert info.answer == "priors" and "landmarks outside the volumes" in info.reason and frame.equals(priors)


NO_TRAIN_SCRIPT = """
import importlib, json, sys
from pathlib import Path
import spine.predict
from spine.predict.__main__ import main

for path in sorted(Path(spine.predict.__file__).parent.glob("*.py")):
    importlib.import_module(f"spine.predict.{path.stem}" if path.stem != "__init__" else "spine.predict")
data, landmarks, grading, out = sys.argv[1:]
assert main([f"data_dir={data}", f"runs=[{landmarks},{grading}]", f"out={out}", "device=cpu", "tta=true",
             "progress=false"]) == 0
studies, series = spine.predict.read_listing(data, "test")
predictor = spine.predict.Predictor.from_runs([landmarks, grading], device="cpu")
frame, info = predictor.predict_study(studies[0], series[studies[0]])
assert info.answer == "model", info
print(json.dumps(sorted(m for m in sys.modules if m == "spine.train" or m.startswith("spine.train."))))
"""


def test_inference_does_not_import_the_training_code(runs, tiny_dataset, tmp_path):
    """Run folders are read (spine.run_folder) and landmarks decoded (spine.models.decode) without spine.train:
    a fresh process that imports every inference module and predicts has no spine.train module loaded."""
    import json

    done = subprocess.run([sys.executable, "-c", NO_TRAIN_SCRIPT, str(tiny_dataset), str(runs[0]), str(runs[1]),
                           str(tmp_path / "submission.csv")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [], done.stdout
    _valid(pd.read_csv(tmp_path / "submission.csv"))


# ------------------------------------------------------------------------------------------------- fuzz
def _break_dataset(src: Path, dst: Path) -> dict[int, str]:
    """A copy of ``src``'s test split with the test studies cloned under new ids and broken; returns
    study_id -> what was done to it ("ok" for untouched clones)."""
    import pydicom

    listing = pd.read_csv(src / "test_series_descriptions.csv")
    base = list(listing.study_id.unique())
    (dst / "test_images").mkdir(parents=True)
    cases = ["ok", "truncated files", "text file", "empty series folder", "series folder missing", "single slice",
             "no ImagePositionPatient", "only one series", "no study folder", "ok"]
    rows, what = [], {}
    for n, case in enumerate(cases):
        source = int(base[n % len(base)])
        study = 1000 + n
        what[study] = case
        shutil.copytree(src / "test_images" / str(source), dst / "test_images" / str(study))
        own = listing[listing.study_id == source].assign(study_id=study)
        folder = {r.series_description: dst / "test_images" / str(study) / str(r.series_id)
                  for r in own.itertuples()}
        files = {d: sorted(f.glob("*.dcm")) for d, f in folder.items()}
        if case == "truncated files":
            for path in files["Sagittal T2/STIR"][:3]:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            files["Sagittal T1"][0].write_bytes(files["Sagittal T1"][0].read_bytes()[:100])
        elif case == "text file":
            (folder["Axial T2"] / "notes.dcm").write_text("not a DICOM file\n")
        elif case == "empty series folder":
            for path in files["Axial T2"]:
                path.unlink()
        elif case == "series folder missing":
            shutil.rmtree(folder["Sagittal T1"])
        elif case == "single slice":
            for path in files["Sagittal T2/STIR"][1:]:
                path.unlink()
        elif case == "no ImagePositionPatient":
            for path in files["Axial T2"]:
                ds = pydicom.dcmread(path)
                del ds.ImagePositionPatient
                ds.save_as(path, enforce_file_format=True)
        elif case == "only one series":
            own = own[own.series_description == "Axial T2"]
        elif case == "no study folder":
            shutil.rmtree(dst / "test_images" / str(study))
        rows.append(own)
    pd.concat(rows).to_csv(dst / "test_series_descriptions.csv", index=False)
    # the sample submission also names a study that the listing does not have
    extra = 2000
    what[extra] = "only in the sample submission"
    ids = [r for s in [*what] for r in study_row_ids(s)]
    pd.DataFrame({"row_id": ids, **{c: 1 / 3 for c in PROB_COLUMNS}}).to_csv(dst / "sample_submission.csv",
                                                                             index=False)
    return what


def test_broken_studies_still_get_every_row_and_a_logged_reason(runs, tiny_dataset, tmp_path, capsys):
    what = _break_dataset(tiny_dataset, tmp_path / "broken")
    out = tmp_path / "submission.csv"
    assert main([f"data_dir={tmp_path / 'broken'}", f"runs=[{runs[0]},{runs[1]}]", f"out={out}", "device=cpu",
                 f"log={tmp_path / 'log.csv'}", "progress=false"]) == 0
    sub = pd.read_csv(out)
    _valid(sub)
    assert list(sub.row_id) == [r for s in what for r in study_row_ids(s)]
    log = pd.read_csv(tmp_path / "log.csv", keep_default_na=False).set_index("study_id")
    assert sorted(log.index) == sorted(what)
    for study, case in what.items():
        row = log.loc[study]
        if case == "ok":
            assert row.status == "ok" and row.reason == "" and row.answer == "model", (case, dict(row))
            continue
        assert row.reason, (case, dict(row))  # every broken study is named, with why
        if case in ("only one series", "no study folder", "only in the sample submission"):
            assert row.status == "fallback" and row.answer == "priors", (case, dict(row))
        elif case in ("empty series folder", "series folder missing", "single slice", "no ImagePositionPatient"):
            assert row.status == "fallback" and row.answer == "model" and "missing" in row.reason, (case, dict(row))
        else:  # a few unreadable files: the rest of the series is used, the answer is the model's
            assert row.answer == "model" and "skipped files" in row.reason, (case, dict(row))
    # priors rows are the grading run's training priors
    import json

    priors = json.loads((runs[1] / "priors.json").read_text())["priors"]
    first = sub[sub.row_id == "2000_spinal_canal_stenosis_l1_l2"][list(PROB_COLUMNS)].to_numpy()[0]
    np.testing.assert_allclose(first, priors["spinal_canal_stenosis_l1_l2"], atol=1e-5)
    summary = capsys.readouterr().out
    assert "4 ok, 7 fallback (" in summary and "3 answered by the priors" in summary, summary


# --------------------------------------------------------------------------------------------- config
def test_unusable_configuration_is_a_clear_error(runs, tiny_dataset, tmp_path, capsys):
    landmarks, grading = runs
    data = f"data_dir={tiny_dataset}"
    unfinished = tmp_path / "unfinished"
    (unfinished / "fold0").mkdir(parents=True)
    shutil.copy(grading / "config.yaml", unfinished / "config.yaml")
    cases = [([data, f"runs=[{tmp_path / 'nope'},{grading}]"], "does not exist"),
             ([data], "no runs"),
             ([data, f"runs=[{landmarks}]"], "one grading run"),
             ([data, f"runs=[{landmarks},{unfinished}]"], "no finished fold"),
             ([f"data_dir={tmp_path}", f"runs=[{landmarks},{grading}]"], "test_series_descriptions.csv not found")]
    for overrides, expected in cases:
        assert main([*overrides, f"out={tmp_path / 'x.csv'}", "device=cpu"]) == 1, overrides
        err = capsys.readouterr().err
        assert expected in err.splitlines()[-1], err
    assert not (tmp_path / "x.csv").exists()
    for typo, expected in ((["outt=x.csv"], "outt"), (["split=valid"], "split"), (["amp=fp8"], "amp")):
        assert main([data, *typo]) == 2
        err = capsys.readouterr().err.strip()
        assert "config error:" in err and expected in err and len(err.splitlines()) == 1, err


def test_console_script_and_module_entry_point():
    script = Path(sys.executable).parent / "spine-predict"
    for command in ([str(script)], [sys.executable, "-m", "spine.predict"]):
        if command[0] == str(script) and not script.exists():
            continue
        done = subprocess.run([*command, "runz=[]"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "config error:" in done.stderr and "runz" in done.stderr, done.stderr


def test_volumes_of_cached_studies_load_here_and_the_others_in_workers(tiny_dataset, tmp_path):
    """A cache holding only the training studies: those come memory-mapped from it, the test studies are built
    from DICOM by the worker pool, and every study is yielded once, in order, with all its series."""
    from spine.cli import compose
    from spine.predict import read_listing
    from spine.predict.volumes import iterate_volumes
    from spine.preprocess.config import PreprocessConfig
    from spine.preprocess.run import run

    cfg = compose("preprocess", [f"data_dir={tiny_dataset}", f"cache_dir={tmp_path}", "split=train", "workers=1",
                                 "progress=false", "n_folds=2"], PreprocessConfig)
    assert run(cfg).exit_code == 0
    train, train_series = read_listing(tiny_dataset, "train")
    test, test_series = read_listing(tiny_dataset, "test")
    studies = [test[0], *train[:2], *test[1:]]
    descriptions = ["Sagittal T2/STIR", "Axial T2"]
    results = list(iterate_volumes(studies, {**train_series, **test_series}, descriptions, None, str(tmp_path), 1))
    assert [r[0] for r in results] == studies
    for study, volumes, issues, _ in results:
        assert all(volumes[d] is not None for d in descriptions), (study, issues)
        memmapped = isinstance(volumes["Axial T2"].stacks[0].pixels, np.memmap)
        assert memmapped == (study in train), study
