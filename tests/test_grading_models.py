"""Grading networks (registry, shapes, position-aware pooling, per-level heads) and the grading losses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spine.constants import CONDITIONS, LABEL_COLUMNS, LEVELS, PROB_COLUMNS, SEVERITIES, label_column, row_id
from spine.losses import grading_loss, grading_probabilities
from spine.metric import score
from spine.models import create_model, list_models
from spine.models.grading import ConditionQueryHead

TINY = ("grading_3d_tiny", "grading_25d_tiny", "grading_3d_small")
DEFAULT = ("grading_3d", "grading_25d")
VIEWS = ("grading_views_tiny", "grading_views_small", "grading_views_medium", "grading_views")  # read views: tests/test_views.py
CROP = (32, 32, 32)


def _inputs(n: int = 2, crop=CROP, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(n, 3, *crop, generator=gen)
    level = torch.arange(n) % len(LEVELS)
    present = torch.ones(n, 3)
    return image, level, present


def test_registry_lists_every_grading_model():
    assert set(TINY + DEFAULT + VIEWS) <= set(list_models("grading*"))
    assert set(list_models("grading*")) <= set(TINY + DEFAULT + VIEWS)  # a new model: add it to the tests


@pytest.mark.parametrize("name", TINY)
def test_small_models_forward_shape_finite_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, crop_size=CROP)
    image, level, present = _inputs()
    out = model(image, level, present)
    assert out.shape == (2, len(CONDITIONS), len(SEVERITIES)) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    target = torch.tensor([[0, 1, 2, -1, 0], [2, 2, 1, 0, -1]])
    loss = torch.nn.functional.cross_entropy(out.reshape(-1, 3), target.reshape(-1), ignore_index=-1)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for k, g in grads.items() if k.startswith("encoder."))  # reaches the encoder
    assert model.spine_name == name and model.spine_kwargs == {"crop_size": CROP}


@pytest.mark.parametrize("name", DEFAULT)
def test_default_models_forward(name):
    torch.manual_seed(0)
    model = create_model(name, crop_size=CROP).eval()
    image, level, present = _inputs()
    with torch.no_grad():
        out = model(image, level, present)
    assert out.shape == (2, 5, 3) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,crop", [("grading_3d_tiny", (24, 24, 24)), ("grading_3d_tiny", (16, 48, 32)),
                                       ("grading_25d_tiny", (24, 24, 24)), ("grading_25d_tiny", (16, 32, 48))])
def test_crop_size_sets_the_token_grid(name, crop):
    model = create_model(name, crop_size=crop).eval()
    image, level, present = _inputs(3, crop)
    with torch.no_grad():
        out = model(image, level, present)
        no_flags = model(image, level)  # present=None means every series present
    assert out.shape == (3, 5, 3) and torch.isfinite(out).all()
    assert torch.allclose(out, no_flags)
    if name.startswith("grading_25d"):
        assert model.head.grid == (crop[0] // 4,)
    else:
        assert len(model.head.grid) == 3


def test_25d_rejects_a_crop_not_split_into_whole_slabs():
    with pytest.raises(ValueError, match="multiple of slices_per_token"):
        create_model("grading_25d_tiny", crop_size=(30, 32, 32))
    model = create_model("grading_25d_tiny", crop_size=CROP)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.zeros(1, 3, 30, 32, 32), torch.zeros(1, dtype=torch.long))


def test_whole_model_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    a = create_model("grading_3d_tiny", crop_size=(24, 24, 24)).eval()
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    b = create_model(a.spine_name, weights=tmp_path / "w.safetensors", **a.spine_kwargs).eval()
    image, level, present = _inputs(2, (24, 24, 24))
    with torch.no_grad():
        assert torch.equal(a(image, level, present), b(image, level, present))


def test_mirroring_the_crop_changes_left_and_right_outputs():
    """Not mirror-invariant: a left-right flip of the input changes the side conditions' logits."""
    torch.manual_seed(0)
    for name in ("grading_3d_tiny", "grading_25d_tiny"):
        model = create_model(name, crop_size=CROP).eval()
        image, level, present = _inputs(2)
        with torch.no_grad():
            out, mirrored = model(image, level, present), model(image.flip(2), level, present)
        assert (out[:, 1:] - mirrored[:, 1:]).abs().max() > 1e-4, name


def test_condition_query_pooling_learns_left_from_right():
    """Two feature maps that are mirror images along X have the same global average: a pooled-average head
    cannot tell them apart; the positional query pooling learns to (left finding -> left condition)."""
    torch.manual_seed(0)
    head = ConditionQueryHead(in_features=4, grid=(2, 2, 2), dim=16, num_heads=2, dropout=0.0)
    base = torch.zeros(4, 2, 2, 2)
    base[0] = 1.0
    features = torch.stack([base.clone(), base.clone()])
    features[0, 1, 1, 0, 1] = 3.0  # the 'finding' at X index 1 (patient left)
    features[1, 1, 0, 0, 1] = 3.0  # its mirror image, X index 0 (patient right)
    assert torch.equal(features[0].mean((1, 2, 3)), features[1].mean((1, 2, 3)))
    level = torch.tensor([3, 3])
    # left foraminal (1) / subarticular (3) Severe on the finding's side, Normal on the other side
    target = torch.tensor([[0, 2, 0, 2, 0], [0, 0, 2, 0, 2]])
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead
    try:
        for _ in range(100):
            loss = torch.nn.functional.cross_entropy(head(features, level).reshape(-1, 3), target.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    pred = head(features, level).argmax(-1)
    assert torch.equal(pred, target)


@pytest.mark.parametrize("grid", [(4, 4, 4), (8,)])
def test_side_prior_points_each_side_condition_at_its_own_half(grid):
    """At init a left condition's query looks mostly at high X (patient left), a right one at low X, the
    spinal one evenly; side_prior=0 starts from uniform attention (global average pooling)."""
    torch.manual_seed(0)
    features = torch.randn(1, 8, *[1] * len(grid)).expand(4, 8, *grid)  # the same token everywhere
    left_mass = {}
    for prior in (2.0, 0.0):
        head = ConditionQueryHead(8, grid, dim=16, num_heads=2, dropout=0.0, side_prior=prior).eval()
        with torch.no_grad():
            _, attention = head.pool(features, torch.arange(4), return_attention=True)  # (N, h, K, *grid)
        assert attention.shape == (4, 2, 5, *grid)
        half = grid[0] // 2
        left_mass[prior] = attention[:, :, :, half:].flatten(3).sum(-1)  # (N, h, K)
    by_condition = dict(zip(CONDITIONS, left_mass[2.0].mean((0, 1)).tolist()))
    assert by_condition["left_neural_foraminal_narrowing"] > 0.75
    assert by_condition["left_subarticular_stenosis"] > 0.75
    assert by_condition["right_neural_foraminal_narrowing"] < 0.25
    assert by_condition["right_subarticular_stenosis"] < 0.25
    assert by_condition["spinal_canal_stenosis"] == pytest.approx(0.5, abs=0.05)
    assert torch.allclose(left_mass[0.0], torch.full_like(left_mass[0.0], 0.5), atol=0.05)


def test_per_level_heads_and_present_flags_change_the_logits():
    torch.manual_seed(0)
    model = create_model("grading_3d_tiny", crop_size=(24, 24, 24)).eval()
    image = torch.randn(1, 3, 24, 24, 24).expand(5, -1, -1, -1, -1)
    with torch.no_grad():
        out = model(image, torch.arange(5), torch.ones(5, 3))
        missing = model(image[:1], torch.tensor([0]), torch.tensor([[1.0, 1.0, 0.0]]))
    for a in range(5):
        for b in range(a + 1, 5):
            assert (out[a] - out[b]).abs().max() > 1e-4
    assert (out[0] - missing[0]).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------ losses
def _random_batch(b: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(b, 5, 5, 3, generator=gen)
    target = torch.randint(0, 3, (b, 5, 5), generator=gen)
    target[torch.rand(b, 5, 5, generator=gen) < 0.25] = -1
    target[1, :, 0] = -1  # a study without any labelled spinal level
    target[2, :, 0] = torch.tensor([0, 2, -1, 1, 0])  # a study with a Severe spinal level
    target[3, :, 0] = torch.tensor([0, 0, 1, 0, -1])  # L5/S1 unlabelled, and its severe the study's largest:
    logits[3, 4, 0] = torch.tensor([-5.0, -5.0, 10.0])  # any-severe must ignore it, as the official metric does
    return logits, target


def _metric_frames(probs: np.ndarray, target: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train.csv labels and a submission for studies 1..B from (B, L, K, 3) probabilities and (B, L, K)."""
    label_rows, sub_rows = [], []
    for s in range(target.shape[0]):
        row = {"study_id": s + 1}
        for k, condition in enumerate(CONDITIONS):
            for lv, level in enumerate(LEVELS):
                y = int(target[s, lv, k])
                row[label_column(condition, level)] = SEVERITIES[y] if y >= 0 else np.nan
                sub_rows.append({"row_id": row_id(s + 1, condition, level),
                                 **dict(zip(PROB_COLUMNS, probs[s, lv, k].astype(np.float64)))})
        label_rows.append(row)
    return pd.DataFrame(label_rows, columns=["study_id", *LABEL_COLUMNS]), pd.DataFrame(sub_rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ce_grading_loss_equals_the_competition_metric(seed):
    logits, target = _random_batch(seed=seed)
    loss, parts = grading_loss(logits, target, kind="ce", any_severe_weight=1.0)
    labels, submission = _metric_frames(grading_probabilities(logits, "ce").double().numpy(), target.numpy())
    expected = score(labels, submission)
    assert float(loss) == pytest.approx(expected["score"], abs=1e-5)
    for name, metric_name in [("spinal", "spinal"), ("foraminal", "foraminal"),
                              ("subarticular", "subarticular"), ("any_severe", "any_severe_spinal")]:
        assert float(parts[name]) == pytest.approx(expected[metric_name], abs=1e-5)


def test_missing_parts_are_nan_and_left_out_of_the_mean():
    logits, target = _random_batch()
    target[:, :, 0] = -1  # no spinal labels at all: spinal and any_severe parts are missing
    loss, parts = grading_loss(logits, target)
    assert torch.isnan(parts["spinal"]) and torch.isnan(parts["any_severe"])
    assert float(loss) == pytest.approx(float(parts["foraminal"] + parts["subarticular"]) / 2, rel=1e-6)
    labels, submission = _metric_frames(grading_probabilities(logits).double().numpy(), target.numpy())
    assert float(loss) == pytest.approx(score(labels, submission)["score"], abs=1e-5)
    empty, _ = grading_loss(logits.requires_grad_(), torch.full_like(target, -1))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_focal_with_gamma_zero_is_ce_and_downweights_easy_samples():
    logits, target = _random_batch()
    ce, _ = grading_loss(logits, target, kind="ce", any_severe_weight=0.5)
    focal0, _ = grading_loss(logits, target, kind="focal", focal_gamma=0.0, any_severe_weight=0.5)
    focal2, parts2 = grading_loss(logits, target, kind="focal", focal_gamma=2.0, any_severe_weight=0.5)
    _, parts_ce = grading_loss(logits, target, kind="ce")
    assert torch.allclose(ce, focal0, atol=1e-6)
    for group in ("spinal", "foraminal", "subarticular"):
        assert parts2[group] < parts_ce[group]
    assert torch.allclose(parts2["any_severe"], parts_ce["any_severe"])  # same probabilities


def test_bce_probabilities_sum_to_one_and_match_the_loss():
    logits, target = _random_batch()
    for kind in ("ce", "focal", "bce"):
        probs = grading_probabilities(logits, kind)
        assert probs.shape == logits.shape and (probs >= 0).all()
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)
    extreme = torch.tensor([[-200.0, -300.0, -250.0], [80.0, 90.0, -90.0]])
    probs = grading_probabilities(extreme, "bce")
    assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(2))
    # a confident correct prediction has a lower bce loss than a wrong one
    target = torch.full((1, 5, 5), -1)
    target[0, 2, 1] = 2
    good, bad = torch.zeros(1, 5, 5, 3), torch.zeros(1, 5, 5, 3)
    good[0, 2, 1] = torch.tensor([-5.0, -5.0, 5.0])
    bad[0, 2, 1] = torch.tensor([5.0, -5.0, -5.0])
    assert grading_loss(good, target, kind="bce")[0] < grading_loss(bad, target, kind="bce")[0]


@pytest.mark.parametrize("kind", ["ce", "focal", "bce"])
def test_unlabelled_rows_contribute_nothing_and_gradients_are_finite(kind):
    logits, target = _random_batch()
    loss, _ = grading_loss(logits, target, kind=kind)
    # Unlabelled rows do not count, except that the any-severe part takes the max over all 5 spinal levels
    # of a study that has a labelled spinal level (as the metric does).
    has_spinal = (target[:, :, 0] >= 0).any(1)
    free = target < 0
    free[:, :, 0] &= ~has_spinal[:, None]
    changed = logits.clone()
    changed[free] = 50.0 * torch.randn(int(free.sum()), 3)
    changed_loss, _ = grading_loss(changed, target, kind=kind)
    assert torch.allclose(loss, changed_loss, atol=1e-6)
    # with the any-severe part off, no unlabelled row counts
    everywhere = logits.clone()
    everywhere[target < 0] = float("nan")
    a, _ = grading_loss(logits, target, kind=kind, any_severe_weight=0.0)
    b, _ = grading_loss(everywhere, target, kind=kind, any_severe_weight=0.0)
    assert torch.allclose(a, b)
    x = (10.0 * logits).requires_grad_()
    loss, parts = grading_loss(x, target, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[free].abs().sum() == 0 and x.grad.abs().sum() > 0
    assert set(parts) == {"spinal", "foraminal", "subarticular", "any_severe"}
    assert all(not p.requires_grad for p in parts.values())


def test_grading_loss_is_float32_under_autocast_and_checks_its_input():
    logits, target = _random_batch()
    ref, _ = grading_loss(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = grading_loss(logits.bfloat16(), target)
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(float(ref), rel=2e-2)
    with pytest.raises(ValueError, match="unknown grading loss kind"):
        grading_loss(logits, target, kind="mse")
    with pytest.raises(ValueError, match=r"logits \(B, L, K, 3\)"):
        grading_loss(logits[..., :2], target)
