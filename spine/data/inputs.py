"""What a grading model reads, declared once: one input object per kind.

A grading model declares its input kind where it is registered (``@register_model(inputs="crops")``, as timm
models carry their ``pretrained_cfg``); :func:`grading_input` turns that kind and the stage config into an
input object. Training (the dataset and the stage), inference, the report and the benchmarks ask that object
instead of branching on the kind:

- ``series``: the series descriptions it reads from the cache, in ``present``-flag order;
- ``build(volumes, points, affine)``: one study's model input, ``(L, ...)`` float32, from its volumes and its
  ``(K, L, 3)`` points (LPS mm, NaN where missing), and the ``(P,)`` bool ``present`` flags;
- ``augment(...)`` / ``draw(...)``: the kind's training randomness (moved crop centres or points) and the
  input built with it;
- ``model_kwargs()``: the constructor keywords the input implies (channels, input size);
- ``item_shape``: the per-level input shape the model is called with (after flattening studies x levels);
- ``tta``: whether a left-right mirrored pass applies at inference (``test_affines``);
- ``describe()``: a one-line text for reports and benchmark tables; ``resized(...)``: the same input at
  another size (benchmarks).

Kinds:

- ``crops`` (:class:`CropInput`): ``(L, C, X, Y, Z)`` = levels x series x one co-registered crop grid per level
  (:func:`spine.data.crops.build_crops`), X towards the patient's left, centred on the level centres.
- ``views`` (:class:`ViewInput`): ``(L, K, V, S, H, W)`` = levels x conditions x views x slices
  (:func:`spine.data.views.build_views`), each view centred on its condition's point.

A new kind is a class here (registered in :data:`INPUT_KINDS`) and a model that declares it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from spine.constants import CONDITIONS
from spine.data.crops import build_crops, fill_centres, level_axes, level_centres
from spine.data.transforms import GridAffine
from spine.data.views import ViewSet, build_views, view_groups
from spine.data.volume import SeriesVolume

Volumes = Mapping[str, SeriesVolume | None]


@dataclass(frozen=True)
class Drawn:
    """One training draw of a study: ``image`` (L, ...) float32, ``present`` (P,) bool, the (L, 3) level
    ``centres`` (LPS mm, after augmentation) and ``flip`` (the input was mirrored: labels must swap sides)."""

    image: np.ndarray
    present: np.ndarray
    centres: np.ndarray
    flip: bool


class GradingInput:
    """Base of the input kinds: see the module docstring."""

    kind: ClassVar[str] = ""
    tta: ClassVar[bool] = False  # a left-right mirrored pass at inference (its outputs swapped back)

    @property
    def series(self) -> list[str]:
        raise NotImplementedError

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one level's input (what the model reads per row of a batch)."""
        raise NotImplementedError

    def build(self, volumes: Volumes, points: np.ndarray, affine: GridAffine | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """``(image (L, *item_shape) float32, present (P,) bool)`` of one study, from its volumes (by series
        description, None where missing) and its (K, L, 3) points (LPS mm, NaN where missing)."""
        raise NotImplementedError

    def draw(self, volumes: Volumes, points: np.ndarray | None, centres: np.ndarray, rng: np.random.Generator,
             augment: Any | None) -> Drawn:
        """A training item's input: ``augment`` (the kind's random augmentation, or None) drawn from ``rng``."""
        raise NotImplementedError

    def augment(self, config, landmark_errors: Callable[[], np.ndarray | None]) -> Any:
        """The training augmentation of this kind from the stage's ``augment`` config; ``landmark_errors``
        gives the landmark run's (m, K, L, 3) out-of-fold errors (world mm) where the kind uses them."""
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """Constructor keywords of a model reading this input."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for reports and benchmark tables, e.g. ``crop 64x64x64``."""
        raise NotImplementedError

    def resized(self, crop: Sequence[int], view: Sequence[int]) -> GradingInput:
        """The same input at another size, for benchmarks: a crop grid of ``crop`` (X, Y, Z) voxels (crops), or
        every view ``view`` (S, H, W) slices x pixels (views); each kind takes the size that applies to it."""
        raise NotImplementedError

    def test_affines(self, tta: bool) -> list[GridAffine | None]:
        """The inference passes: as is, plus the left-right mirror when ``tta`` and the kind mirrors."""
        return [None, GridAffine(flip_lr=True)] if tta and self.tta else [None]

    @staticmethod
    def forward_args(image: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``model(...)`` arguments of a batch of studies: ``image`` (B, L, ...) and ``present`` (B, P) ->
        (image (B*L, ...), level (B*L,) int64 disc level index, present (B*L, P) float)."""
        b, n_levels = image.shape[:2]
        level = torch.arange(n_levels, device=image.device).repeat(b)
        return image.flatten(0, 1), level, present.float().repeat_interleave(n_levels, dim=0)


@dataclass(frozen=True)
class CropInput(GradingInput):
    """Per-level crops: one ``size`` voxel grid of extent ``mm`` (X left, Y posterior, Z head) per level
    centre, one channel per ``series_list`` entry; ``align`` turns each crop to the local spine axis."""

    series_list: tuple[str, ...]
    size: tuple[int, int, int]
    mm: tuple[float, float, float]
    align: bool = True

    kind: ClassVar[str] = "crops"
    tta: ClassVar[bool] = True

    @classmethod
    def from_stage(cls, stage) -> CropInput:
        """From the grading stage config (``series``, ``crop.size``, ``crop.mm``, ``crop.align``)."""
        return cls(tuple(stage.series), tuple(int(v) for v in stage.crop.size),
                   tuple(float(v) for v in stage.crop.mm), bool(stage.crop.align))

    @property
    def series(self) -> list[str]:
        return list(self.series_list)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(self.series_list), *self.size)

    def build(self, volumes: Volumes, points: np.ndarray, affine: GridAffine | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        centres = fill_centres(level_centres(points))
        return self.crops(volumes, centres, level_axes(centres, self.align), affine)

    def crops(self, volumes: Volumes, centres: np.ndarray, axes: np.ndarray, affine: GridAffine | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(L, C, X, Y, Z) crops at the (L, 3) ``centres`` (LPS mm) in the (L, 3, 3) level frames ``axes``."""
        return build_crops([volumes.get(d) for d in self.series_list], centres, axes, self.size, self.mm, affine)

    def draw(self, volumes: Volumes, points: np.ndarray | None, centres: np.ndarray, rng: np.random.Generator,
             augment: Any | None) -> Drawn:
        """Crops at the filled ``centres``; a :class:`~spine.data.grading.RandomCropAugment` moves them (the
        level frames stay those of the unaugmented centres: the anatomy's own axis), rotates, zooms, mirrors."""
        centres = fill_centres(centres)
        axes = level_axes(centres, self.align)
        affine = None
        if augment is not None:
            twin = augment.sample(rng, len(centres))
            centres, affine = twin.centres(centres), twin.affine
        image, present = self.crops(volumes, centres, axes, affine)
        return Drawn(image, present, centres, bool(affine is not None and affine.flip_lr))

    def augment(self, config, landmark_errors: Callable[[], np.ndarray | None]) -> Any:
        """Centres moved like the landmark model errs (Gaussian, level slips), crops rotated, zoomed, mirrored."""
        from spine.data.grading import RandomCropAugment

        a = config
        return RandomCropAugment(a.jitter_mm, a.level_shift, tuple(a.rotate_deg), a.scale, a.flip_lr)

    def model_kwargs(self) -> dict[str, Any]:
        return {"in_chans": len(self.series_list), "num_conditions": len(CONDITIONS), "crop_size": list(self.size)}

    def describe(self) -> str:
        return f"crop {'x'.join(map(str, self.size))}"

    def resized(self, crop: Sequence[int], view: Sequence[int]) -> CropInput:
        return dataclasses.replace(self, size=tuple(int(v) for v in crop))


@dataclass(frozen=True)
class ViewInput(GradingInput):
    """Per-condition views (:class:`~spine.data.views.ViewSet`): every condition's views at every level,
    right-side views mirrored onto the left (so no mirrored pass at inference)."""

    views: ViewSet
    align: bool = True

    kind: ClassVar[str] = "views"

    @classmethod
    def from_stage(cls, stage) -> ViewInput:
        """From the grading stage config (``views`` per group, ``crop.align``)."""
        if not stage.views:
            raise ValueError("reads views: stage.views must list them per group")
        return cls(ViewSet.from_config(stage.views), bool(stage.crop.align))

    @property
    def series(self) -> list[str]:
        return self.views.series

    @property
    def item_shape(self) -> tuple[int, ...]:
        return (len(CONDITIONS), self.views.num_views, *self.views.shape)

    def build(self, volumes: Volumes, points: np.ndarray, affine: GridAffine | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
        return build_views(dict(volumes), points, self.views, self.align, affine)

    def draw(self, volumes: Volumes, points: np.ndarray | None, centres: np.ndarray, rng: np.random.Generator,
             augment: Any | None) -> Drawn:
        """Views at ``points``; a :class:`~spine.data.grading.RandomPointAugment` moves them like the landmark
        run errs, rotates and zooms every view. ``centres`` are reported from the (moved) points."""
        if points is None:
            raise ValueError("views need points: one (K, L, 3) table per study")
        affine = None
        if augment is not None:
            twin = augment.sample(rng, points)
            points, affine = twin.points(points), twin.affine
        image, present = self.build(volumes, points, affine)
        return Drawn(image, present, fill_centres(level_centres(points)), False)

    def augment(self, config, landmark_errors: Callable[[], np.ndarray | None]) -> Any:
        """Points moved by the landmark run's own errors (else Gaussian), every view rotated and zoomed."""
        from spine.data.grading import RandomPointAugment

        a = config
        return RandomPointAugment(landmark_errors(), a.jitter_mm, a.level_shift, tuple(a.rotate_deg), a.scale)

    def model_kwargs(self) -> dict[str, Any]:
        return {"view_shape": list(self.views.shape), "num_views": self.views.num_views, "groups": view_groups(),
                "num_present": len(self.views.series)}

    def describe(self) -> str:
        return f"views {'x'.join(map(str, self.views.shape))}"

    def resized(self, crop: Sequence[int], view: Sequence[int]) -> ViewInput:
        slices, rows, cols = (int(v) for v in view)
        groups = {g: tuple(dataclasses.replace(v, slices=slices, size=(rows, cols)) for v in views)
                  for g, views in self.views.groups.items()}
        return dataclasses.replace(self, views=ViewSet(groups))


INPUT_KINDS: dict[str, type[GradingInput]] = {CropInput.kind: CropInput, ViewInput.kind: ViewInput}


def input_kind(model_name: str) -> str:
    """The input kind grading model ``model_name`` declares (``@register_model(inputs=...)``)."""
    from spine.models.registry import model_inputs

    kind = model_inputs(model_name)
    if kind not in INPUT_KINDS:
        raise ValueError(f"model {model_name!r} declares no grading input (got {kind!r}; one of "
                         f"{', '.join(INPUT_KINDS)})")
    return kind


def grading_input(model_name: str, stage) -> GradingInput:
    """The input object of grading model ``model_name`` under the grading stage config ``stage``."""
    try:
        return INPUT_KINDS[input_kind(model_name)].from_stage(stage)
    except ValueError as err:  # a stage config that lacks what the input needs: name the model
        raise ValueError(f"model {model_name} {err}") from None

