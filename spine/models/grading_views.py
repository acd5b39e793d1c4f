"""The per-condition views grading family: every slice of every view through one 2D encoder.

The grading stage calls ``model(views, level, present)``:

- ``views``: ``(N, K, V, S, H, W)`` float32, N = studies x levels, K = 5 conditions (``CONDITIONS``), V views
  per condition, S slices per view (:mod:`spine.data.views`: right-side views are mirrored onto the left,
  so the two sides of a condition look alike and share all weights);
- ``level``: ``(N,)`` int64 disc level (``LEVELS`` order); ``present``: ``(N, P)`` 0/1 series flags (a missing
  series gives zero views) or None;
- output: ``(N, K, num_classes)`` logits.

Steps: a timm 2D encoder (global average pool) shared by every view and condition, in one of two slice modes:
``mil`` (the GPU default): the encoder (``in_chans=1``) reads each slice, a learned slice-position embedding is
added, and attention pools the S slices of a view (MIL: one learned score per slice, softmax over the slices,
one scorer per (group, view)); ``channels`` (the CPU default, S times cheaper): the encoder reads a view's S
slices as the channels of one image (2.5D). Then the V view vectors of a
condition concatenated and fused by its group's MLP; a level embedding; a linear classifier per (group, level)
fed the fused vector and the ``present`` flags. Groups (``groups[k]`` for condition k, default spinal 0,
foraminal 1, subarticular 2) share everything inside a group: left and right read the same weights.
timm is imported only when a model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spine.models.landmarks import pooled_encoder_2d
from spine.models.registry import register_model, spread_backbone_kwargs

DEFAULT_GROUPS: tuple[int, ...] = (0, 1, 1, 2, 2)  # CONDITIONS -> GROUPS index (spinal, foraminal, subarticular)
SLICE_MODES: tuple[str, ...] = ("mil", "channels")


class GradingViewsNet(nn.Module):
    """See the module docstring. ``forward(views, level, present) -> (N, K, num_classes)`` logits."""

    def __init__(self, backbone: str, view_shape: Sequence[int] = (3, 32, 32), num_views: int = 2,
                 groups: Sequence[int] = DEFAULT_GROUPS, num_levels: int = 5, num_classes: int = 3,
                 num_present: int = 3, dim: int = 128, dropout: float = 0.1, slice_mode: str = "mil",
                 pretrained: bool = False, pretrained_file: str | Path | None = None, **backbone_kwargs: Any):
        super().__init__()
        if slice_mode not in SLICE_MODES:
            raise ValueError(f"slice_mode must be one of {SLICE_MODES}, got {slice_mode!r}")
        self.slice_mode = slice_mode
        self.view_shape = tuple(int(v) for v in view_shape)
        self.num_views, self.num_present = int(num_views), int(num_present)
        self.register_buffer("groups", torch.as_tensor(list(groups), dtype=torch.long), persistent=False)
        num_groups = int(max(groups)) + 1
        self.encoder = pooled_encoder_2d(backbone, 1 if slice_mode == "mil" else self.view_shape[0], pretrained,
                                         pretrained_file, **backbone_kwargs)
        features = self.encoder.num_features
        slices = self.view_shape[0]
        self.slice_embed = self.score = None
        if slice_mode == "mil":
            self.slice_embed = nn.Parameter(torch.zeros(slices, features))
            self.score = nn.Parameter(torch.zeros(num_groups, self.num_views, features))  # MIL scorers
        self.fuse = nn.ModuleList(nn.Sequential(nn.LayerNorm(self.num_views * features),
                                                nn.Linear(self.num_views * features, dim), nn.GELU(),
                                                nn.Dropout(dropout)) for _ in range(num_groups))
        self.level_embed = nn.Parameter(torch.zeros(num_groups, num_levels, dim))
        self.norm = nn.LayerNorm(dim)
        self.weight = nn.Parameter(torch.zeros(num_groups, num_levels, dim + self.num_present, num_classes))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.bias = nn.Parameter(torch.zeros(num_groups, num_levels, num_classes))

    def encode(self, views: torch.Tensor) -> torch.Tensor:
        """``(N, K, V, S, H, W)`` -> ``(N, K, V, S, F)`` one vector per slice (``mil``), or ``(N, K, V, 1, F)``
        one per view (``channels``)."""
        n, k, v, s, h, w = views.shape
        if self.slice_mode == "channels":
            return self.encoder(views.reshape(n * k * v, s, h, w)).reshape(n, k, v, 1, -1)
        features = self.encoder(views.reshape(n * k * v * s, 1, h, w))
        return features.reshape(n, k, v, s, -1) + self.slice_embed.to(features.dtype)

    def pool(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention over the slices of each view: ``(N, K, V, F)`` and the weights ``(N, K, V, S)``."""
        if self.score is None:  # channels: one vector per view already
            return features[:, :, :, 0], features.new_ones(features.shape[:4])
        scorer = self.score[self.groups].to(features.dtype)  # (K, V, F)
        logits = torch.einsum("nkvsf,kvf->nkvs", features, scorer) / features.shape[-1] ** 0.5
        weights = logits.float().softmax(-1).to(features.dtype)
        return torch.einsum("nkvs,nkvsf->nkvf", weights, features), weights

    def forward(self, views: torch.Tensor, level: torch.Tensor, present: torch.Tensor | None = None
                ) -> torch.Tensor:
        if views.dim() != 6 or tuple(views.shape[2:]) != (self.num_views, *self.view_shape) \
                or views.shape[1] != len(self.groups):
            raise ValueError(f"grading_views expects (N, {len(self.groups)}, {self.num_views}, "
                             f"{', '.join(map(str, self.view_shape))}), got {tuple(views.shape)}")
        n, k = views.shape[:2]
        pooled, _ = self.pool(self.encode(views))  # (N, K, V, F)
        flat = pooled.flatten(2)  # (N, K, V * F)
        fused = torch.stack([self.fuse[int(g)](flat[:, i]) for i, g in enumerate(self.groups.tolist())], dim=1)
        level = level.to(device=views.device, dtype=torch.long).view(n)
        fused = self.norm(fused + self.level_embed[self.groups][:, level].transpose(0, 1).to(fused.dtype))
        if present is None:
            present = fused.new_ones(n, self.num_present)
        flags = present.to(device=views.device, dtype=fused.dtype).view(n, 1, -1).expand(n, k, -1)
        x = torch.cat([fused, flags], dim=-1)  # (N, K, dim + P)
        weight = self.weight[self.groups[None, :], level[:, None]].to(x.dtype)  # (N, K, dim + P, C)
        bias = self.bias[self.groups[None, :], level[:, None]].to(x.dtype)
        return torch.einsum("nkd,nkdc->nkc", x, weight) + bias


# ------------------------------------------------------------------------------------------ registry
# Constructors take the stage's view description (view_shape, num_views, groups, num_levels, num_classes,
# num_present: ViewInput.model_kwargs) plus model options, and pass their own arguments on by keyword
# (``**locals()``: exactly the signature, which create_model checks) with their fixed choices.
@register_model(inputs="views")
def grading_views(view_shape: Sequence[int] = (5, 128, 128), num_views: int = 2,
                  groups: Sequence[int] = DEFAULT_GROUPS, num_levels: int = 5, num_classes: int = 3,
                  num_present: int = 3, backbone: str = "convnext_small", dim: int = 256, dropout: float = 0.2,
                  pretrained: bool = False, pretrained_file: str | None = None,
                  backbone_kwargs: dict | None = None) -> GradingViewsNet:
    """GPU-sized views model: a ConvNeXt-S class 2D encoder per slice (``pretrained_file`` for local ImageNet
    weights), attention pooling over slices, per-group fusion and per-level heads."""
    return GradingViewsNet(slice_mode="mil", **spread_backbone_kwargs(locals()))


@register_model(inputs="views")
def grading_views_small(view_shape: Sequence[int] = (3, 32, 32), num_views: int = 2,
                        groups: Sequence[int] = DEFAULT_GROUPS, num_levels: int = 5, num_classes: int = 3,
                        num_present: int = 3, dim: int = 64, dropout: float = 0.1,
                        slice_mode: str = "channels") -> GradingViewsNet:
    """CPU-sized views model: a narrow timm ResNet-10-T reading each view's slices as channels (trains in
    minutes on 2 cores)."""
    return GradingViewsNet(backbone="resnet10t", **locals(), stem_width=16, channels=(16, 32, 64, 96))


@register_model(inputs="views")
def grading_views_medium(view_shape: Sequence[int] = (3, 32, 32), num_views: int = 2,
                         groups: Sequence[int] = DEFAULT_GROUPS, num_levels: int = 5, num_classes: int = 3,
                         num_present: int = 3, dim: int = 128, dropout: float = 0.1,
                         slice_mode: str = "channels") -> GradingViewsNet:
    """The CPU default (``experiment=grading_cpu``): ``grading_views_small``'s design with a ResNet-18-D (two
    blocks per stage) twice as wide, 2.1 M parameters, about 1.5x its time per training step on 2 cores."""
    return GradingViewsNet(backbone="resnet18d", **locals(), stem_width=24, channels=(32, 64, 128, 192))


@register_model(inputs="views")
def grading_views_tiny(view_shape: Sequence[int] = (3, 16, 16), num_views: int = 2,
                       groups: Sequence[int] = DEFAULT_GROUPS, num_levels: int = 5, num_classes: int = 3,
                       num_present: int = 3, dim: int = 16, dropout: float = 0.0,
                       slice_mode: str = "mil") -> GradingViewsNet:
    """A few thousand parameters, for tests and smoke runs."""
    return GradingViewsNet(backbone="resnet10t", **locals(), stem_width=8, channels=(8, 8, 16, 16))
