"""spine-doctor: every check passes on the tiny synthetic cache, and catches each planted failure.

Planted failures are made on a copy of the session's tiny cache (coordinates.csv edited, a stack rewritten with
`spine.cache.write_stack`) or handed to the pure functions as plain tables and arrays.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spine.cache import Cache
from spine.cli import compose
from spine.doctor.config import DoctorConfig
from spine.doctor.result import Context

TINY_TRAIN = ['model=landmark_25d_tiny', 'stage.grid.size=[8,32,32]', 'stage.grid.spacing_mm=[10,10,10]',
              'num_workers=0', 'batch_size=4']


def _quoted(overrides: list[str]) -> str:
    return "train=[" + ",".join(f'"{o}"' for o in overrides) + "]"


def make_ctx(cache_root, out: Path, *overrides: str) -> Context:
    cfg = compose("doctor", [f"cache_dir={cache_root}", f"out={out}", *overrides], DoctorConfig)
    return Context(cfg, Cache.open(cfg.cache_dir), Path(cfg.out))


def planted(tiny_cache_dir: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of the tiny cache; ``edit(coordinates) -> coordinates`` rewrites its coordinates.csv."""
    root = Cache.open(tiny_cache_dir).root
    dest = tmp_path / "cache" / root.name
    shutil.copytree(root, dest)
    if edit is not None:
        coords = pd.read_csv(dest / "coordinates.csv")
        edit(coords).to_csv(dest / "coordinates.csv", index=False)
    return dest


def first_study(coords: pd.DataFrame) -> int:
    return int(sorted(coords.study_id.unique())[0])


# ------------------------------------------------------------------------------------ clean tiny cache
@pytest.fixture(scope="module")
def clean_results(tiny_cache_dir, tmp_path_factory):
    from spine.doctor.run import run_check

    out = tmp_path_factory.mktemp("doctor_clean")
    ctx = make_ctx(tiny_cache_dir, out)
    names = ["label_positions", "level_order", "left_right", "input_fidelity", "slice_order", "labels"]
    return {name: run_check(name, ctx) for name in names}, out


@pytest.mark.parametrize("name", ["label_positions", "level_order", "left_right", "input_fidelity", "slice_order",
                                  "labels"])
def test_each_data_check_passes_on_the_tiny_cache(clean_results, name):
    results, _ = clean_results
    result = results[name]
    assert result.status == "pass", (result.line, result.details)
    assert result.line.startswith(f"PASS {name}: ")
    json.dumps(result.to_dict())  # everything it measured is JSON


def test_label_points_are_re_derived_from_dicom_and_drawn(clean_results):
    results, out = clean_results
    r = results["label_positions"]
    assert r.numbers["points"] == 100 and r.numbers["dicom_checked"] > 0 and r.numbers["max_error_mm"] < 1e-3
    # 3 series types x min(3, studies) studies, one PNG per series: DICOM slice | slice sampled from the cache
    assert len(r.figures) >= 3 and all(Path(f).is_file() and Path(f).parent == out for f in r.figures)
    kinds = {Path(f).name.split("_")[1] for f in r.figures}
    assert kinds == {"sagittal", "axial"}
    assert Path(results["labels"].figures[0]).is_file() and Path(results["input_fidelity"].figures[0]).is_file()


def test_slice_order_counts_reversed_instance_numbers_without_warning(clean_results):
    n = clean_results[0]["slice_order"].numbers
    assert n["series"] == 18 and n["same"] + n["reversed"] == 18 and n["shuffled"] == 0


# --------------------------------------------------------------------------------------- planted failures
def test_an_8_bit_volume_is_caught(tiny_cache_dir, tmp_path):
    from spine.cache import record_path, write_stack

    root = planted(tiny_cache_dir, tmp_path)
    cache = Cache.open(root)
    row = cache.series[cache.series.status == "ok"].iloc[0]
    study, series = int(row.study_id), int(row.series_id)
    volume, record = cache.load_volume(study, series), cache.record(study, series)
    for stack, entry in zip(volume.stacks, record["stacks"]):
        pixels = np.asarray(stack.pixels, dtype=np.float32)
        eight = np.round(255 * (pixels - pixels.min()) / (pixels.max() - pixels.min()))  # converted to 8 bits
        write_stack(dataclasses.replace(stack, pixels=eight.astype(np.int16)),
                    record_path(root, study, series).parent / entry["file"])
    from spine.doctor.fidelity import check_input_fidelity

    result = check_input_fidelity(make_ctx(root, tmp_path / "out"))
    assert result.status == "fail" and result.numbers["quantised"] == 1, result.line
    assert any(f"{study}/{series}" in line and "8-bit" in line for line in result.details), result.details


def test_swapped_x_y_is_caught(tiny_cache_dir, tmp_path):
    from spine.doctor.points import check_label_positions

    def swap(coords):
        sel = coords.study_id == first_study(coords)
        coords.loc[sel, ["x", "y"]] = coords.loc[sel, ["y", "x"]].to_numpy()
        return coords

    result = check_label_positions(make_ctx(planted(tiny_cache_dir, tmp_path, swap), tmp_path / "out",
                                            "image_studies=0"))
    assert result.status == "fail", result.line
    assert result.numbers["bad_points"] >= 20 and result.numbers["record_bad"] >= 20
    assert result.numbers["dicom_bad"] >= 20  # the DICOM files themselves say so too


def test_swapped_x_y_with_consistent_world_positions_breaks_the_level_order(tiny_cache_dir, tmp_path):
    """A loader that swaps x and y before computing world positions: the positions agree with the (wrong)
    pixels, but the levels no longer run along the spine."""
    from spine.doctor.points import level_order_problems
    from spine.preprocess.volume import InstanceGeometry

    cache = Cache.open(tiny_cache_dir)
    coords = cache.coordinates.copy()
    for index, row in coords.iterrows():
        record = cache.record(int(row.study_id), int(row.series_id))
        geometry = InstanceGeometry.from_list(record["instances"][str(int(row.instance_number))])
        coords.loc[index, ["world_x", "world_y", "world_z"]] = geometry.pixel_to_world(row.y, row.x)
    assert level_order_problems(cache.coordinates).empty
    bad = level_order_problems(coords)
    assert set(bad.study_id) == set(coords.study_id) and bad.problem.str.contains("head-ward").any()


def test_a_mirrored_study_is_caught(tiny_cache_dir, tmp_path):
    from spine.doctor.points import check_left_right

    def mirror(coords):
        sel = coords.study_id == first_study(coords)
        swapped = coords.loc[sel, "condition"].str.replace("Left", "@").str.replace("Right", "Left").str.replace("@", "Right")
        coords.loc[sel, "condition"] = swapped
        return coords

    root = planted(tiny_cache_dir, tmp_path, mirror)
    result = check_left_right(make_ctx(root, tmp_path / "out"))
    study = first_study(pd.read_csv(root / "coordinates.csv"))
    assert result.status == "fail" and result.numbers["bad_studies"] == [study], result.line
    assert len(result.numbers["bad_pairs"]) == 10  # 2 condition kinds x 5 levels
    # one mirrored study among many is a warning (real labels have such errors), listed by study
    loose = check_left_right(make_ctx(root, tmp_path / "out", "max_bad_study_fraction=0.5"))
    assert loose.status == "warn" and str(study) in loose.summary


def test_a_label_moved_to_the_wrong_instance_is_caught(tiny_cache_dir, tmp_path):
    from spine.doctor.points import check_label_positions

    moved = {}

    def move(coords):
        index = coords.index[0]
        numbers = Cache.open(tiny_cache_dir).record(int(coords.at[index, "study_id"]),
                                                    int(coords.at[index, "series_id"]))["instances"]
        other = next(int(n) for n in numbers if int(n) != int(coords.at[index, "instance_number"]))
        moved.update(study=int(coords.at[index, "study_id"]), instance=other)
        coords.at[index, "instance_number"] = other
        return coords

    result = check_label_positions(make_ctx(planted(tiny_cache_dir, tmp_path, move), tmp_path / "out",
                                            "image_studies=1"))
    assert result.status == "fail" and result.numbers["bad_points"] == 1, result.line
    assert result.numbers["record_bad"] == 1 and result.numbers["voxel_bad"] == 1  # its voxel is on another slice
    assert any(f"instance {moved['instance']}" in line for line in result.details), result.details


def test_levels_out_of_order_are_caught(tiny_cache_dir, tmp_path):
    from spine.doctor.points import check_level_order

    def exchange(coords):
        sel = (coords.study_id == first_study(coords)) & (coords.condition == "Spinal Canal Stenosis")
        coords.loc[sel, "level"] = coords.loc[sel, "level"].replace({"L1/L2": "L2/L3", "L2/L3": "L1/L2"})
        return coords

    root = planted(tiny_cache_dir, tmp_path, exchange)
    result = check_level_order(make_ctx(root, tmp_path / "out"))
    study = first_study(pd.read_csv(root / "coordinates.csv"))
    assert result.status == "fail" and result.numbers["bad_studies"] == [study], result.line
    assert any("L1/L2 is not head-ward of L2/L3" in line for line in result.details), result.details


def test_implausible_level_spacing_is_caught():
    from spine.doctor.points import level_order_problems

    rows = [{"study_id": 1, "series_id": 2, "condition": "Spinal Canal Stenosis", "level": name,
             "world_x": 0.0, "world_y": 0.0, "world_z": -5.0 * n} for n, name in enumerate(["L1/L2", "L2/L3", "L3/L4"])]
    bad = level_order_problems(pd.DataFrame(rows), spacing_mm=(15, 60))
    assert len(bad) == 2 and bad.problem.str.contains("5.0 mm per level").all()
    assert level_order_problems(pd.DataFrame(rows), spacing_mm=(4, 60)).empty


# ------------------------------------------------------------------------------------- pure functions
def test_volume_fidelity_flags_8_bit_coarse_steps_clipping_and_nan():
    from spine.doctor.fidelity import volume_fidelity

    rng = np.random.default_rng(0)
    mri = rng.gamma(2.0, 300.0, size=(8, 64, 64)).round().astype(np.int16)  # 12-bit-like, thousands of values
    assert volume_fidelity([mri])["problems"] == []
    eight = (mri.astype(float) / mri.max() * 255).round().astype(np.int16)
    assert "quantised" in volume_fidelity([eight])["problems"] and "8-bit" in volume_fidelity([eight])["why"]
    coarse = (mri // 16) * 16  # 12-bit container, 8 bits of information
    stats = volume_fidelity([coarse])
    assert stats["step"] == 16 and "quantised" in stats["problems"]
    clipped = np.minimum(mri, np.percentile(mri, 95)).astype(np.int16)
    assert volume_fidelity([clipped])["problems"] == ["clipped"]
    nan = mri.astype(np.float32)
    nan[0, 0, :3] = np.nan
    stats = volume_fidelity([nan])
    assert stats["nonfinite"] == 3 and stats["problems"] == ["nonfinite"]


def test_instance_order():
    from spine.doctor.fidelity import instance_order, series_order

    assert instance_order([1, 2, 3]) == "same" and instance_order([3, 2, 1]) == "reversed"
    assert instance_order([1, 3, 2]) == "shuffled" and instance_order([1, None]) == "missing"
    assert instance_order([5]) == "single" and series_order([[1, 2], [4, 3]]) == "reversed"
    assert series_order([[1, 2], [2, 1, 3]]) == "shuffled"


def test_label_summary_finds_missing_grades_points_wrong_series_and_fold_imbalance(tiny_cache_dir):
    from spine.doctor.labels import fold_balance_p, label_summary
    from spine.io.tables import read_train_labels

    cache = Cache.open(tiny_cache_dir)
    labels = read_train_labels(Path(cache.info["data_dir"]) / "train.csv")
    study = int(labels.study_id.iloc[0])
    labels.loc[0, "spinal_canal_stenosis_l1_l2"] = np.nan
    coords = cache.coordinates
    coords = coords[~((coords.study_id == study) & (coords.level == "L5/S1"))].copy()  # graded, no points
    series = cache.series.copy()
    sag_t1 = series[(series.study_id == study) & (series.description == "Sagittal T1")].index
    series.loc[sag_t1, "description"] = "Axial T2"  # foraminal points now lie on an axial series
    s = label_summary(labels, coords, cache.folds, series)
    assert s["missing_grades"] == [study] and s["missing_points"] == [study]
    assert len(s["wrong_series"]) == 8 and set(s["wrong_series"].study_id) == {study}  # 2 x 5 - 2 left out
    assert s["balance"].loc[("spinal_canal_stenosis", "l1_l2"), "missing"] == 1
    assert int(s["balance"].to_numpy().sum()) == 25 * len(labels)
    assert fold_balance_p(pd.DataFrame([[50, 0, 0], [0, 40, 10]])) < 1e-6
    assert fold_balance_p(pd.DataFrame([[50, 10, 5], [49, 11, 5]])) > 0.5


def test_judge_learning_and_throughput_advice():
    from spine.doctor.learn import judge_learning
    from spine.doctor.throughput import throughput_advice

    falling = [{"step": i, "loss": 2.0 * 0.97 ** i} for i in range(200)]
    flat = [{"step": i, "loss": 2.0 - 0.001 * i} for i in range(200)]
    assert judge_learning(falling, "loss", 1, 0.1, 0.5)["status"] == "pass"
    assert judge_learning(flat, "loss", 1, 0.1, 0.5)["status"] == "fail"
    assert judge_learning([{"loss": float("nan")}], "loss", 1, 0.1, 0.5)["status"] == "fail"
    status, summary, advice = throughput_advice(100.0, 50.0, 2, 8, "cuda")
    assert status == "pass" and advice == []
    status, summary, advice = throughput_advice(10.0, 50.0, 2, 16, "cuda")
    assert status == "warn" and "num_workers to about 12" in " ".join(advice)
    status, summary, advice = throughput_advice(1.0, 50.0, 2, 4, "cuda", "landmarks", 1024.0)
    assert status == "warn" and "stage.cache_mb" in " ".join(advice) and "crop cache" in " ".join(advice)


# ----------------------------------------------------------------------------------- training checks
@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than oversubscribed ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_tiny_model_learns_and_a_frozen_one_does_not(tiny_cache_dir, tmp_path, one_thread):
    from spine.doctor.learn import check_learn

    ctx = make_ctx(tiny_cache_dir, tmp_path, _quoted(TINY_TRAIN), "learn_steps=60", "learn_lr=0.01",
                   "learn_max_ratio=0.5", "learn_warn_ratio=0.8")
    result = check_learn(ctx)
    assert result.status == "pass", result.line
    n = result.numbers
    assert n["key"] == "dist_mm" and n["steps"] == 60 and n["final"] < 0.5 * n["initial"]
    assert len(n["studies"]) == 4 and Path(result.figures[0]).is_file()
    # a learning rate of ~0: the "model that refuses to train"
    frozen = check_learn(make_ctx(tiny_cache_dir, tmp_path, _quoted(TINY_TRAIN), "learn_steps=10",
                                  "learn_lr=1e-12"))
    assert frozen.status == "fail" and frozen.numbers["ratio"] > 0.9, frozen.line


def test_learn_on_the_grading_stage(tiny_cache_dir, tmp_path, one_thread):
    from spine.doctor.learn import check_learn

    ctx = make_ctx(tiny_cache_dir, tmp_path, "stage=grading",
                   _quoted(["model=grading_3d_tiny", "stage.crop.size=[16,16,16]", "num_workers=0"]),
                   "learn_steps=40", "learn_lr=0.01", "learn_max_ratio=0.5", "learn_warn_ratio=0.8")
    result = check_learn(ctx)
    assert result.numbers["key"] == "loss" and result.status == "pass", result.line


def test_learn_trains_the_config_of_a_run_folder(tiny_cache_dir, tmp_path, one_thread):
    from spine.cli import to_yaml
    from spine.doctor.learn import check_learn
    from spine.doctor.run import run_check
    from spine.train.config import load_config

    landmarks = tmp_path / "run"  # what the doctor reads of a run folder: its config.yaml
    landmarks.mkdir()
    (landmarks / "config.yaml").write_text(to_yaml(load_config(["stage=landmarks", *TINY_TRAIN, "batch_size=2",
                                                                "cache_dir=elsewhere"])))
    result = check_learn(make_ctx(tiny_cache_dir, tmp_path, f"run={landmarks}", 'train=["optim.lr=0.02"]',
                                  "learn_steps=20", "learn_warn_ratio=0.99", "learn_max_ratio=0.99"))
    n = result.numbers
    assert (n["model"], n["stage"], n["lr"], n["batch_size"], n["steps"]) == ("landmark_25d_tiny", "landmarks", 0.02,
                                                                                2, 20), result.line
    bad = run_check("learn", make_ctx(tiny_cache_dir, tmp_path, f"run={landmarks}", 'train=["optim.lrr=1"]'))
    assert bad.status == "fail" and "optim.lrr" in bad.summary


def test_throughput_measures_loader_and_model(tiny_cache_dir, tmp_path, one_thread):
    from spine.doctor.throughput import check_throughput

    result = check_throughput(make_ctx(tiny_cache_dir, tmp_path, _quoted(TINY_TRAIN), "throughput_batches=2",
                                       "throughput_steps=1", "device=cpu"))
    assert result.status in ("pass", "warn"), result.line
    n = result.numbers
    assert n["loader_items_per_s"] > 0 and n["model_items_per_s"] > 0 and n["num_workers"] == 0
    assert "items/s" in result.summary and n["device"] == "cpu"


# ---------------------------------------------------------------------------------------- the command
def test_spine_doctor_end_to_end(tiny_cache_dir, tmp_path, one_thread, capsys):
    from spine.doctor.__main__ import main

    out = tmp_path / "doctor"
    code = main([f"cache_dir={tiny_cache_dir}", f"out={out}", _quoted(TINY_TRAIN), "learn_steps=60",
                 "learn_lr=0.01", "learn_max_ratio=0.5", "learn_warn_ratio=0.8", "throughput_batches=2",
                 "throughput_steps=1", "image_studies=1", "device=cpu"])
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if not ln.startswith("    ")]
    assert code == 0, printed
    assert [ln.split(":")[0] for ln in lines] == [f"{s} {n}" for s, n in zip(
        ["PASS"] * 7, ["label_positions", "level_order", "left_right", "input_fidelity", "slice_order", "labels",
                       "learn"])] + [lines[-1].split(":")[0]]
    assert lines[-1].split()[0] in ("PASS", "WARN") and lines[-1].split()[1] == "throughput:"
    report = json.loads((out / "doctor.json").read_text())
    assert report["status"] in ("pass", "warn") and len(report["checks"]) == 8
    assert all(Path(f).is_file() for c in report["checks"] for f in c["figures"])


def test_spine_doctor_exits_1_on_a_failure_and_2_on_a_bad_key(tiny_cache_dir, tmp_path, capsys):
    from spine.doctor.__main__ import main

    def mirror(coords):
        coords["condition"] = coords.condition.str.replace("Left", "@").str.replace("Right", "Left").str.replace("@", "Right")
        return coords

    root = planted(tiny_cache_dir, tmp_path, mirror)
    assert main([f"cache_dir={root}", f"out={tmp_path / 'out'}", "checks=[left_right,slice_order]"]) == 1
    printed = capsys.readouterr().out
    assert "FAIL left_right: 4 of 4 studies" in printed and "PASS slice_order" in printed
    assert main([f"cache_dir={root}", "world_tol=1"]) == 2
    assert main([f"cache_dir={root}", "checks=[spleen]"]) == 2
    assert main([f"cache_dir={tmp_path / 'nowhere'}", f"out={tmp_path / 'out'}"]) == 1


def test_spine_doctor_explains_every_key(capsys):
    import re

    from spine.doctor.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spine-doctor") and "label_positions" in out
    key_lines = [ln for ln in out.split("keys (")[1].splitlines()[1:] if ln.startswith("  ")]
    assert len(key_lines) > 20 and all(re.search(r"  # \S", ln) for ln in key_lines), key_lines
