"""One default per setting: the YAML under ``spine/configs`` holds group choices and differences only.

Every default lives in a dataclass schema (``spine/*/config.py``, ``spine/run_config.py``); a YAML file that
restates one makes two places to edit (nanoGPT's override files hold only what differs). What counts as
restating, per file (each leaf key of the file, ``defaults:`` lists aside):

- a command's primary config ``<command>/<command>.yaml``: a value equal to its schema's default;
- a group option (``synth/preset/*.yaml``, ``train/stage/<stage>.yaml``, ``train/model/*.yaml``): a value equal to
  the default of the schema it lands in (SynthConfig, the stage's schema in ``STAGES``, ModelConfig);
- an experiment (``train/experiment/*.yaml``): a value equal to the one its base already has, for every stage it
  composes with and every model of that stage (``model=...`` on the command line comes before the experiment);
  the base is ``spine-train stage=<stage> model=<model>``;
- a per-stage experiment part (``train/_stage_experiment/<experiment>_<stage>.yaml``): a value equal to the one of
  ``stage=<stage> model=<model>`` with the experiment's own file applied, for every model of the stage (so
  ``model.name: landmark_25d`` in ``rsna_landmarks.yaml`` is not restating: it replaces ``model=landmark_3d``).

Not counted: the key that names the option itself (``name:`` of a stage or model, ``preset:`` of a preset,
``experiment:`` of an experiment, equal to the file's name), and values that are interpolations (``${...}``).
A model's ``args`` are checked against the config only, not against the model function's keyword defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from spine.cli import CONFIG_DIR, ConfigError

IDENTITY = {"stage": "name", "model": "name", "preset": "preset", "experiment": "experiment"}


def _schemas() -> dict[str, type]:
    from spine.doctor.config import DoctorConfig
    from spine.kaggle.config import BuildConfig, SelftestConfig
    from spine.predict.config import PredictConfig
    from spine.preprocess.config import PreprocessConfig
    from spine.report.config import ReportConfig
    from spine.run_config import TrainConfig
    from spine.synth.config import SynthConfig
    from spine.synth.preview import PreviewConfig

    return {"doctor": DoctorConfig, "kaggle_build": BuildConfig, "kaggle_selftest": SelftestConfig,
            "predict": PredictConfig, "preprocess": PreprocessConfig, "report": ReportConfig, "train": TrainConfig,
            "synth": SynthConfig, "preview": PreviewConfig}


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: value}`` of the leaves of a nested dict (lists and empty dicts are leaves)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _lookup(tree: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _plain(obj: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


def _load(path: Path) -> dict:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    raw.pop("defaults", None)
    return raw


def _models(stage: str) -> list[str]:
    """The model options of a stage: landmark_* for landmarks, grading_* for grading."""
    prefix = "landmark" if stage == "landmarks" else stage
    return sorted(p.stem for p in (CONFIG_DIR / "train" / "model").glob(f"{prefix}*.yaml"))


def _train_base(stage: str, model: str | None, extra: dict | None = None) -> dict | None:
    """The validated ``spine-train stage=<stage> [model=<model>]`` config (plus ``extra`` merged), or None."""
    from spine.train.config import load_config

    try:
        base = _plain(load_config([f"stage={stage}", *([f"model={model}"] if model else [])]))
    except ConfigError:
        return None
    return OmegaConf.to_container(OmegaConf.merge(base, extra)) if extra else base


def _restated(keys: dict[str, Any], bases: list[dict], identity: tuple[str, str] | None = None) -> list[str]:
    out = []
    for key, value in keys.items():
        if identity and key == identity[0] and value == identity[1]:
            continue
        if isinstance(value, str) and "${" in value:
            continue
        if bases and all(_lookup(base, key) == (True, value) for base in bases):
            out.append(key)
    return out


def restated_keys(path: Path) -> list[str]:
    """The keys of one YAML file under ``spine/configs`` that restate a default (module docstring)."""
    from spine.run_config import STAGES, ModelConfig

    rel = path.relative_to(CONFIG_DIR)
    keys = _leaves(_load(path))
    keys.pop("", None)  # an empty file
    command, group = rel.parts[0], rel.parts[1] if len(rel.parts) > 2 else None
    if group is None:
        return _restated(keys, [_plain(_schemas()[command])])
    if group == "preset":
        return _restated(keys, [_plain(_schemas()[command])], ("preset", path.stem))
    if group == "stage":
        return _restated(keys, [_plain(STAGES[path.stem][0])], ("name", path.stem))
    if group == "model":
        return _restated(keys, [_plain(ModelConfig)], ("name", path.stem))
    if group == "experiment":
        bases = [b for s in STAGES if _composes(s, path.stem) for m in _models(s)
                 if (b := _train_base(s, m)) is not None]
        return _restated(keys, bases, ("experiment", path.stem))
    if group == "_stage_experiment":
        experiment, stage = path.stem.rsplit("_", 1)
        own = CONFIG_DIR / command / "experiment" / f"{experiment}.yaml"
        bases = [b for m in _models(stage) if (b := _train_base(stage, m, _load(own))) is not None]
        return _restated(keys, bases)
    raise AssertionError(f"{rel}: no rule for the group {group!r} (add one to restated_keys)")


def _composes(stage: str, experiment: str) -> bool:
    from spine.train.config import load_config

    try:
        load_config([f"stage={stage}", f"experiment={experiment}"])
    except ConfigError:
        return False
    return True


YAML_FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_yaml_restates_no_default(path):
    assert restated_keys(path) == [], f"{path.relative_to(CONFIG_DIR)} restates the defaults of these keys; " \
                                      "drop them (the schema holds every default)"


def test_the_check_finds_a_restated_default(tmp_path, monkeypatch):
    """The rule itself: a primary config and a stage option that restate a default are caught."""
    import spine.cli

    (tmp_path / "predict").mkdir(parents=True)
    (tmp_path / "predict" / "predict.yaml").write_text("amp: bf16\nbatch_size: 7\n")
    (tmp_path / "train" / "stage").mkdir(parents=True)
    (tmp_path / "train" / "stage" / "landmarks.yaml").write_text("name: landmarks\nsigma_mm: 8.0\ndecode: local\n")
    monkeypatch.setattr(spine.cli, "CONFIG_DIR", tmp_path)
    monkeypatch.setitem(globals(), "CONFIG_DIR", tmp_path)
    assert restated_keys(tmp_path / "predict" / "predict.yaml") == ["amp"]
    assert restated_keys(tmp_path / "train" / "stage" / "landmarks.yaml") == ["sigma_mm"]


if __name__ == "__main__":  # counts per file: python tests/test_config_defaults.py
    for p in YAML_FILES:
        found = restated_keys(p)
        print(f"{len(found):3d}/{len(_leaves(_load(p))) - ('' in _leaves(_load(p)))}  {p.relative_to(CONFIG_DIR)}  "
              f"{' '.join(found)}")
