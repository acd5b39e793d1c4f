"""The command-line boundary (issue 20, "Command lines"): every bad override is one line on stderr and exit code 2.

Each case calls a command's ``main([...])`` in this process and reads stderr; nothing is trained or generated:
a refusal comes from composing the config, before any data is read (the data folders given do not exist, so a
command that went on would end differently).
"""

from __future__ import annotations

import importlib

import pytest

# (module of the main, arguments before the overrides, an integer key of its schema)
COMMANDS = {
    "spine-train": ("spine.train.__main__", [], "epochs"),
    "spine-predict": ("spine.predict.__main__", [], "batch_size"),
    "preprocess": ("spine.preprocess.__main__", [], "workers"),
    "synth": ("spine.synth.__main__", [], "seed"),
    "preview": ("spine.synth.preview", [], "study_id"),
    "spine-doctor": ("spine.doctor.__main__", [], "seed"),
    "spine-report": ("spine.report.__main__", [], "worst"),
    "kaggle-build": ("spine.kaggle.__main__", ["build"], "threads"),
    "kaggle-selftest": ("spine.kaggle.__main__", ["selftest"], "timeout"),
}


def _run(command: str, overrides: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of ``command`` with ``overrides`` (SystemExit of compose_or_exit included)."""
    module, first, _ = COMMANDS[command]
    main = importlib.import_module(module).main
    try:
        code = main([*first, *overrides])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def _refused(command: str, overrides: list[str], capsys, *names: str) -> str:
    """Assert exit code 2 and one stderr line, a config error naming each of ``names``; returns the line."""
    code, lines = _run(command, overrides, capsys)
    assert code == 2 and len(lines) == 1, (code, lines)
    assert "config error" in lines[0] and all(name in lines[0] for name in names), lines[0]
    return lines[0]


# ------------------------------------------------------------------ 1. values that are not YAML, wrong types
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("override", ["epochs=[1,", "runs=[a,b", "x={a:1", "x=@a"])
def test_a_value_that_is_not_yaml_is_one_line(command, override, capsys):
    line = _refused(command, [override], capsys, repr(override))
    assert "not valid YAML" in line


@pytest.mark.parametrize("command, override", [("spine-train", "stage=[a"), ("spine-train", "model=[x"),
                                               ("synth", "preset=[a")])
def test_a_group_choice_that_is_not_hydra_grammar_is_one_line(command, override, capsys):
    _refused(command, [override], capsys, repr(override))


@pytest.mark.parametrize("command", COMMANDS)
def test_wrong_type_missing_equals_empty_value_and_missing_key(command, capsys):
    key = COMMANDS[command][2]
    _refused(command, [f"{key}=abc"], capsys, key, "'abc'")  # not an integer
    _refused(command, [f"{key}=1.5"], capsys, key, "1.5")
    _refused(command, [f"{key}="], capsys, key)  # empty: not an integer either
    _refused(command, [key], capsys, repr(key), "key=value")
    _refused(command, ["=3"], capsys, "'=3'", "no key")


@pytest.mark.parametrize("command, key", [("spine-predict", "runs"), ("kaggle-build", "runs"),
                                          ("spine-doctor", "checks"), ("synth", "noise")])
def test_a_scalar_for_a_list_says_how_to_write_a_list(command, key, capsys):
    line = _refused(command, [f"{key}=a"], capsys, key)
    assert f"{key}=[a,b]" in line


def test_an_empty_value_is_null_where_allowed_else_the_empty_string():
    from spine.train.config import load_config

    cfg = load_config(["landmarks=", "model.weights="])
    assert cfg.landmarks == "" and cfg.model.weights is None


# ------------------------------------------------------------------------------------------------ 2. device
DEVICE_COMMANDS = {"spine-train": "cache_dir", "spine-predict": "data_dir", "spine-doctor": "cache_dir"}


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
@pytest.mark.parametrize("device", ["tpu", "cuda:99", "gpu0", "cuda:x"])
def test_a_device_that_is_not_there_is_refused_before_any_data_is_read(command, device, tmp_path, capsys):
    missing = f"{DEVICE_COMMANDS[command]}={tmp_path / 'nothing'}"  # read first, it would end with exit 1
    _refused(command, [missing, f"device={device}"], capsys, "device", device)


@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_cuda_without_cuda_is_refused(command, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    missing = f"{DEVICE_COMMANDS[command]}={tmp_path / 'nothing'}"
    line = _refused(command, [missing, "device=cuda"], capsys, "device=cuda", "CUDA is not available")
    assert "device=cpu" in line


def test_the_one_device_check():
    from spine.cli import ConfigError
    from spine.device import check_device, resolve_device

    assert check_device("auto") == "auto" and check_device("cpu") == "cpu"
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="tpu"):
        check_device("tpu")


# ------------------------------------------------------------------------------------------- 3. synth sizes
@pytest.mark.parametrize("overrides, key", [
    (["n_train=0", "n_test=0"], "n_train"),
    (["n_train=-1"], "n_train"),
    (["n_train=0", "n_test=5"], "n_train"),
    (["n_test=-1"], "n_test"),
    (["seed=-1"], "seed"),
    (["workers=-3"], "workers"),
    (["stir_rate=1.5"], "stir_rate"),
    (["missing_tag_rate=-0.1"], "missing_tag_rate"),
    (["extra_series_rates=[0.7,0.5]"], "extra_series_rates"),
    (["sag_size=[8,8]"], "sag_size"),
    (["sag_slices=[0,10]"], "sag_slices"),
    (["ax_fov_mm=[0,10]"], "ax_fov_mm"),
    (["noise=[0.05,0.01]"], "noise"),
    (["label_noise=-0.1"], "label_noise"),
    (["click_noise_mm=-1"], "click_noise_mm"),
])
def test_synth_refuses_sizes_and_rates_that_make_no_sense(overrides, key, tmp_path, capsys):
    out = tmp_path / "synth"
    _refused("synth", [f"out_dir={out}", "preset=tiny", *overrides], capsys, key)
    assert not out.exists()  # nothing written


def test_the_shipped_presets_pass_the_checks():
    from spine.cli import compose, config_groups
    from spine.synth.config import SynthConfig
    from spine.train.config import load_config

    for preset in config_groups("synth")["preset"][0]:
        assert compose("synth", [f"preset={preset}"], SynthConfig).n_train >= 1
    for stage in ("landmarks", "grading"):
        assert load_config([f"stage={stage}"]).stage.name == stage


# ------------------------------------------------------------------- 4. the other schemas' numeric keys
@pytest.mark.parametrize("command, overrides, key", [
    ("spine-train", ["epochs=-1"], "epochs"),
    ("spine-train", ["batch_size=0"], "batch_size"),
    ("spine-train", ["num_workers=-3"], "num_workers"),
    ("spine-train", ["ema=1"], "ema"),
    ("spine-train", ["optim.lr=0"], "optim.lr"),
    ("spine-train", ["optim.weight_decay=-0.1"], "optim.weight_decay"),
    ("spine-train", ["optim.betas=[0.9,1.5]"], "optim.betas"),
    ("spine-train", ["optim.betas=[0.9]"], "optim.betas"),
    ("spine-train", ["optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
    ("spine-train", ["optim.warmup_epochs=-1"], "optim.warmup_epochs"),
    ("spine-train", ["stage.percentiles=[1,200]"], "stage.percentiles"),
    ("spine-train", ["stage.sigma_mm=0"], "stage.sigma_mm"),
    ("spine-train", ["stage.plot_studies=-1"], "stage.plot_studies"),
    ("spine-train", ["stage.augment.flip_lr=1.5"], "stage.augment.flip_lr"),
    ("spine-train", ["stage.augment.scale=1"], "stage.augment.scale"),
    ("spine-train", ["stage.augment.rotate_deg=[1,2]"], "stage.augment.rotate_deg"),
    ("spine-train", ["stage.augment.noise_std=-1"], "stage.augment.noise_std"),
    ("spine-train", ["stage=grading", "stage.percentiles=[5,5]"], "stage.percentiles"),
    ("spine-train", ["stage=grading", "stage.focal_gamma=-1"], "stage.focal_gamma"),
    ("spine-train", ["stage=grading", "stage.augment.level_shift=-1"], "stage.augment.level_shift"),
    ("spine-train", ["stage=grading", "stage.augment.jitter_mm=-1"], "stage.augment.jitter_mm"),
    ("preprocess", ["fold_seed=-1"], "fold_seed"),
    ("preprocess", ["workers=-3"], "workers"),
    ("preprocess", ["n_folds=1"], "n_folds"),
    ("spine-predict", ["workers=-3"], "workers"),
    ("spine-predict", ["batch_size=0"], "batch_size"),
    ("spine-doctor", ["seed=-1"], "seed"),
    ("spine-doctor", ["max_missing_fraction=20"], "max_missing_fraction"),
    ("spine-doctor", ["min_headward_cos=2"], "min_headward_cos"),
    ("spine-doctor", ["learn_time_limit_s=0"], "learn_time_limit_s"),
    ("spine-doctor", ["learn_steps=0"], "learn_steps"),
])
def test_numbers_that_make_no_sense_are_refused(command, overrides, key, tmp_path, capsys):
    missing = {"spine-train": "cache_dir", "preprocess": "data_dir", "spine-predict": "data_dir",
               "spine-doctor": "cache_dir"}[command]
    _refused(command, [f"{missing}={tmp_path / 'nothing'}", *overrides], capsys, key)
