"""spine-report: the numbers gathered from the tiny runs, the page's sections, what a missing piece does, and the
page in a real headless browser (Chromium; skipped with the reason when there is none)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.constants import PROB_COLUMNS
from spine.metric import score

SECTIONS = ("summary", "config", "metrics", "plots", "landmarks", "worst", "calibration")
PNG = b"\x89PNG\r\n\x1a\n"


def _cfg(run, **overrides):
    from spine.cli import compose
    from spine.report.config import ReportConfig

    return compose("report", [f"run={run}", *[f"{k}={v}" for k, v in overrides.items()]], ReportConfig)


def _labels(data: Path) -> pd.DataFrame:
    from spine.io.tables import read_train_labels

    return read_train_labels(data / "train.csv")


def _row(frame: pd.DataFrame, fold, what: str) -> pd.Series:
    rows = frame[(frame["fold"].astype(str) == str(fold)) & (frame["what"] == what)]
    assert len(rows) == 1, (fold, what, frame)
    return rows.iloc[0]


def _sections(page: str) -> list[str]:
    return re.findall(r'<section id="([a-z]+)">', page)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture(scope="module")
def grading_report(tiny_runs, tiny_dataset):
    from spine.report.gather import gather

    return gather(_cfg(tiny_runs[1], worst=2))


@pytest.fixture(scope="module")
def grading_page(tiny_runs, tmp_path_factory):
    """report.html of the tiny grading run written by the command line, and what it printed."""
    import contextlib
    import io

    from spine.report.__main__ import main

    out = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([f"run={tiny_runs[1]}", f"out={out}", "worst=2"]) == 0
    return out / "report.html", printed.getvalue()


# ----------------------------------------------------------------------------------------------- numbers
def test_metrics_per_fold_with_prior_oracle_and_gap(grading_report, tiny_runs, tiny_dataset):
    from spine.baselines import class_prior_submission
    from spine.synth.labels import oracle_submission

    run, labels, frame = tiny_runs[1], _labels(tiny_dataset), grading_report.metrics
    oof = pd.read_csv(run / "oof.csv", dtype={"row_id": str})
    recorded = json.loads((run / "metrics.json").read_text())
    folds = sorted(int(f) for f in oof.fold.unique())
    assert len(folds) == 2 and set(frame["what"]) == {"model", "prior", "oracle", "gap closed"}
    # the model: what training recorded, per fold and over all folds
    for fold in folds:
        assert _row(frame, fold, "model")["score"] == pytest.approx(recorded["folds"][f"fold{fold}"]["score"])
    for part in ("score", "spinal", "foraminal", "subarticular", "any_severe_spinal"):
        assert _row(frame, "all", "model")[part] == pytest.approx(recorded["oof"][part], nan_ok=True)
    # the prior of a fold: class priors of the labels outside it
    for fold in folds:
        ids = set(oof[oof.fold == fold].row_id.str.split("_").str[0].astype(int))
        inside, outside = labels[labels.study_id.isin(ids)], labels[~labels.study_id.isin(ids)]
        prior = class_prior_submission(outside, sorted(ids))
        assert _row(frame, fold, "prior")["score"] == pytest.approx(score(inside, prior)["score"])
    # the oracle: truth.csv narrowing with the generator's label noise, on the OOF rows
    truth = pd.read_csv(tiny_dataset / "truth.csv")
    sigma = json.loads((tiny_dataset / "dataset.json").read_text())["config"]["label_noise"]
    truth.index = truth.study_id.astype(str) + "_" + truth.condition + "_" + truth.level
    oracle = oracle_submission(truth.loc[list(oof.row_id)], sigma)  # optimal for the metric on the OOF rows
    assert list(oracle.row_id) == list(oof.row_id)
    studies = labels[labels.study_id.isin(oof.row_id.str.split("_").str[0].astype(int))]
    assert _row(frame, "all", "oracle")["score"] == pytest.approx(score(studies, oracle)["score"])
    # share of the prior-to-oracle gap closed
    m, p, o = (_row(frame, "all", w)["score"] for w in ("model", "prior", "oracle"))
    assert _row(frame, "all", "gap closed")["score"] == pytest.approx((p - m) / (p - o))
    assert o < p  # the oracle beats the prior


def test_test_row_scores_the_run_submission_on_the_synthetic_test_labels(grading_report, tiny_runs, tiny_dataset):
    from spine.io.tables import read_train_labels

    frame = grading_report.metrics
    test = frame[frame["fold"].astype(str).str.startswith("test")]
    assert set(test["what"]) == {"model", "prior", "oracle", "gap closed"}
    submission = pd.read_csv(tiny_runs[1] / "submission.csv", dtype={"row_id": str})
    truth = read_train_labels(tiny_dataset / "test_labels.csv")
    assert test[test.what == "model"].iloc[0]["score"] == pytest.approx(score(truth, submission)["score"])
    oracle = pd.read_csv(tiny_dataset / "oracle_submission.csv", dtype={"row_id": str})
    assert test[test.what == "oracle"].iloc[0]["score"] == pytest.approx(score(truth, oracle)["score"])


def test_calibration_before_and_after(grading_report, tiny_runs, tiny_dataset):
    from spine.run_folder import read_calibration

    run, labels = tiny_runs[1], _labels(tiny_dataset)
    oof = pd.read_csv(run / "oof.csv", dtype={"row_id": str})
    table = grading_report.calibration.set_index("what")
    before, in_sample, cross = table.iloc[0], table.iloc[1], table.iloc[2]
    assert before["score"] == pytest.approx(_row(grading_report.metrics, "all", "model")["score"])
    calibrated = read_calibration(run).apply(oof[["row_id", *PROB_COLUMNS]])
    studies = labels[labels.study_id.isin(oof.row_id.str.split("_").str[0].astype(int))]
    assert in_sample["score"] == pytest.approx(score(studies, calibrated)["score"])
    recorded = json.loads((run / "metrics.json").read_text())["oof"]
    assert cross["score"] == pytest.approx(recorded["calibrated/score"])  # training's own cross-fitted figure
    assert grading_report.calibration_params["temperature"]
    assert {"confusion", "reliability", "reliability_calibrated", "landmark_errors"} <= set(grading_report.figures)
    assert all(png.startswith(PNG) for png in grading_report.figures.values())


def test_landmark_errors_per_fold_and_level(grading_report, tiny_runs):
    recorded = json.loads((tiny_runs[0] / "metrics.json").read_text())["oof"]
    overall = grading_report.landmark_metrics.set_index("fold").loc["all"]
    for key in ("n_points", "median_mm", "p90_mm", "within_5mm", "level_acc"):
        assert overall[key] == pytest.approx(recorded[key], nan_ok=True)
    levels = grading_report.landmark_levels.set_index("level")
    assert levels["n"].sum() == recorded["n_points"]
    for level, row in levels.iterrows():
        if row["n"]:
            assert row["median_mm"] == pytest.approx(recorded[f"median_mm/{level}"])
            assert row["p90_mm"] == pytest.approx(recorded[f"p90_mm/{level}"])
    assert grading_report.landmark_groups["n"].sum() == recorded["n_points"]


def test_worst_studies_by_their_own_metric(grading_report, tiny_runs, tiny_dataset):
    from spine.report.scores import study_scores

    oof = pd.read_csv(tiny_runs[1] / "oof.csv", dtype={"row_id": str})
    ranked = study_scores(oof, _labels(tiny_dataset))
    pages = grading_report.worst
    assert [p.study_id for p in pages] == list(ranked.study_id[:2])
    assert pages[0].loss >= pages[1].loss
    one = oof[oof.row_id.str.startswith(f"{pages[0].study_id}_")][["row_id", *PROB_COLUMNS]]
    labels = _labels(tiny_dataset)
    assert pages[0].loss == pytest.approx(score(labels[labels.study_id == pages[0].study_id], one)["score"])
    for page in pages:
        assert len(page.grades) == 25 and set(page.grades.columns) >= {"true", *PROB_COLUMNS, "loss"}
        assert page.fold in (0, 1) and len(page.point_errors) > 0
        captions = list(page.figures)
        assert any(c.startswith("crops") for c in captions)  # the tiny grading run is a crop model
        assert any(c.startswith("predicted (x) against true (o)") for c in captions)
        assert all(png.startswith(PNG) for png in page.figures.values())
        assert not page.notes, page.notes


# ----------------------------------------------------------------------------------------------- the page
def test_the_page_has_every_section(grading_page):
    path, printed = grading_page
    assert printed.strip() == str(path.resolve())
    page = path.read_text()
    assert _sections(page) == list(SECTIONS)
    images = _images(page)
    assert len(images) >= 4 + 2 * 2 and all(i.startswith(PNG) for i in images)
    assert "<details>" in page and "stage:" in page  # the config, collapsible
    for text in ("gap closed", "oracle", "prior", "cross-fitted", "Per level", "study "):
        assert text in page, text
    assert 'src="http' not in page and "<script" not in page  # self-contained, nothing to run


def test_a_landmark_run_alone_gets_the_landmark_sections(tiny_runs, tmp_path, capsys):
    from spine.report.__main__ import main
    from spine.report.render import LANDMARK_SECTIONS

    assert main([f"run={tiny_runs[0]}", f"out={tmp_path}", "worst=3"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert _sections(page) == list(LANDMARK_SECTIONS)
    assert "mean point error" in page and len(_images(page)) >= 2
    assert capsys.readouterr().out.strip() == str((tmp_path / "report.html").resolve())


def test_without_an_oracle_the_metrics_say_so(tiny_runs, tiny_dataset, tmp_path):
    from spine.report.gather import gather
    from spine.report.render import render

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(tiny_dataset / "train.csv", data / "train.csv")  # real data: labels, no truth.csv
    report = gather(_cfg(tiny_runs[1], data_dir=data, worst=0))
    assert set(report.metrics["what"]) == {"model", "prior"}
    assert "truth.csv" in report.missing["metrics"] and "no oracle" in report.missing["metrics"]
    page = render(report)
    assert _sections(page) == list(SECTIONS) and "no oracle" in page


def test_without_landmark_run_cache_or_a_series_the_sections_say_what_is_missing(tiny_runs, tiny_cache_dir, tmp_path):
    from spine.cache import Cache
    from spine.report.gather import gather
    from spine.report.render import render

    report = gather(_cfg(tiny_runs[1], landmarks=tmp_path / "nowhere", cache_dir=tmp_path / "nocache", worst=1))
    assert "has no oof.csv" in report.missing["landmarks"] and "cache" in report.missing["cache"]
    assert report.metrics is not None and report.landmark_levels is None
    assert any("no model inputs" in n for n in report.worst[0].notes)
    page = render(report)
    assert _sections(page) == list(SECTIONS) and "has no oof.csv" in page and 'class="missing"' in page

    # a cache whose Axial T2 series could not be read: the views are drawn without it, and say so
    cache = Cache.open(tiny_cache_dir)
    copy = tmp_path / "cache" / cache.root.name
    shutil.copytree(cache.root, copy)
    series = pd.read_csv(copy / "series.csv", dtype=str, keep_default_na=False)
    series.loc[series.description == "Axial T2", "status"] = "error"
    series.to_csv(copy / "series.csv", index=False)
    report = gather(_cfg(tiny_runs[1], cache_dir=copy.parent, worst=1))
    notes = report.worst[0].notes
    assert any("no Axial T2 series" in n for n in notes), notes
    assert any(c.startswith("crops") for c in report.worst[0].figures)  # the other series still drawn
    assert "no Axial T2 series" in render(report)


def test_a_views_run_shows_the_views(tiny_runs, tmp_path):
    """The views the model reads (the demo's grading model), built from the run's stage.views: a copy of the tiny
    run whose config names a views model (the report reads files, not weights)."""
    from spine.report.gather import gather

    run = tmp_path / "views_run"
    shutil.copytree(tiny_runs[1], run, ignore=shutil.ignore_patterns("*.safetensors", "*.pt", "model.json"))
    config = (run / "config.yaml").read_text()
    assert "name: grading_3d_tiny" in config
    (run / "config.yaml").write_text(config.replace("name: grading_3d_tiny", "name: grading_views_tiny"))
    page = gather(_cfg(run, worst=1)).worst[0]
    assert not page.notes, page.notes
    assert any(c.startswith("views") for c in page.figures) and not any(c.startswith("crops") for c in page.figures)


def test_a_failing_figure_is_a_note_of_its_study():
    from spine.report.contents import StudyPage
    from spine.report.studies import guarded

    page = StudyPage(study_id=1, fold=0, loss=1.0)

    def broken(page, *args):
        raise RuntimeError("boom")

    guarded(broken, page)
    assert page.notes == ["broken failed: RuntimeError: boom"]


def test_oracle_and_gap_edge_cases(tmp_path):
    from spine.report.scores import _gap, oracle_predictions

    assert oracle_predictions(["1_spinal_canal_stenosis_l1_l2"], None)[0] is None
    frame, why = oracle_predictions(["1_spinal_canal_stenosis_l1_l2"], tmp_path)
    assert frame is None and "truth.csv" in why
    pd.DataFrame({"study_id": [1], "condition": ["spinal_canal_stenosis"], "level": ["l1_l2"], "narrowing": [0.9],
                  "true_grade": ["Severe"], "split": ["train"]}).to_csv(tmp_path / "truth.csv", index=False)
    (tmp_path / "dataset.json").write_text(json.dumps({"config": {"label_noise": 0.1}}))
    frame, why = oracle_predictions(["1_spinal_canal_stenosis_l1_l2"], tmp_path)
    assert why == "" and frame.severe.iloc[0] > 0.9 and frame[list(PROB_COLUMNS)].sum(axis=1).iloc[0] == pytest.approx(1)
    frame, why = oracle_predictions(["1_spinal_canal_stenosis_l2_l3"], tmp_path)
    assert frame is None and "lacks 1" in why
    assert _gap(1.0, 0.5, 0.0) == pytest.approx(0.5) and np.isnan(_gap(0.5, 0.4, 0.5))


def test_spine_report_command_line(tmp_path, capsys):
    from spine.report.__main__ import main

    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    for key in ("run", "out", "landmarks", "data_dir", "cache_dir", "worst", "dpi"):
        assert re.search(rf"^  {key}\s", usage, re.M), key
    assert main(["run=x", "wrost=3"]) == 2  # a typo
    assert main(["worst=3"]) == 2  # no run
    assert main([f"run={tmp_path}"]) == 1  # not a run folder
    assert "not a run folder" in capsys.readouterr().err


def test_spine_report_is_an_installed_command():
    import importlib.metadata

    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("spine-report") == "spine.report.__main__:main"


# ----------------------------------------------------------------------------------------------- the browser
_CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                 None)
needs_chromium = pytest.mark.skipif(_CHROMIUM is None, reason="no Chromium found (apt-get install chromium): the "
                                    "page is not loaded in a browser")
# Injected into a copy of the page: errors (script and resource) from the start, and at load every image that did
# not decode, written into the DOM that --dump-dom returns.
_HEAD_PROBE = ("<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push("
               "String(e.message||(e.target&&(e.target.src||e.target.href))||'error'))},true);</script>")
_BODY_PROBE = ("<script>window.addEventListener('load',function(){var imgs=Array.prototype.slice.call("
               "document.images);var broken=imgs.filter(function(i){return !i.complete||i.naturalWidth===0})"
               ".map(function(i){return (i.getAttribute('src')||'').slice(0,60)});var p=document.createElement('pre');"
               "p.id='probe';p.textContent=JSON.stringify({images:imgs.length,broken:broken,errors:window.__errors,"
               "sections:Array.prototype.map.call(document.querySelectorAll('section'),function(s){return s.id})});"
               "document.body.appendChild(p)});</script>")


def load_in_chromium(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """(what the probe found, the console lines Chromium logged) for ``page`` loaded headless."""
    text = page.read_text()
    copy = tmp_path / f"probe_{page.name}"
    copy.write_text(text.replace("<head>", "<head>" + _HEAD_PROBE, 1).replace("</body>", _BODY_PROBE + "</body>", 1))
    done = subprocess.run([_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=10000", "--dump-dom", copy.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading (rc {done.returncode}): {done.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(found.group(1))), console


@needs_chromium
def test_the_page_loads_in_chromium_without_errors_or_broken_images(grading_page, tmp_path):
    probe, console = load_in_chromium(grading_page[0], tmp_path)
    assert console == [] and probe["errors"] == []
    assert probe["broken"] == [] and probe["images"] == len(_images(grading_page[0].read_text())) >= 8
    assert probe["sections"] == list(SECTIONS)


@needs_chromium
def test_the_browser_check_catches_a_broken_image_and_a_script_error(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img src="data:image/png;base64,AAAA"><img src="missing.png"><script>notDefined();</script>'
                   "</body></html>")
    probe, console = load_in_chromium(bad, tmp_path)
    assert len(probe["broken"]) == 2 and probe["images"] == 2
    assert any("notDefined" in line for line in console) and probe["errors"]
