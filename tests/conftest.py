"""Shared fixtures: synthetic datasets are generated once per test session, in temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from spine.config import compose
from spine.synth.config import SynthConfig


def make_synth(out_dir: Path, *overrides: str) -> Path:
    """Generate a synthetic dataset (tiny preset unless overridden) into ``out_dir``."""
    from spine.synth.generate import generate

    cfg = compose("synth", ["preset=tiny", f"out_dir={out_dir}", *overrides], SynthConfig)
    return generate(cfg)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The tiny preset, seed 0: 4 train + 2 test studies. Treat as read-only."""
    return make_synth(tmp_path_factory.mktemp("tiny"), "seed=0")


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory, tiny_dataset: Path) -> Path:
    """The tiny dataset preprocessed once per test session, with 2 folds so that every fold has studies."""
    from spine.preprocess.config import PreprocessConfig
    from spine.preprocess.run import run

    root = tmp_path_factory.mktemp("tiny_cache")
    cfg = compose("preprocess", [f"data_dir={tiny_dataset}", f"cache_dir={root}", "split=all", "workers=1",
                                 "progress=false", "n_folds=2"], PreprocessConfig)
    assert run(cfg).exit_code == 0
    return root
