"""spine.data.inputs: what a grading model reads, declared by the model, built and described in one place."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spine.constants import CONDITIONS, LEVELS, SERIES_TYPES
from spine.data.inputs import INPUT_KINDS, CropInput, ViewInput, grading_input, input_kind
from spine.data.volume import SeriesVolume
from spine.models import create_model, list_models, model_inputs
from spine.train.config import load_config


def _points() -> np.ndarray:
    """(K, L, 3) points (LPS mm): every condition at its level, 30 mm apart along z, sides +-15 mm in x."""
    points = np.zeros((len(CONDITIONS), len(LEVELS), 3))
    for k, condition in enumerate(CONDITIONS):
        side = 15.0 if condition.startswith("left") else -15.0 if condition.startswith("right") else 0.0
        points[k, :, 0] = side
        points[k, :, 2] = 150.0 - 30.0 * np.arange(len(LEVELS))
    return points


def _volumes(series) -> dict:
    """A bright box around the spine (x, y in -60..60 mm, z 0..200 mm, 2 mm voxels) for every series."""
    array = np.random.default_rng(0).random((60, 60, 100)).astype(np.float32) * 100
    return {d: SeriesVolume.from_array(array, (-60.0, -60.0, 0.0), (2.0, 2.0, 2.0), description=d) for d in series}


def _stage(model: str, *overrides: str):
    return load_config(["stage=grading", f"model={model}", *overrides]).stage


def test_every_grading_model_declares_its_input_and_landmark_models_none():
    for name in list_models("grading_*"):
        assert model_inputs(name) == ("views" if name.startswith("grading_views") else "crops"), name
        assert input_kind(name) in INPUT_KINDS
    assert all(model_inputs(name) is None for name in list_models("landmark_*"))
    with pytest.raises(ValueError, match="declares no grading input"):
        input_kind("landmark_25d_tiny")


def test_crop_input_builds_levels_x_channels_x_grid_and_implies_the_crop_keywords():
    reader = grading_input("grading_3d_tiny", _stage("grading_3d_tiny", "stage.crop.size=[16,16,8]"))
    assert isinstance(reader, CropInput) and reader.kind == "crops" and reader.tta
    assert reader.series == list(SERIES_TYPES) and reader.item_shape == (3, 16, 16, 8)
    volumes = _volumes(reader.series[:2])  # the third series is missing: zeros, present False
    image, present = reader.build(volumes, _points())
    assert image.shape == (len(LEVELS), 3, 16, 16, 8) and image.dtype == np.float32
    assert present.tolist() == [True, True, False] and image[:, :2].any() and not image[:, 2].any()
    assert reader.model_kwargs() == {"in_chans": 3, "num_conditions": 5, "crop_size": [16, 16, 8]}
    assert reader.describe() == "crop 16x16x8" and len(reader.test_affines(True)) == 2
    assert reader.resized([8, 8, 8], (1, 4, 4)).item_shape == (3, 8, 8, 8)


def test_view_input_builds_levels_x_conditions_x_views_and_implies_the_view_keywords():
    reader = grading_input("grading_views_tiny", _stage("grading_views_tiny"))
    assert isinstance(reader, ViewInput) and reader.kind == "views" and not reader.tta
    s, h, w = reader.views.shape
    assert reader.item_shape == (len(CONDITIONS), reader.views.num_views, s, h, w)
    image, present = reader.build(_volumes(reader.series), _points())
    assert image.shape == (len(LEVELS), *reader.item_shape) and present.all()
    kwargs = reader.model_kwargs()
    assert kwargs["view_shape"] == [s, h, w] and kwargs["num_views"] == reader.views.num_views
    assert kwargs["num_present"] == len(reader.series) and len(kwargs["groups"]) == len(CONDITIONS)
    assert reader.describe() == f"views {s}x{h}x{w}" and reader.test_affines(True) == [None]
    assert reader.resized([8, 8, 8], (1, 8, 12)).item_shape[2:] == (1, 8, 12)


@pytest.mark.parametrize("name", ["grading_3d_tiny", "grading_views_tiny"])
def test_a_model_built_from_its_input_reads_what_the_input_builds(name):
    reader = grading_input(name, _stage(name, "stage.crop.size=[32,32,32]"))
    model = create_model(name, num_levels=len(LEVELS), num_classes=3, **reader.model_kwargs()).eval()
    image, present = reader.build(_volumes(reader.series), _points())
    args = reader.forward_args(torch.from_numpy(image)[None], torch.from_numpy(present)[None])
    with torch.no_grad():
        assert model(*args).shape == (len(LEVELS), len(CONDITIONS), 3)


def test_views_without_views_configured_name_the_model():
    with pytest.raises(ValueError, match="grading_views_tiny reads views"):
        grading_input("grading_views_tiny", dataclasses.replace(_stage("grading_views_tiny"), views={}))
