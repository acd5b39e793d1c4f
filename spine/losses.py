"""Losses: landmark heatmaps (soft-argmax + heatmap cross-entropy) and grading (the competition metric).

Landmark frame: a heatmap ``(B, K, *cells)`` covers an input grid of ``grid_size`` voxels; cell ``c`` of
an axis with ``n`` cells over ``N`` voxels has its centre at voxel index ``(c + 0.5) * N / n - 0.5``
(exact for conv strides that divide the size). Coordinates are continuous grid indices in the axis order
of the heatmap (x, y, z for the landmark grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from spine.constants import CONDITION_GROUP, CONDITIONS, GROUPS, SEVERITIES


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


# ------------------------------------------------------------------------------------------------ grading
GRADING_LOSS_KINDS: tuple[str, ...] = ("ce", "focal", "bce")


def grading_probabilities(logits: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Class probabilities ``(..., 3)`` (float32, summing to 1) matching the loss ``kind`` the logits were
    trained with: softmax for ``ce`` / ``focal``, per-class sigmoids normalised to sum 1 for ``bce``."""
    _check_kind(kind)
    logits = logits.float()
    if kind == "bce":
        return F.logsigmoid(logits).softmax(-1)  # sigmoid / sum(sigmoid), without underflow to 0 / 0
    return logits.softmax(-1)


def grading_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "ce",
                 class_weights: Sequence[float] = (1.0, 2.0, 4.0), any_severe_weight: float = 1.0,
                 focal_gamma: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The competition metric (:mod:`spine.metric`) as a differentiable loss over a batch of studies.

    Args:
        logits: ``(B, L, K, 3)`` = studies x levels (``LEVELS``) x conditions (``CONDITIONS``) x classes
            (``SEVERITIES``); any float dtype (computed in float32, autocast disabled).
        target: ``(B, L, K)`` int64 class index 0..2, or -1 where unlabelled (no contribution).
        kind: per-sample term. ``ce``: ``-log p_y``; ``focal``: ``-(1 - p_y)^gamma log p_y`` (``ce`` at
            gamma 0); ``bce``: the sum over the 3 classes of one-vs-rest sigmoid binary cross-entropies.
        class_weights: sample weight by true class (the metric's 1, 2, 4).
        any_severe_weight: weight of the any-severe-spinal part relative to each of the three groups.
        focal_gamma: focusing exponent of ``focal``.
    Returns:
        ``(loss, parts)``. Each group part (``spinal``, ``foraminal``, ``subarticular``, from
        ``CONDITION_GROUP``) is ``sum(w * term) / sum(w)`` over the batch's labelled rows of the group,
        ``w = class_weights[y]``. ``any_severe``: per study with a labelled spinal level, ``p`` = max over its
        labelled levels of the spinal severe probability (:func:`grading_probabilities`, clipped to [eps, 1 - eps]),
        ``y`` = any labelled spinal level Severe, ``w`` = max weight of the labelled spinal levels; weighted
        binary cross-entropy ``sum(w * bce) / sum(w)``. ``loss = (spinal + foraminal + subarticular +
        any_severe_weight * any_severe) / (3 + any_severe_weight)`` over the parts that have labelled rows
        (a part without any is left out of sum and denominator, like the metric's NaN parts; all four
        missing gives a zero loss that still has a graph). With ``kind="ce"`` and ``any_severe_weight=1`` the
        loss equals :func:`spine.metric.score` of the softmax probabilities. ``parts`` are detached
        float32 scalars, NaN for a part without labelled rows.
    """
    _check_kind(kind)
    if any_severe_weight < 0:
        raise ValueError(f"any_severe_weight must be >= 0, got {any_severe_weight}")
    if logits.dim() != 4 or logits.shape[-1] != len(SEVERITIES) or tuple(target.shape) != tuple(logits.shape[:3]):
        raise ValueError(f"grading_loss expects logits (B, L, K, {len(SEVERITIES)}) and target (B, L, K), got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.shape[2] != len(CONDITIONS):
        raise ValueError(f"grading_loss expects {len(CONDITIONS)} conditions (CONDITIONS order), "
                         f"got {logits.shape[2]}")
    device_type = logits.device.type if logits.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    with torch.autocast(device_type=device_type, enabled=False):
        logits = logits.float()
        target = target.long()
        labelled = target >= 0
        y = target.clamp_min(0)
        weights = torch.as_tensor(list(class_weights), dtype=torch.float32, device=logits.device)
        w = weights[y] * labelled.float()  # (B, L, K), 0 where unlabelled

        if kind == "bce":
            onehot = F.one_hot(y, logits.shape[-1]).float()
            term = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(-1)
        else:
            log_py = F.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
            term = -log_py
            if kind == "focal" and focal_gamma != 0:
                one_minus_p = (-torch.expm1(log_py)).clamp_min(1e-12)  # 1 - p_y, accurate near p_y = 1
                term = one_minus_p.pow(float(focal_gamma)) * term
        term = term.masked_fill(~labelled, 0.0)  # unlabelled logits get no gradient, even if non-finite

        # No host synchronisation: each part is num / max(den, tiny) with a validity flag den > 0.
        sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for group in GROUPS:
            idx = [k for k, c in enumerate(CONDITIONS) if CONDITION_GROUP[c] == group]
            sums[group] = ((w[:, :, idx] * term[:, :, idx]).sum(), w[:, :, idx].sum())

        spinal = next(k for k, c in enumerate(CONDITIONS) if CONDITION_GROUP[c] == "spinal")
        severe = SEVERITIES.index("Severe")
        eps = torch.finfo(torch.float32).eps
        p_severe = grading_probabilities(logits[:, :, spinal], kind)[..., severe]  # (B, L)
        # the max over the labelled spinal levels only: the official harness drops unlabelled rows first
        p = p_severe.masked_fill(~labelled[:, :, spinal], 0.0).amax(dim=1).clamp(eps, 1.0 - eps)
        y_any = ((target[:, :, spinal] == severe) & labelled[:, :, spinal]).any(dim=1).float()  # (B,)
        w_any = w[:, :, spinal].amax(dim=1)  # (B,), 0 for studies without a labelled spinal level
        bce_any = -(y_any * p.log() + (1.0 - y_any) * torch.log1p(-p))
        sums["any_severe"] = ((w_any * bce_any).sum(), w_any.sum())

        part_weight = {**{g: 1.0 for g in GROUPS}, "any_severe": float(any_severe_weight)}
        total = norm = logits.new_zeros(())
        parts: dict[str, torch.Tensor] = {}
        for name, (num, den) in sums.items():
            valid = den > 0
            value = num / den.clamp_min(1e-12)  # num is 0 where den is 0
            parts[name] = torch.where(valid, value, torch.full_like(value, float("nan")))
            if part_weight[name] != 0:  # a part weighted 0 cannot poison the loss with NaN
                total = total + part_weight[name] * value
                norm = norm + part_weight[name] * valid.float()
        loss = total / norm.clamp_min(1e-12)
    return loss, {k: v.detach() for k, v in parts.items()}


def _check_kind(kind: str) -> None:
    if kind not in GRADING_LOSS_KINDS:
        raise ValueError(f"unknown grading loss kind {kind!r}; choose one of {', '.join(GRADING_LOSS_KINDS)}")
