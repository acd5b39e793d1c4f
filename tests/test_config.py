"""Config composition: group choices, typed values, and one-line errors for typos."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from spine.cli import ConfigError, compose, to_yaml
from spine.constants import GROUPS
from spine.synth.config import SynthConfig


def test_group_choice_then_values_take_precedence():
    cfg = compose("synth", ["preset=tiny", "seed=7", "n_train=2", "sag_size=[96,128]"], SynthConfig)
    assert (cfg.preset, cfg.seed, cfg.n_train, cfg.sag_size) == ("tiny", 7, 2, [96, 128])
    assert compose("synth", [], SynthConfig).preset == "small"  # the default group choice


def test_schema_fields_absent_from_the_yaml_can_be_set():
    assert compose("synth", ["overwrite=true"], SynthConfig).overwrite is True


@pytest.mark.parametrize("override, message", [
    ("sedd=3", "sedd"),
    ("seed=abc", "seed"),
    ("preset=huge", "tiny"),  # lists the valid options
    ("seed", "key=value"),
])
def test_errors_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("synth", [override], SynthConfig)


# ------------------------------------------------------------------------------------------------ --help
def _main(module: str):
    import importlib

    return importlib.import_module(module).main


# (main, argv, a "group  options" text or None, a key with its default, a line of the description)
HELP_CASES = [
    ("spine.train.__main__", [], ("stage", "grading, landmarks*"), ("epochs", "30"), "Trains one stage"),
    ("spine.train.__main__", ["stage=grading"], ("model", "grading_3d"), ("stage.crop.size", "[64,64,64]"),
     "Trains one stage"),
    ("spine.predict.__main__", [], None, ("batch_size", "32"), "Grades every study"),
    ("spine.preprocess.__main__", [], None, ("max_gap_factor", "2.5"), "acquired"),
    ("spine.synth.__main__", [], ("preset", "realistic, small*, tiny"), ("n_train", "48"), "anatomy"),
    ("spine.synth.__main__", ["preset=tiny"], ("preset", "tiny"), ("n_train", "4"), "anatomy"),
    ("spine.synth.preview", [], None, ("study_id", "-1"), "PNG montage"),
    ("spine.kaggle.__main__", ["build"], None, ("wheels", "installed"), "two Kaggle datasets"),
    ("spine.kaggle.__main__", ["selftest"], None, ("timeout", "3600"), "headless"),
]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("module, argv, group, key, what", HELP_CASES)
def test_every_command_explains_itself(module, argv, group, key, what, flag, capsys):
    import re

    try:
        code = _main(module)([*argv, flag])
    except SystemExit as exc:  # compose_or_exit
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0 and not err, err
    assert out.startswith("usage: ") and what in out
    if group:
        assert re.search(rf"^  {re.escape(group[0])} +.*{re.escape(group[1])}", out, re.M), out
    name, default = key
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
    assert line.split()[1] == default, line
    key_lines = [ln for ln in out.split("keys (")[1].splitlines()[1:] if ln.startswith("  ")]
    keys = [ln.split()[0] for ln in key_lines]
    assert len(keys) == len(set(keys)) >= 3
    undescribed = [ln.split()[0] for ln in key_lines if not re.search(r"  # \S", ln)]
    assert not undescribed, f"keys without a description line: {undescribed}"  # one line each


def test_help_lines_come_from_the_schema_comments():
    from spine.cli import field_help, schema_keys
    from spine.preprocess.config import PreprocessConfig
    from spine.train.config import TrainConfig

    texts = field_help(TrainConfig)
    assert texts["batch_size"] == "per process"  # a trailing comment
    assert texts["landmarks"].startswith("grading: the landmark run")  # the comment lines above the field
    keys = {key: text for key, _, text in schema_keys(PreprocessConfig)}
    assert keys["workers"].startswith("processes")
    keys = {key: text for key, _, text in schema_keys(TrainConfig)}
    assert "optim.lr" in keys and "optim" not in keys  # nested dataclasses as dotted keys


def test_a_bare_word_still_is_an_error_that_points_to_help(capsys):
    from spine.synth.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["help-me"])
    assert exc.value.code == 2 and "--help" in capsys.readouterr().err


def test_benchmark_synth_realism_prints_its_usage_and_runs_small(tiny_dataset, tmp_path):
    """``--help`` is argparse's usage, not a run ending in a traceback; options and a dataset still work."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "synth_realism.py"
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: ") and not done.stderr, done.stderr
    assert "--studies" in done.stdout and "simulated studies: overall" not in done.stdout  # not run
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no dataset.json" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, str(script), "--studies", "20", str(tiny_dataset)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "label frequencies, 20 simulated studies" in done.stdout and "oracle" in done.stdout


# ------------------------------------------------------------------------------------------ experiment=rsna
def test_experiment_rsna_composes_for_both_stages():
    """One experiment name, a per-stage part each (_stage_experiment/rsna_<stage>.yaml); later overrides win."""
    from spine.train.config import load_config

    lm = load_config(["stage=landmarks", "experiment=rsna"])
    assert (lm.experiment, lm.model.name, lm.amp, lm.channels_last) == ("rsna", "landmark_25d", "bf16", True)
    assert lm.stage.grid.size == [32, 112, 128] and lm.model.args["min_stride"] == 2
    gr = load_config(["stage=grading", "experiment=rsna", "model.args.pretrained_file=/w/convnext_s.safetensors",
                      "epochs=12"])
    assert gr.model.name == "grading_views" and gr.model.args["backbone"] == "convnext_small"
    assert gr.model.args["pretrained_file"] == "/w/convnext_s.safetensors" and gr.epochs == 12
    assert 5 <= load_config(["stage=grading", "experiment=rsna"]).epochs <= 15
    views = [v for group in gr.stage.views.values() for v in group]
    assert len(views) == 6 and all(v["slices"] == 5 and 128 <= v["size"][0] <= 224 for v in views)
    assert load_config(["stage=grading"]).model.name == "grading_3d"  # no experiment: the stage's own default
    assert load_config(["stage=grading", "experiment=grading_cpu"]).model.name == "grading_views_medium"


def test_experiment_rsna_help_lists_its_keys(capsys):
    assert _main("spine.train.__main__")(["stage=grading", "experiment=rsna", "--help"]) == 0
    out = capsys.readouterr().out
    assert "rsna" in out and "convnext_small" in out and "_stage_experiment" not in out.split("keys")[0]


def test_view_size_and_named_views_change_views_in_one_line():
    """stage.view_size resizes every view; a named view's key changes that view only; null drops it."""
    from spine.data.views import ViewSet
    from spine.train.config import load_config

    views = ViewSet.from_config(load_config(["stage=grading", "stage.view_size=[5,64,48]"]).stage.views)
    assert views.shape == (5, 64, 48) and views.num_views == 2
    cfg = load_config(["stage=grading", "stage.views.spinal.axial_t2.mm=[48,48]"])
    assert [v["mm"] for v in cfg.stage.views["spinal"]] == [[40.0, 40.0], [48.0, 48.0]]
    assert [v["plane"] for v in cfg.stage.views["subarticular"]] == ["axial", "sagittal"]  # the schema's order
    one = load_config(["stage=grading", *(f"stage.views.{g}.axial_t2=null" for g in GROUPS)]).stage.views
    assert all(len(v) == 1 and v[0]["plane"] == "sagittal" for v in one.values())


def test_run_config_with_view_lists_still_loads(tmp_path):
    """A run folder written before named views stores {group: [view, ...]} with each view's size: read as before."""
    from spine.data.views import ViewSet
    from spine.run_folder import load_run_config
    from spine.train.config import load_config

    old = {"series": "Axial T2", "plane": "axial", "centre": "spinal", "size": [128, 128], "mm": [40.0, 40.0],
           "slices": 5, "slice_mm": 3.0}
    stage = {"name": "grading", "views": {g: [old, dict(old, plane="sagittal")] for g in GROUPS}}
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml({"model": {"name": "grading_views"}, "stage": stage}))
    cfg = load_run_config(tmp_path)
    assert cfg.stage.views == stage["views"]
    assert ViewSet.from_config(cfg.stage.views).shape == (5, 128, 128)
    new = load_config(["stage=grading", "experiment=rsna"])
    (tmp_path / "config.yaml").write_text(to_yaml(new))  # what spine-train writes now reads back the same
    assert ViewSet.from_config(load_run_config(tmp_path).stage.views) == ViewSet.from_config(new.stage.views)


def test_a_users_own_experiment_is_found_in_configs_without_editing_the_package(tmp_path, monkeypatch):
    """./configs/<command>/ (or $SPINE_CONFIGS/<command>/) is searched too: a new experiment file there is an
    option of its group, in the help as well; a file with the name of one of the package's is refused."""
    from spine.cli import ConfigError, config_groups
    from spine.train.config import load_config

    folder = tmp_path / "configs" / "train" / "experiment"
    folder.mkdir(parents=True)
    (folder / "my_run.yaml").write_text("# @package _global_\nepochs: 3\nstage:\n  sigma_mm: 7.5\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["stage=landmarks", "experiment=my_run"])
    assert cfg.epochs == 3 and cfg.stage.sigma_mm == 7.5
    assert "my_run" in config_groups("train")["experiment"][0]
    monkeypatch.setenv("SPINE_CONFIGS", str(tmp_path / "elsewhere"))  # another root: not found there
    with pytest.raises(ConfigError, match="my_run"):
        load_config(["stage=landmarks", "experiment=my_run"])
    monkeypatch.delenv("SPINE_CONFIGS")
    (folder / "smoke.yaml").write_text("# @package _global_\nepochs: 9\n")  # the package has experiment/smoke.yaml
    with pytest.raises(ConfigError, match="smoke.yaml has the name of spine's own"):
        load_config(["stage=landmarks", "experiment=my_run"])
