"""Losses: landmark heatmaps (soft-argmax + heatmap cross-entropy). Grading losses join them here.

Landmark frame: a heatmap ``(B, K, *cells)`` covers an input grid of ``grid_size`` voxels; cell ``c`` of
an axis with ``n`` cells over ``N`` voxels has its centre at voxel index ``(c + 0.5) * N / n - 0.5``
(exact for conv strides that divide the size). Coordinates are continuous grid indices in the axis order
of the heatmap (x, y, z for the landmark grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cell_centres(n_cells: int, grid_len: int, device=None) -> torch.Tensor:
    """Grid-index position of the centre of each of ``n_cells`` cells spanning ``grid_len`` voxels."""
    return (torch.arange(n_cells, device=device, dtype=torch.float32) + 0.5) * (grid_len / n_cells) - 0.5


def soft_argmax(logits: torch.Tensor, grid_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected position under the softmax of each heatmap.

    Args:
        logits: ``(B, K, *cells)`` with len(cells) == len(grid_size).
        grid_size: the input grid's size along each axis (voxels).
    Returns:
        ``coords`` ``(B, K, D)`` in grid-index units and ``probs`` ``(B, K, *cells)`` (float32).
    """
    b, k, *cells = logits.shape
    probs = logits.float().flatten(2).softmax(-1).view(b, k, *cells)
    coords = []
    for axis, (n, size) in enumerate(zip(cells, grid_size)):
        other = [2 + a for a in range(len(cells)) if a != axis]
        marginal = probs.sum(dim=other) if other else probs  # (B, K, n)
        coords.append(marginal @ cell_centres(n, int(size), logits.device))
    return torch.stack(coords, dim=-1), probs


def local_soft_argmax(logits: torch.Tensor, grid_size: Sequence[int], radius_vox: Sequence[float]) -> torch.Tensor:
    """Soft-argmax restricted to a window around each heatmap's peak: ``(B, K, D)`` grid-index coordinates.

    A heatmap that hesitates between two far-apart places (two look-alike discs) gives the position of its
    strongest mode instead of a point between the modes. ``radius_vox``: half-width of the window per axis,
    in grid voxels (converted to cells, at least one cell).
    """
    b, k, *cells = logits.shape
    flat = logits.float().flatten(2)
    peak = torch.stack(torch.unravel_index(flat.argmax(-1), tuple(cells)), dim=-1)  # (B, K, D) cell indices
    inside = torch.ones_like(flat, dtype=torch.bool).view(b, k, *cells)
    for axis, (n, size, radius) in enumerate(zip(cells, grid_size, radius_vox)):
        r = max(1, int(round(float(radius) * n / int(size))))
        index = torch.arange(n, device=logits.device).view(1, 1, n)
        near = (index - peak[..., axis:axis + 1]).abs() <= r  # (B, K, n)
        shape = [b, k] + [n if a == axis else 1 for a in range(len(cells))]
        inside = inside & near.view(shape)
    coords, _ = soft_argmax(logits.float().masked_fill(~inside, float("-inf")), grid_size)
    return coords


def gaussian_targets(coords: torch.Tensor, cells: Sequence[int], grid_size: Sequence[int],
                     sigma_vox: Sequence[float]) -> torch.Tensor:
    """Normalised Gaussian distributions over the cells, ``(B, K, *cells)``, centred on ``coords`` (B, K, D).

    ``sigma_vox``: the standard deviation per axis in grid voxels (cells are ``grid/cells`` voxels wide).
    """
    log_density = 0.0
    for axis, (n, size, sigma) in enumerate(zip(cells, grid_size, sigma_vox)):
        centres = cell_centres(n, int(size), coords.device)  # (n,)
        d = (centres.view(1, 1, n) - coords[..., axis:axis + 1]) / float(sigma)  # (B, K, n)
        shape = [coords.shape[0], coords.shape[1]] + [n if a == axis else 1 for a in range(len(cells))]
        log_density = log_density + (-0.5 * d * d).view(shape)
    flat = log_density.flatten(2)
    return flat.softmax(-1).view(coords.shape[0], coords.shape[1], *cells)


def landmark_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, spacing_mm: Sequence[float],
                  grid_size: Sequence[int], sigma_mm: float = 8.0, l1_scale_mm: float = 10.0,
                  heatmap_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Heatmap cross-entropy to a Gaussian target + L1 of the soft-argmax position in mm.

    Args:
        logits: ``(B, K, *cells)``; target: ``(B, K, D)`` grid-index coordinates; mask: ``(B, K)`` true
            where the point is labelled and inside the grid. Masked points contribute nothing.
        spacing_mm: grid voxel size per axis (turns index errors into mm).
        sigma_mm: standard deviation of the target Gaussian.
        l1_scale_mm: the L1 term is ``mean |error mm| / l1_scale_mm``.
    Returns:
        ``(loss, parts)`` with detached parts ``ce``, ``l1_mm`` (mean absolute error per axis, mm),
        ``dist_mm`` (mean Euclidean error, mm).
    """
    spacing = torch.as_tensor(list(spacing_mm), dtype=torch.float32, device=logits.device)
    coords, _ = soft_argmax(logits, grid_size)
    target = target.float().nan_to_num(0.0)  # unlabelled points may be NaN; their mask is 0
    maskf = mask.float()
    n = maskf.sum().clamp_min(1.0)
    err_mm = (coords - target) * spacing
    l1 = (err_mm.abs().mean(-1) * maskf).sum() / n
    log_p = F.log_softmax(logits.float().flatten(2), dim=-1)
    tgt = gaussian_targets(target, logits.shape[2:], grid_size, [sigma_mm / s for s in spacing_mm])
    ce = (-(tgt.flatten(2) * log_p).sum(-1) * maskf).sum() / n
    loss = heatmap_weight * ce + l1 / l1_scale_mm
    dist = (err_mm.norm(dim=-1) * maskf).sum() / n
    return loss, {"ce": ce.detach(), "l1_mm": l1.detach(), "dist_mm": dist.detach()}
