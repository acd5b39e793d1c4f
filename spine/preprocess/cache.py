"""The preprocessing cache on disk: its layout, its id, atomic writes, and `Cache`, the reader every stage uses.

Layout of ``cache_dir/<cache id>/``:
    cache.json                         how it was made (spacing, orientation, code version)
    series.csv                         one row per series (status ok / error, reason, shapes, geometry)
    coordinates.csv                    every label point: DICOM pixel, world LPS mm, cache voxel (i, j, k)
    folds.csv                          study_id -> fold
    volumes/{study}/{series}.nii       float32 patient volume, NIfTI-1 uncompressed (memory-mappable)
    volumes/{study}/{series}_mask.nii.gz   uint8 coverage mask (1 = some stack covers the voxel)
    volumes/{study}/{series}.json      the series' record: written last, so its presence means complete

The cache id is a readable prefix and a short hash of everything that changes the voxels: the spacing per
series type, the orientation, interpolation and fill choices, the stack rules and `CACHE_VERSION` (bump it
whenever the volume code changes what it writes).

Voxel frame: continuous index (i, j, k), ``image.TransformContinuousIndexToPhysicalPoint((i, j, k))`` = LPS
mm, identity direction; nibabel's array order [i, j, k] of the .nii (see spine/preprocess/volume.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from spine.constants import series_type
from spine.preprocess.volume import FILL_VALUE, Grid

__all__ = ["CACHE_VERSION", "Cache", "CacheError", "cache_id", "cache_params", "format_triple", "parse_triple", "volume_options"]

CACHE_VERSION = 4  # 2: grid never finer than acquired; 3: other-orientation and overlapped stacks left out;
# 4: interleaved stacks of two slice sizes merged into one
CACHE_PREFIX = "lps"  # every volume is LPS-aligned (identity direction)
SERIES_COLUMNS = ["split", "study_id", "series_id", "description", "status", "reason", "n_stacks",
                  "n_slices", "n_skipped_files", "orig_shape", "orig_spacing", "shape", "spacing", "origin"]
COORDINATE_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y",
                      "world_x", "world_y", "world_z", "voxel_i", "voxel_j", "voxel_k"]
FOLD_COLUMNS = ["study_id", "fold"]


def cache_params(spacing: dict[str, tuple[float, float, float]], min_slices: int, max_gap_factor: float) -> dict:
    """Everything that decides the voxels of a cache (and so its id)."""
    return {
        "version": CACHE_VERSION,
        "orientation": "LPS identity direction: i -> +x (left), j -> +y (posterior), k -> +z (head)",
        "grid": "bounding box of the stacks' voxel centres, origin at its minimum corner",
        "interpolation": "linear",
        "fill_value": FILL_VALUE,
        "combine": "mean of the stacks covering a voxel",
        "spacing_mm": {key: [float(v) for v in values] for key, values in sorted(spacing.items())},
        "min_slices": int(min_slices),
        "max_gap_factor": float(max_gap_factor),
    }


def cache_id(params: dict) -> str:
    """``lps-v2-<8 hex digits>``: readable prefix and a hash of `cache_params`."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"{CACHE_PREFIX}-v{CACHE_VERSION}-{digest}"


def volume_options(params: dict, description: str | None) -> dict:
    """`make_volume` keyword arguments from a cache's params (cache.json ``params``) for a series description."""
    from spine.preprocess.config import DEFAULT_MAX_GAP_FACTOR, DEFAULT_MIN_SLICES
    from spine.preprocess.volume import spacing_for

    return {"spacing_mm": spacing_for(description, params.get("spacing_mm")),
            "min_slices": int(params.get("min_slices", DEFAULT_MIN_SLICES)),
            "max_gap_factor": float(params.get("max_gap_factor", DEFAULT_MAX_GAP_FACTOR))}


def format_triple(values) -> str:
    """(3,) numbers as ``'x y z'`` (how series.csv stores shapes, spacings and origins)."""
    return " ".join(f"{float(v):.6g}" if not float(v).is_integer() else str(int(v)) for v in values)


def parse_triple(text: str) -> np.ndarray:
    """Inverse of `format_triple`."""
    return np.array([float(v) for v in str(text).split()])


# --------------------------------------------------------------------------------------- file paths


def volume_path(root: Path, study_id: int, series_id: int) -> Path:
    return Path(root) / "volumes" / str(int(study_id)) / f"{int(series_id)}.nii"


def mask_path(root: Path, study_id: int, series_id: int) -> Path:
    return Path(root) / "volumes" / str(int(study_id)) / f"{int(series_id)}_mask.nii.gz"


def record_path(root: Path, study_id: int, series_id: int) -> Path:
    return Path(root) / "volumes" / str(int(study_id)) / f"{int(series_id)}.json"


def _tmp_name(path: Path) -> Path:
    """A hidden temporary name in the same folder, with the same extension (ITK picks its writer by it)."""
    suffix = "".join(path.suffixes)
    return path.with_name(f".{path.name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")


def remove_partials(folder: Path, series_id: int | None = None) -> None:
    """Delete the temporary files a killed run left in a study folder (of one series, or of all)."""
    if folder.is_dir():
        for stale in folder.glob(f".{'' if series_id is None else int(series_id)}*.tmp*"):
            stale.unlink(missing_ok=True)


def write_image(image: sitk.Image, path: Path, compress: bool = False) -> None:
    """Write an image atomically: to a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        sitk.WriteImage(image, str(tmp), compress, 1 if compress else -1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: Path) -> None:
    """Write a text file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text(frame.to_csv(index=False), path)


# -------------------------------------------------------------------------------------------- reader


class CacheError(FileNotFoundError):
    """No usable cache: none, several to choose from, or one made by another cache version."""


def _version_of(root: Path) -> int | None:
    """The cache version in ``root/cache.json`` (None when unreadable)."""
    try:
        return int(json.loads((root / "cache.json").read_text())["params"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Cache:
    """A preprocessing cache: ``Cache(root)`` with root the cache-id folder (the one holding series.csv).

    Attributes:
        cache_id: the folder's name (``lps-v2-<hash>``).
        root: that folder.
        info: cache.json (how it was made).
        series: series.csv as a DataFrame (column ``description`` is the series description).
        coordinates: coordinates.csv (empty if the train split was not processed).
        folds: folds.csv, study_id and fold.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "series.csv").is_file():
            raise FileNotFoundError(f"{self.root} is not a preprocessing cache (no series.csv)")
        self.cache_id = self.root.name
        info = self.root / "cache.json"
        self.info: dict = json.loads(info.read_text()) if info.is_file() else {}

    @classmethod
    def open(cls, cache_dir: str | Path) -> Cache:
        """The cache in ``cache_dir``: cache_dir itself if it is a cache-id folder, else the one cache-id folder
        inside it. Never guesses: several caches in ``cache_dir`` are an error that lists them, and a cache made
        by another ``CACHE_VERSION`` is refused with the command that rebuilds it (:class:`CacheError`)."""
        cache_dir = Path(cache_dir)
        if (cache_dir / "series.csv").is_file():
            return cls._checked(cache_dir)
        candidates = sorted(d for d in cache_dir.iterdir() if (d / "series.csv").is_file()) if cache_dir.is_dir() else []
        if not candidates:
            raise CacheError(f"no preprocessing cache in {cache_dir} (run python -m spine.preprocess)")
        current = [d for d in candidates if _version_of(d) == CACHE_VERSION]
        if len(current) > 1 or (len(candidates) > 1 and not current):
            raise CacheError(f"{cache_dir} holds {len(candidates)} caches ({', '.join(d.name for d in candidates)}): "
                             f"pass one of them as cache_dir={cache_dir}/<cache id>")
        return cls._checked(current[0] if current else candidates[0])

    @classmethod
    def _checked(cls, root: Path) -> Cache:
        version = _version_of(root)
        if version != CACHE_VERSION:
            raise CacheError(f"{root} was made by cache version {version}, this spine reads version {CACHE_VERSION}: "
                             f"rebuild it with python -m spine.preprocess (same data_dir and options)")
        return cls(root)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # ---- tables
    @cached_property
    def series(self) -> pd.DataFrame:
        """series.csv: ids int64, counts nullable Int64 (empty for series that could not be read), text otherwise."""
        frame = pd.read_csv(self.root / "series.csv", dtype=str, keep_default_na=False)
        for column in ("study_id", "series_id"):
            frame[column] = frame[column].astype(np.int64)
        for column in ("n_stacks", "n_slices", "n_skipped_files"):
            frame[column] = pd.to_numeric(frame[column].replace("", None)).astype("Int64")
        frame["description"] = [series_type(d) for d in frame["description"]]  # also caches of older runs
        return frame

    @cached_property
    def coordinates(self) -> pd.DataFrame:
        path = self.root / "coordinates.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=COORDINATE_COLUMNS)

    @cached_property
    def folds(self) -> pd.DataFrame:
        path = self.root / "folds.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=FOLD_COLUMNS)

    # ---- series
    def series_of(self, study_id: int, description: str) -> list[int]:
        """Ids of the ok series of one type in a study, ascending (``description`` in any case and spacing)."""
        s = self.series
        rows = s[(s.study_id == int(study_id)) & (s.description == series_type(description)) & (s.status == "ok")]
        return sorted(int(v) for v in rows.series_id)

    def row(self, study_id: int, series_id: int) -> pd.Series:
        s = self.series
        rows = s[(s.study_id == int(study_id)) & (s.series_id == int(series_id))]
        if rows.empty:
            raise KeyError(f"series {study_id}/{series_id} is not in {self.root / 'series.csv'}")
        return rows.iloc[0]

    def grid(self, study_id: int, series_id: int) -> Grid:
        """Geometry of a cached volume from series.csv, without reading the volume."""
        row = self.row(study_id, series_id)
        if row.status != "ok":
            raise KeyError(f"series {study_id}/{series_id} has no volume: {row.reason}")
        size = tuple(int(v) for v in parse_triple(row["shape"]))
        return Grid(parse_triple(row.origin), parse_triple(row.spacing), size)  # type: ignore[arg-type]

    def world_to_voxel(self, study_id: int, series_id: int, points_lps) -> np.ndarray:
        """LPS mm (N, 3) -> continuous voxel index (N, 3) of that series' cached volume (cross-series projection)."""
        return self.grid(study_id, series_id).world_to_voxel(points_lps)

    def voxel_to_world(self, study_id: int, series_id: int, ijk) -> np.ndarray:
        return self.grid(study_id, series_id).voxel_to_world(ijk)

    # ---- how the volumes were made (for building the same volumes in memory at inference)
    def volume_options(self, description: str | None) -> dict:
        """Keyword arguments of `make_volume` that reproduce this cache's volumes for a series type."""
        return volume_options(self.info.get("params", {}), description)

    # ---- volumes
    def volume_path(self, study_id: int, series_id: int) -> Path:
        return volume_path(self.root, study_id, series_id)

    def mask_path(self, study_id: int, series_id: int) -> Path:
        return mask_path(self.root, study_id, series_id)

    def load_volume(self, study_id: int, series_id: int) -> sitk.Image:
        """The cached volume: float32 SimpleITK image with LPS geometry."""
        return sitk.ReadImage(str(self.volume_path(study_id, series_id)), sitk.sitkFloat32)

    def load_mask(self, study_id: int, series_id: int) -> sitk.Image:
        """uint8 coverage mask on the volume's grid (1 where a stack covers the voxel)."""
        return sitk.ReadImage(str(self.mask_path(study_id, series_id)), sitk.sitkUInt8)

    def load_array(self, study_id: int, series_id: int) -> np.ndarray:
        """The volume as a read-only memory-mapped float32 array indexed [i, j, k] (nibabel order)."""
        import nibabel as nib

        return np.asanyarray(nib.load(self.volume_path(study_id, series_id), mmap=True).dataobj)
