"""Landmark networks: a volume grid in, one heatmap per label point out (logits over the grid cells).

Input: ``(B, C, X, Y, Z)``: C channels (sagittal T2, T1) on a grid whose axes are world x (patient
left), y (posterior), z (head), see :mod:`spine.data.landmarks`. Output: ``(B, K, x, y, z)`` logits, one
3D heatmap per point, at a coarser resolution. :func:`spine.losses.soft_argmax` turns it into continuous
grid-index coordinates; the cell -> index mapping only needs the input and output sizes.

Two families, both a timm encoder (``features_only``, strides 4/8/16, or 2/4/8/16 with ``min_stride=2``) +
a small FPN decoder at the finest of those strides:
- ``landmark_3d``: a timm-3d backbone on the volume.
- ``landmark_25d``: a timm 2D backbone on the sagittal plane (y, z) with the C * X slices as input
  channels; the head predicts K * X channels, reshaped to a (K, X, y, z) heatmap, so the left-right
  position keeps the full grid resolution.
timm is imported only when a model is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spine.errors import InputError
from spine.models.registry import register_model
from spine.run_config import GridConfig

# timm families whose first feature map is at stride 4 (no stride-2 stem feature).
_STRIDE4_STEMS = ("convnext", "test_convnext", "maxvit", "test_maxvit", "coatnet", "test_coatnet", "mambaout",
                  "test_mambaout", "edgenext", "focalnet", "poolformer", "convformer", "caformer", "swin", "hiera")
STRIDES = (2, 4, 8, 16)  # feature strides the decoder may use; the finest one chosen is the heatmap's
GRID_SIZE = tuple(GridConfig().size)  # the landmark stage's default grid (voxels along x, y, z): one definition


def create_backbone(backbone: str, spatial_dims: int, in_chans: int, out_indices: Sequence[int] | None = None,
                    pretrained: bool = False, pretrained_file: str | Path | None = None, min_stride: int = 4,
                    **kwargs: Any) -> nn.Module:
    """A timm (``spatial_dims=2``) or timm-3d (``spatial_dims=3``) encoder returning feature maps at strides
    ``min_stride`` (2 or 4) up to 16.

    ``pretrained_file``: a local timm checkpoint (2D checkpoints inflate to 3D in timm-3d); hub downloads
    (``pretrained=True`` without a file) need the internet, which Kaggle and these machines lack.
    """
    if spatial_dims == 2:
        import timm as lib
    else:
        import timm_3d as lib
    wanted = tuple(st for st in STRIDES if st >= min_stride)
    if out_indices is None:
        first = 4 if backbone.startswith(_STRIDE4_STEMS) else 2  # stride of the backbone's first feature map
        if first > min_stride:
            raise ValueError(f"backbone {backbone!r} has no stride-{min_stride} features; use min_stride={first}")
        out_indices = tuple(range(STRIDES.index(min_stride) - STRIDES.index(first), 4 - STRIDES.index(first)))
    try:
        encoder = lib.create_model(backbone, features_only=True, in_chans=in_chans, out_indices=tuple(out_indices),
                                   **weights_options(pretrained, pretrained_file), **kwargs)
    except RuntimeError as err:
        if pretrained and not pretrained_file:
            raise RuntimeError(f"could not load pretrained weights of {backbone!r} from the hub ({err}); "
                               "pass pretrained_file=<local checkpoint> instead") from err
        raise
    reductions = tuple(encoder.feature_info.reduction())
    if reductions != wanted:
        raise ValueError(f"backbone {backbone!r} with out_indices={tuple(out_indices)} gives strides {reductions}; "
                         f"pass out_indices selecting strides {wanted}")
    return encoder



def weights_options(pretrained: bool = False, pretrained_file: str | Path | None = None) -> dict[str, Any]:
    """``timm.create_model`` keywords for the starting weights: a local checkpoint (``pretrained_file``, through
    ``pretrained_cfg_overlay``), the hub (``pretrained`` alone: needs the internet) or none."""
    if not pretrained_file:
        return {"pretrained": bool(pretrained)}
    if not Path(pretrained_file).is_file():
        raise InputError(f"pretrained_file {pretrained_file} not found")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(pretrained_file)}}


def pooled_encoder_2d(backbone: str, in_chans: int, pretrained: bool = False,
                      pretrained_file: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """A timm 2D encoder ending in global average pooling: ``(N, in_chans, H, W) -> (N, num_features)``."""
    import timm

    return timm.create_model(backbone, num_classes=0, global_pool="avg", in_chans=in_chans,
                             **weights_options(pretrained, pretrained_file), **kwargs)

class FPNDecoder(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling and sums, one 3x3 conv at the finest level."""

    def __init__(self, in_channels: Sequence[int], channels: int, dims: int):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.lateral = nn.ModuleList(conv(c, channels, 1) for c in in_channels)
        self.smooth = nn.Sequential(conv(channels, channels, 3, padding=1, bias=False),
                                    nn.GroupNorm(math.gcd(8, channels), channels), nn.GELU())

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = self.lateral[-1](features[-1])
        for feature, lateral in zip(features[-2::-1], list(self.lateral)[-2::-1]):
            y = F.interpolate(y, size=feature.shape[2:], mode="nearest") + lateral(feature)
        return self.smooth(y)


class LandmarkNet3D(nn.Module):
    """timm-3d encoder + FPN decoder + 1x1x1 head: ``(B, C, X, Y, Z) -> (B, K, X/s, Y/s, Z/s)`` logits,
    s = ``min_stride``."""

    def __init__(self, backbone: str, in_chans: int, num_points: int, decoder_channels: int = 64,
                 pretrained: bool = False, pretrained_file: str | None = None,
                 out_indices: Sequence[int] | None = None, min_stride: int = 4, **backbone_kwargs: Any):
        super().__init__()
        self.encoder = create_backbone(backbone, 3, in_chans, out_indices, pretrained, pretrained_file,
                                       min_stride, **backbone_kwargs)
        self.decoder = FPNDecoder(self.encoder.feature_info.channels(), decoder_channels, dims=3)
        self.head = nn.Conv3d(decoder_channels, num_points, 1)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


class LandmarkNet25D(nn.Module):
    """timm 2D encoder on the (Y, Z) plane with C * X input channels; K * X output channels per cell.

    ``(B, C, X, Y, Z) -> (B, K, X, Y/s, Z/s)`` logits, s = ``min_stride``. ``depth`` must equal the grid's
    X size.
    """

    def __init__(self, backbone: str, in_chans: int, num_points: int, depth: int, decoder_channels: int = 64,
                 pretrained: bool = False, pretrained_file: str | None = None,
                 out_indices: Sequence[int] | None = None, min_stride: int = 4, **backbone_kwargs: Any):
        super().__init__()
        self.in_chans, self.num_points, self.depth = in_chans, num_points, depth
        self.encoder = create_backbone(backbone, 2, in_chans * depth, out_indices, pretrained, pretrained_file,
                                       min_stride, **backbone_kwargs)
        self.decoder = FPNDecoder(self.encoder.feature_info.channels(), decoder_channels, dims=2)
        self.head = nn.Conv2d(decoder_channels, num_points * depth, 1)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        if (c, d) != (self.in_chans, self.depth):
            raise ValueError(f"landmark_25d built for {self.in_chans} channels x {self.depth} slices, "
                             f"got input {tuple(x.shape)}")
        y = self.head(self.decoder(self.encoder(x.reshape(b, c * d, h, w))))
        return y.reshape(b, self.num_points, d, *y.shape[2:])


# ------------------------------------------------------------------------------------------ registry
# Constructors take the stage's input description (in_chans, num_points, grid_size) plus model options.


@register_model
def landmark_3d(in_chans: int = 2, num_points: int = 25, grid_size: Sequence[int] = GRID_SIZE,
                backbone: str = "resnet10t", decoder_channels: int = 64, min_stride: int = 4,
                pretrained: bool = False, pretrained_file: str | None = None,
                out_indices: Sequence[int] | None = None, backbone_kwargs: dict | None = None) -> LandmarkNet3D:
    """3D heatmap net on a timm-3d backbone (default resnet10t, 3.7 M parameters in the encoder)."""
    return LandmarkNet3D(backbone, in_chans, num_points, decoder_channels, pretrained, pretrained_file,
                         out_indices, min_stride, **(backbone_kwargs or {}))


@register_model
def landmark_25d(in_chans: int = 2, num_points: int = 25, grid_size: Sequence[int] = GRID_SIZE,
                 backbone: str = "resnet18", decoder_channels: int = 64, min_stride: int = 2,
                 pretrained: bool = False, pretrained_file: str | None = None,
                 out_indices: Sequence[int] | None = None, backbone_kwargs: dict | None = None) -> LandmarkNet25D:
    """2.5D heatmap net: sagittal slices as channels of a timm 2D backbone (default resnet18)."""
    return LandmarkNet25D(backbone, in_chans, num_points, int(grid_size[0]), decoder_channels, pretrained,
                          pretrained_file, out_indices, min_stride, **(backbone_kwargs or {}))


@register_model
def landmark_3d_tiny(in_chans: int = 2, num_points: int = 25, grid_size: Sequence[int] = GRID_SIZE,
                     decoder_channels: int = 16) -> LandmarkNet3D:
    """A few thousand parameters: timm-3d ConvNeXt with narrow stages, for tests and smoke runs."""
    return LandmarkNet3D("convnext_atto", in_chans, num_points, decoder_channels, dims=(8, 16, 32, 64),
                         depths=(1, 1, 1, 1))


@register_model
def landmark_25d_tiny(in_chans: int = 2, num_points: int = 25, grid_size: Sequence[int] = GRID_SIZE,
                      decoder_channels: int = 16) -> LandmarkNet25D:
    """A small 2.5D net: timm ResNet-10-T with narrow stages, for tests and smoke runs."""
    return LandmarkNet25D("resnet10t", in_chans, num_points, int(grid_size[0]), decoder_channels,
                          stem_width=8, channels=(16, 16, 32, 64))
