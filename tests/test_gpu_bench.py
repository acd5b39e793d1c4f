"""benchmarks/gpu.py in --tiny mode on CPU: the JSON and the markdown table are written with every part, CPU
numbers where CPU can measure, and 'skipped: no CUDA' (never a number) where it cannot."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, tiny_dataset, tiny_cache_dir, *extra) -> tuple[dict, str]:
    out = tmp_path / "gpu"
    argv = ["--tiny", "--out", str(out), "--work", str(tmp_path / "work"), "--device", "cpu", "--steps", "2",
            "--warmup", "1", "--loader-batches", "2", "--data", str(tiny_dataset), "--cache", str(tiny_cache_dir),
            "--tiny-data", str(tiny_dataset), "--tiny-cache", str(tiny_cache_dir), *extra]
    assert _bench().main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["gpu.json", "gpu.md"]  # runs, submission: in --work
    return json.loads((out / "gpu.json").read_text()), (out / "gpu.md").read_text()


def test_tiny_mode_writes_every_part(tmp_path, tiny_dataset, tiny_cache_dir, tiny_runs):
    landmarks, grading = tiny_runs
    report, table = _run(tmp_path, tiny_dataset, tiny_cache_dir, "--skip", "compile,torchrun", "--models",
                         "landmark_25d_tiny,grading_views_tiny",
                         "--runs", str(landmarks), str(grading))
    assert set(report) == {"meta", "models", "loader", "torchrun", "predict", "projection", "targets"}
    assert report["meta"]["tiny"] and report["meta"]["cores"] >= 1 and report["meta"]["elapsed_s"] > 0
    assert report["meta"]["complete"] and report["meta"]["written_after"] == "all"
    assert (tmp_path / "work" / "submission.csv").is_file()  # spine-predict wrote into --work
    models = report["models"]
    measured = {m["model"] for m in models}
    assert {"landmark_25d_tiny", "grading_views_tiny"} <= measured  # the models torchrun would train
    ok = [m for m in models if m["status"] == "ok"]
    for row in ok:
        assert row["samples_per_s"] > 0 and row["step_s"] > 0 and row["params_m"] > 0
        assert row["peak_mem_gb"] is None and row["peak_mem"] == "skipped: no CUDA"  # no fake memory on CPU
    fp32 = [m for m in ok if m["precision"] == "fp32" and m["batch_kind"] == "24gb"]
    assert {m["model"] for m in fp32} == measured  # every model has its fp32 number
    assert any(m["precision"] == "bf16" for m in ok)  # autocast bf16 ran on CPU
    kinds = {(m["precision"], m["channels_last"], m["compile"], m["batch_kind"]) for m in models
             if m["model"] == "landmark_25d_tiny"}
    assert len(kinds) == 3 * 2 * 2 * 2  # precisions x channels-last x compile x (24 GB, fill) batches
    if not torch.cuda.is_available():
        assert all(m["status"] == "skipped: no CUDA" for m in models if m["batch_kind"] == "fill")
    assert all(m["status"] == "skipped: --skip compile" for m in models if m["compile"]
               and m["batch_kind"] == "24gb")
    assert [r["status"] for r in report["torchrun"]] == ["skipped: --skip torchrun"] * 2
    for row in report["loader"]:
        assert row["status"] == "ok" and row["samples_per_s"] > 0 and row["workers"] >= 1
    assert report["predict"]["status"] == "ok" and 0 < report["predict"]["seconds_per_study"] < 600
    for row in report["projection"]:
        assert row["status"] == "ok" and row["bound"] in ("loader", "model")
        assert row["five_fold_h"] == pytest.approx(5 * row["fold_h"]) and row["epoch_s"] > 0
    assert {t["target"] for t in report["targets"]} >= {"spine-predict <= 10 s per study"}
    for heading in ("## Training step", "## Loader", "## torchrun", "## spine-predict", "## Projection",
                    "## Targets"):
        assert heading in table
    assert "| landmark_25d_tiny |" in table and "skipped: no CUDA" in table


def test_partial_report_says_so():
    """The reports are written after each part: one left by a run that stopped early says where it stopped."""
    meta = {"device_name": "x86_64", "torch": "2", "cuda": None, "cores": 1, "tiny": True, "elapsed_s": 1.0,
            "budget_s": 2.0, "complete": False, "written_after": "torchrun"}
    table = _bench().markdown({"meta": meta, "models": [], "loader": [], "torchrun": [],
                               "predict": {"status": "not reached"}, "projection": [], "targets": []})
    assert "(written after the torchrun part: the run did not finish)" in table


def test_skip_names_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        _bench().parse_args(["--out", str(tmp_path), "--skip", "modles"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPINE_SLOW"), reason="a few minutes (torch.compile, two torchrun runs); "
                    "set SPINE_SLOW=1")
def test_tiny_mode_with_compile_and_torchrun(tmp_path, tiny_dataset, tiny_cache_dir):
    report, _ = _run(tmp_path, tiny_dataset, tiny_cache_dir, "--models", "landmark_25d_tiny,grading_views_tiny")
    for row in report["torchrun"]:
        assert row["status"] == "ok", row
        assert row["world_size"] == 1 and row["backend"] == ("nccl" if torch.cuda.is_available() else "gloo")
    assert report["predict"]["status"] == "ok"
    compiled = [m for m in report["models"] if m["compile"] and m["batch_kind"] == "24gb"]
    assert any(m["status"] == "ok" and m["samples_per_s"] > 0 for m in compiled)
