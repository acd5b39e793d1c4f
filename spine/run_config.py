"""The schema of a training run's config: ``TrainConfig`` with ``ModelConfig``, ``OptimConfig`` and, per stage, its
own dataclass registered in ``STAGES``.

What ``spine-train`` composes (:mod:`spine.train.config`) and what a run folder stores as ``config.yaml``, read
back by :func:`spine.run_folder.load_run_config` (training's landmark runs, ``spine-predict``, packaging). Only
dataclasses here (no torch, nothing of :mod:`spine.train`), so a bad override fails in a second and inference
reads a run's config without the training code. The ``stage`` node is validated against the schema of the
stage it names (``STAGES``): each stage brings its own options, and a later stage registers its schema here
without touching the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from spine.cli import require_length, require_pairs, require_range
from spine.constants import CONDITIONS, SERIES_TYPES

__all__ = ["STAGES", "CropConfig", "GradingAugmentConfig", "GradingStageConfig", "GridConfig", "LandmarkAugmentConfig",
           "LandmarkStageConfig", "ModelConfig", "OptimConfig", "TrainConfig", "merge_stage"]


# ------------------------------------------------------------------------------------------- stages
@dataclass
class GridConfig:
    """The landmark grid: axes along world x (patient left), y (posterior), z (head), centred on the volume."""

    size: list[int] = field(default_factory=lambda: [24, 80, 96])  # voxels along x, y, z
    spacing_mm: list[float] = field(default_factory=lambda: [4.0, 4.0, 4.0])  # mm between voxels along x, y, z

    def __post_init__(self) -> None:
        if len(self.size) != 3 or len(self.spacing_mm) != 3 or min(self.size) < 1 or min(self.spacing_mm) <= 0:
            raise ValueError(f"grid: size and spacing_mm need 3 positive values, got {self.size}, {self.spacing_mm}")


@dataclass
class LandmarkAugmentConfig:
    """Random geometry (applied when the grid is sampled) and torchio intensity transforms."""

    enabled: bool = True  # augment training samples; false: none of the transforms below
    rotate_deg: list[float] = field(default_factory=lambda: [10.0, 5.0, 5.0])  # max |angle| about x, y, z
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    translate_mm: list[float] = field(default_factory=lambda: [6.0, 16.0, 16.0])  # max |shift| along x, y, z
    flip_lr: float = 0.5  # probability of a left-right mirror (left/right points are swapped)
    bias_field: float = 0.3  # torchio RandomBiasField coefficients; 0 = off
    gamma: float = 0.3  # torchio RandomGamma log-gamma range; 0 = off
    noise_std: float = 0.03  # torchio RandomNoise std upper bound (normalised units); 0 = off

    def __post_init__(self) -> None:
        require_length(self, "rotate_deg translate_mm", 3, prefix="stage.augment.")
        _check_augment(self, "rotate_deg translate_mm bias_field gamma noise_std")


@dataclass
class LandmarkStageConfig:
    name: str = "landmarks"  # the stage (landmarks | grading); its options are the stage.* keys
    # Input channels, in order; the first series present defines the grid centre. A missing series is a
    # zero channel.
    series: list[str] = field(default_factory=lambda: ["Sagittal T2/STIR", "Sagittal T1"])
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))  # points: conditions x 5 levels
    grid: GridConfig = field(default_factory=GridConfig)
    augment: LandmarkAugmentConfig = field(default_factory=LandmarkAugmentConfig)
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])  # robust per-series normalisation
    sigma_mm: float = 8.0  # target Gaussian of the heatmap cross-entropy
    l1_scale_mm: float = 10.0  # loss = heatmap_weight * CE + mean |error mm| / l1_scale_mm
    heatmap_weight: float = 1.0  # weight of the heatmap cross-entropy in the loss (see l1_scale_mm)
    decode: str = "global"  # global: soft-argmax over the grid; local: around each heatmap's peak only
    decode_radius_mm: float = 12.0  # half-width of the local window
    plot_studies: int = 4  # studies drawn in the PNG of each validation
    cache_mb: float = 1024.0  # prepared volumes kept in memory per data-loading process (LRU)

    def __post_init__(self) -> None:
        bad = [s for s in self.series if s not in SERIES_TYPES]
        if bad or not self.series:
            raise ValueError(f"stage.series: {bad or self.series} not in {list(SERIES_TYPES)}")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise ValueError(f"stage.conditions: {bad or self.conditions} not in {list(CONDITIONS)}")
        if self.decode not in ("global", "local"):
            raise ValueError(f"stage.decode must be global or local, got {self.decode!r}")
        _check_percentiles(self)
        require_range(self, "sigma_mm l1_scale_mm decode_radius_mm", 0.0, low_open=True, prefix="stage.")
        require_range(self, "heatmap_weight plot_studies cache_mb", 0, prefix="stage.")
        sides = {c.split("_", 1)[1] for c in self.conditions if c.startswith(("left_", "right_"))}
        for rest in sides:
            if self.augment.flip_lr > 0 and not {f"left_{rest}", f"right_{rest}"} <= set(self.conditions):
                raise ValueError(f"stage.augment.flip_lr needs both left_{rest} and right_{rest} in "
                                 "stage.conditions (a flip swaps them)")


@dataclass
class CropConfig:
    """The per-level crop grid (axes i: patient left, j: posterior, k: head)."""

    size: list[int] = field(default_factory=lambda: [64, 64, 64])  # voxels along i, j, k
    mm: list[float] = field(default_factory=lambda: [80.0, 64.0, 48.0])  # physical extent along i, j, k
    align: bool = True  # k follows the local spine axis through the neighbouring levels

    def __post_init__(self) -> None:
        if len(self.size) != 3 or len(self.mm) != 3 or min(self.size) < 1 or min(self.mm) <= 0:
            raise ValueError(f"crop: size and mm need 3 positive values, got {self.size}, {self.mm}")


@dataclass
class GradingAugmentConfig:
    """Training crops: landmark-like centre errors, geometry, torchio intensity transforms."""

    enabled: bool = True  # augment training crops; false: none of the transforms below
    jitter_mm: float = 2.5  # std of the centre error per world axis (the landmark stage's median is ~3 mm)
    level_shift: float = 0.02  # probability per level of cropping a neighbouring level instead
    rotate_deg: list[float] = field(default_factory=lambda: [10.0, 10.0, 10.0])  # max |angle| about i, j, k
    scale: float = 0.1  # zoom in [1 - scale, 1 + scale]
    flip_lr: float = 0.5  # mirror across the sagittal midline; left/right labels are swapped
    bias_field: float = 0.0  # torchio RandomBiasField coefficients; 0 = off
    gamma: float = 0.3  # torchio RandomGamma log-gamma range; 0 = off
    noise_std: float = 0.03  # torchio RandomNoise std upper bound (normalised units); 0 = off

    def __post_init__(self) -> None:
        require_length(self, "rotate_deg", 3, prefix="stage.augment.")
        require_range(self, "level_shift", 0.0, 1.0, prefix="stage.augment.")
        _check_augment(self, "rotate_deg jitter_mm bias_field gamma noise_std")


@dataclass
class GradingStageConfig:
    name: str = "grading"  # the stage (landmarks | grading); its options are the stage.* keys
    series: list[str] = field(default_factory=lambda: list(SERIES_TYPES))  # crop channels, in order
    crop: CropConfig = field(default_factory=CropConfig)
    augment: GradingAugmentConfig = field(default_factory=GradingAugmentConfig)
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])  # robust per-series normalisation
    labels: str = ""  # train.csv; empty: the one in the data_dir recorded in the cache's cache.json
    loss: str = "ce"  # ce | focal | bce (see spine.losses.grading_loss)
    class_weights: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])  # the metric's weights
    any_severe_weight: float = 1.0  # weight of the any-severe-spinal term (the metric: 1 of 4 parts)
    focal_gamma: float = 2.0  # focusing exponent of loss=focal (0: cross-entropy)
    # Oversampling: a study is drawn with the weight of its worst labelled grade (Normal/Mild, Moderate,
    # Severe). [1, 1, 1] = uniform. The class weights of the loss already match the metric, so oversampling
    # on top of them shifts the predicted priors; calibration (below) corrects a part of that.
    sampler_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    calibrate: bool = True  # fit temperatures + any-severe scale on the run's OOF (calibration.json)
    tta_flip: bool = False  # validation/test: average with the mirrored crop (left/right swapped back)
    # Per-condition views, read by the models registered with inputs="views" (spine.data.inputs: the model
    # declares what it reads; the others read the crop above). (slices, rows, columns) of every view that does not set
    # its own slices / size: an experiment resizes all views in one line (stage.view_size: [5, 128, 128]).
    view_size: list[int] = field(default_factory=lambda: [3, 32, 32])
    # {group: {view name: view}} for the groups spinal, foraminal, subarticular; each view: series, plane,
    # centre, mm, slice_mm, shift_mm, size, slices (spine/data/views.py). Named, so that an override merges:
    # stage.views.spinal.axial_t2.mm=[48,48] changes one view, stage.views.spinal.axial_t2=null drops it.
    # A group given as a list [view, ...] replaces the group (run folders written before view names).
    # Validated into {group: [view, ...]} in order, each view with its slices and size.
    views: dict[str, Any] = field(default_factory=lambda: _default_views())

    def __post_init__(self) -> None:
        bad = [s for s in self.series if s not in SERIES_TYPES]
        if bad or not self.series:
            raise ValueError(f"stage.series: {bad or self.series} not in {list(SERIES_TYPES)}")
        if self.loss not in ("ce", "focal", "bce"):
            raise ValueError(f"stage.loss must be ce, focal or bce, got {self.loss!r}")
        for name in ("class_weights", "sampler_weights"):
            values = getattr(self, name)
            if len(values) != 3 or min(values) < 0 or max(values) <= 0:
                raise ValueError(f"stage.{name} needs 3 non-negative values (Normal/Mild, Moderate, Severe)")
        _check_percentiles(self)
        require_range(self, "any_severe_weight focal_gamma", 0.0, prefix="stage.")
        require_length(self, "view_size", 3, prefix="stage.")
        require_range(self, "view_size", 1, prefix="stage.")
        self.views = {group: _view_list(views, self.view_size) for group, views in self.views.items()}


def _default_views() -> dict[str, dict[str, dict]]:
    """The plane each condition is read in, a few slices around the condition's own point; right-side views are
    mirrored onto the left (spine/data/views.py). Size and slices: ``view_size``."""
    def view(series: str, plane: str, centre: str, mm: float) -> dict:
        return {"series": series, "plane": plane, "centre": centre, "mm": [mm, mm], "slice_mm": 3.0}

    return {
        "spinal": {"sagittal_t2": view("Sagittal T2/STIR", "sagittal", "spinal", 40.0),
                   "axial_t2": view("Axial T2", "axial", "spinal", 40.0)},
        "foraminal": {"sagittal_t1": view("Sagittal T1", "sagittal", "foraminal", 32.0),
                      "axial_t2": view("Axial T2", "axial", "foraminal", 32.0)},
        "subarticular": {"axial_t2": view("Axial T2", "axial", "subarticular", 32.0),
                         "sagittal_t2": view("Sagittal T2/STIR", "sagittal", "subarticular", 32.0)},
    }


_VIEW_KEYS = ("series", "plane", "centre", "size", "mm", "slices", "slice_mm", "shift_mm")  # as views are stored


def _view_list(views: Any, view_size: list[int]) -> list[dict]:
    """A group's views as a list (named views in their order, null ones dropped), each with ``slices`` and
    ``size`` (from ``view_size`` where the view sets none) and its keys in the stored order."""
    items = views.values() if isinstance(views, dict) else views
    out = []
    for view in items:
        if view is None:
            continue
        view = {"size": list(view_size[1:]), "slices": view_size[0], **dict(view)}
        out.append({**{k: view[k] for k in _VIEW_KEYS if k in view}, **view})
    return out


def merge_stage(schema: type, stage: dict) -> Any:
    """The stage node of a config: ``stage`` merged onto ``schema`` (an OmegaConf node, validated by
    ``OmegaConf.to_object``). ``views`` merge view by view; a group given as a list replaces the group."""
    from omegaconf import OmegaConf

    stage = dict(stage)
    views = stage.pop("views", None)
    node = OmegaConf.merge(OmegaConf.structured(schema), stage)
    if views is not None:
        views = OmegaConf.to_container(views) if OmegaConf.is_config(views) else dict(views)
        merged = OmegaConf.to_container(node.views)
        for group, given in views.items():
            if isinstance(given, dict) and isinstance(merged.get(group), dict):
                given = OmegaConf.to_container(OmegaConf.merge(merged[group], given))
            merged[group] = given
        node.views = merged
    return node


def _check_augment(augment: object, non_negative: str) -> None:
    """The keys both stages' augmentations share: a probability, a zoom below 100 %, magnitudes >= 0."""
    require_range(augment, "flip_lr", 0.0, 1.0, prefix="stage.augment.")
    require_range(augment, "scale", 0.0, 1.0, high_open=True, prefix="stage.augment.")  # zoom in [1 - s, 1 + s]
    require_range(augment, non_negative, 0.0, prefix="stage.augment.")


def _check_percentiles(stage: object) -> None:
    """``stage.percentiles``: the robust range [low, high] of the normalisation, 0 <= low < high <= 100."""
    require_pairs(stage, "percentiles", 0.0, 100.0, prefix="stage.")
    if stage.percentiles[0] == stage.percentiles[1]:
        raise ValueError(f"stage.percentiles must be [low, high] with low < high, got {stage.percentiles!r}")


# name -> (schema, "module:Class" of the stage plug-in). Import paths keep torch out of config loading.
STAGES: dict[str, tuple[type, str]] = {
    "landmarks": (LandmarkStageConfig, "spine.train.landmarks:LandmarkStage"),
    "grading": (GradingStageConfig, "spine.train.grading:GradingStage"),
}


# -------------------------------------------------------------------------------------- model, optim
@dataclass
class ModelConfig:
    name: str = "landmark_25d"  # a registered model (spine.models.list_models())
    args: dict[str, Any] = field(default_factory=dict)  # constructor arguments beyond what the stage sets
    weights: Optional[str] = None  # local whole-model weights to start from (.safetensors or torch)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak AdamW learning rate (after the warmup)
    weight_decay: float = 0.05  # AdamW; not applied to biases and norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    warmup_epochs: float = 1.0  # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.01  # the cosine decay ends at min_lr_ratio * lr
    grad_clip: float = 1.0  # max global gradient norm; 0 = off

    def __post_init__(self) -> None:
        require_range(self, "lr", 0.0, low_open=True, prefix="optim.")  # 0 would train nothing
        require_range(self, "weight_decay warmup_epochs grad_clip", 0.0, prefix="optim.")
        require_range(self, "min_lr_ratio", 0.0, 1.0, prefix="optim.")
        require_length(self, "betas", 2, prefix="optim.")
        require_range(self, "betas", 0.0, 1.0, high_open=True, prefix="optim.")


@dataclass
class TrainConfig:
    stage: Any = field(default_factory=dict)  # validated against STAGES[stage.name][0]
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    experiment: str = ""  # name of the experiment preset, recorded with the run
    cache_dir: str = "cache"  # a preprocessing cache: a cache-id folder, or a folder holding exactly one
    run_dir: str = "runs/landmarks"  # where the run folder goes (fold<k>/ inside)
    # grading: the landmark run whose oof.csv / test.csv centre the validation / test crops (the real
    # two-stage pipeline). Empty: label points (an optimistic CV, with a warning) and no test predictions.
    landmarks: str = ""
    fold: str = "0"  # a fold number of folds.csv, or "all" (each fold in turn)
    epochs: int = 30  # epochs per fold
    batch_size: int = 8  # per process
    num_workers: int = 2  # DataLoader worker processes per training process
    max_steps_per_epoch: int = 0  # > 0: cut epochs short (smoke runs)
    val_every: int = 1  # validate every n epochs (and after the last)
    predict_test: bool = True  # write predictions for the cache's test studies
    seed: int = 0  # + fold: initialisation, sampling, augmentation
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    amp: str = "bf16"  # bf16 | fp16 | none; ignored on CPU
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the model
    ema: float = 0.0  # EMA decay of the weights (0 = off); validation and saved weights use the EMA
    resume: bool = False  # continue an interrupted run from its last checkpoint
    overwrite: bool = False  # replace a finished fold instead of refusing
    tensorboard: bool = True  # also write metrics as TensorBoard scalars (tb/)
    progress: bool = True  # progress bar on a terminal; elsewhere one line per epoch

    def __post_init__(self) -> None:
        self.fold = str(self.fold)
        if self.fold != "all" and not self.fold.isdigit():
            raise ValueError(f"fold must be a fold number or 'all', got {self.fold!r}")
        if self.amp not in ("bf16", "fp16", "none"):
            raise ValueError(f"amp must be bf16, fp16 or none, got {self.amp!r}")
        require_range(self, "epochs batch_size val_every", 1)
        require_range(self, "num_workers", 0)
        require_range(self, "ema", 0.0, 1.0, high_open=True)  # a decay of 1 would never leave the initial weights
