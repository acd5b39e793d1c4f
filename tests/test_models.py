"""The model registry (every registered landmark model builds, runs forward and backward) and the landmark losses."""

from __future__ import annotations

import pytest
import torch

from spine.losses import cell_centres, gaussian_targets, landmark_loss, local_soft_argmax, soft_argmax
from spine.models import create_model, list_models, model_arguments

GRID = (16, 32, 32)  # small input grid: (x, y, z) voxels (3D backbones need 16 on every axis)


@pytest.mark.parametrize("name", list_models("landmark*"))
def test_every_registered_model_forward_shape_finite_and_backward(name):
    torch.manual_seed(0)
    model = create_model(name, in_chans=2, num_points=5, grid_size=GRID)
    x = torch.randn(2, 2, *GRID)
    out = model(x)
    assert out.dim() == 5 and out.shape[:2] == (2, 5)
    for size, cells in zip(GRID, out.shape[2:]):
        assert size % cells == 0  # whole strides: the cell -> index mapping of soft_argmax is exact
    assert torch.isfinite(out).all()
    target = torch.rand(2, 5, 3) * torch.tensor(GRID, dtype=torch.float32)
    loss, _ = landmark_loss(out, target, torch.ones(2, 5, dtype=torch.bool), (4, 4, 4), GRID)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model.spine_name == name


def test_registry_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="unknown model 'nope'.*landmark_25d"):
        create_model("nope")
    with pytest.raises(ValueError, match="no argument.*widht.*accepts:.*decoder_channels"):
        create_model("landmark_25d_tiny", widht=3)
    assert "backbone" in model_arguments("landmark_3d")


def test_whole_model_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    a = create_model("landmark_25d_tiny", in_chans=1, num_points=5, grid_size=GRID)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(123)
    b = create_model("landmark_25d_tiny", weights=tmp_path / "w.safetensors", in_chans=1, num_points=5,
                     grid_size=GRID)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


def test_soft_argmax_of_a_peak_is_its_cell_centre_and_recovers_subcell_positions():
    logits = torch.full((1, 1, 4, 8, 8), -1e4)
    logits[0, 0, 1, 2, 7] = 0.0
    coords, probs = soft_argmax(logits, (16, 32, 32))  # stride 4 on every axis
    expected = [cell_centres(4, 16)[1], cell_centres(8, 32)[2], cell_centres(8, 32)[7]]
    assert torch.allclose(coords[0, 0], torch.stack(expected), atol=1e-4)
    assert abs(float(probs.sum()) - 1) < 1e-5
    target = torch.tensor([[[7.9, 15.2, 16.4]]])  # central: no truncation of the Gaussian at the edges
    dist = gaussian_targets(target, (4, 8, 8), (16, 32, 32), (4.0, 4.0, 4.0))
    coords, _ = soft_argmax(dist.log(), (16, 32, 32))
    assert torch.allclose(coords, target, atol=0.15)


def test_landmark_loss_ignores_masked_and_nan_points():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    target = torch.rand(2, 3, 3) * 16
    mask = torch.tensor([[True, False, True], [False, False, True]])
    loss, parts = landmark_loss(logits, target, mask, (4, 4, 4), (16, 32, 32))
    target_nan = target.clone()
    target_nan[~mask] = float("nan")
    loss_nan, _ = landmark_loss(logits, target_nan, mask, (4, 4, 4), (16, 32, 32))
    assert torch.isfinite(loss) and torch.allclose(loss, loss_nan)
    loss_nan.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[1, 0].abs().sum() == 0  # masked: no gradient
    assert set(parts) == {"ce", "l1_mm", "dist_mm"}


def test_local_soft_argmax_follows_the_strongest_mode():
    """Two look-alike discs: the global soft-argmax lands between them, the local one on the stronger."""
    grid = (16, 32, 32)
    a = gaussian_targets(torch.tensor([[[8.0, 16.0, 6.0]]]), (16, 16, 16), grid, (1.5, 1.5, 1.5))
    b = gaussian_targets(torch.tensor([[[8.0, 16.0, 24.0]]]), (16, 16, 16), grid, (1.5, 1.5, 1.5))
    logits = (0.6 * a + 0.4 * b).log()
    glob, _ = soft_argmax(logits, grid)
    local = local_soft_argmax(logits, grid, (4.0, 4.0, 4.0))
    assert 12 < float(glob[0, 0, 2]) < 16
    assert torch.allclose(local, torch.tensor([[[8.0, 16.0, 6.0]]]), atol=0.3)
