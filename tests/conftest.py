"""Shared fixtures: synthetic datasets are generated once per test session, in temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from spine.cli import compose
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


@pytest.fixture(scope="session")
def tiny_runs(tiny_cache_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(landmark run, grading run) on the tiny cache, fold=all, one step per epoch: for inference and
    packaging tests (what a run folder holds, not how good it is)."""
    from spine.train.__main__ import main as train

    root = tmp_path_factory.mktemp("tiny_runs")
    landmarks, grading = root / "landmarks", root / "grading"
    common = [f"cache_dir={tiny_cache_dir}", "fold=all", "epochs=1", "batch_size=2", "num_workers=0",
              "max_steps_per_epoch=1", "progress=false", "tensorboard=false"]
    assert train(["stage=landmarks", "model=landmark_25d_tiny", "stage.grid.size=[8,32,32]",
                  "stage.grid.spacing_mm=[10,10,10]", "stage.plot_studies=0", f"run_dir={landmarks}", *common]) == 0
    assert train(["stage=grading", "model=grading_3d_tiny", f"landmarks={landmarks}", "stage.crop.size=[16,16,16]",
                  f"run_dir={grading}", *common]) == 0
    return landmarks, grading
