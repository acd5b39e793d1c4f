"""The preprocessing cache on disk, the one owner of its contract: its layout and file names, its id, atomic
writes, and `Cache`, the reader every stage uses (``python -m spine.preprocess`` writes it through this module).

Layout of ``cache_dir/<cache id>/`` (the names are this module's constants):
    cache.json                         how it was made (stack rules, code version)                  CACHE_JSON
    series.csv                         one row per series (status ok / error, reason, its stacks)   SERIES_CSV
    coordinates.csv                    every label point: DICOM pixel, world LPS mm, stack voxel    COORDINATES_CSV
    coordinates_unresolved.csv         the label points without a position, with the reason         UNRESOLVED_CSV
    folds.csv                          study_id -> fold                                             FOLDS_CSV
    volumes/{study}/{series}_{n}.nii   stack n of the series on its acquired grid, NIfTI-1 uncompressed
                                       (memory-mappable), the stored integers where the rescale keeps them integral
    volumes/{study}/{series}.json      the series' record, with every stack's exact geometry: written last, so
                                       its presence means complete

Each stack is what dcm2niix would write: voxel (i, j, k) = DICOM column, row and slice (slices sorted along the
normal by ImagePositionPatient), NIfTI affine = LPS->RAS of ``origin + direction @ (ijk * spacing)``. The
record keeps every slice's true IPP (float64), so irregular stacks (uneven steps, missing slices, gantry-tilt
shear) are sampled from their true positions, and stack geometry never goes through the NIfTI header's float32.
Nothing is resampled here: every network input is sampled from these stacks when it is taken
(`spine.data.volume.SeriesVolume.sample`).

The cache id is a readable prefix and a short hash of everything that changes what is written: the stack rules
and `CACHE_VERSION` (bump it whenever the code changes what it writes).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from spine.constants import series_type
from spine.data.defaults import DEFAULT_MAX_GAP_FACTOR, DEFAULT_MIN_SLICES
from spine.data.volume import SeriesVolume
from spine.errors import SpineError, one_line
from spine.io.dicom import DicomStack

__all__ = ["CACHE_JSON", "CACHE_VERSION", "COORDINATES_CSV", "FOLDS_CSV", "LABEL_DEFECTS", "SERIES_CSV", "UNRESOLVED_CSV",
           "Cache", "label_defect",
           "CacheError", "cache_id", "cache_params", "format_triple", "parse_triple", "read_stack", "stack_record",
           "volume_options", "write_stack"]

CACHE_VERSION = 6  # 2: grid never finer than acquired; 3: other-orientation and overlapped stacks left out;
# 4: interleaved stacks of two slice sizes merged into one; 5: the acquired stacks, no resampling; 6: label points
# on an ambiguous InstanceNumber, off their image or with an unknown condition / level name left unresolved
CACHE_PREFIX = "stacks"  # every series is kept as its acquired stacks
CACHE_JSON, SERIES_CSV, COORDINATES_CSV, FOLDS_CSV = "cache.json", "series.csv", "coordinates.csv", "folds.csv"
UNRESOLVED_CSV = "coordinates_unresolved.csv"  # label coordinates without a position, with the reason
# reasons that say the label itself is wrong (not a series that is missing or unreadable): spine-doctor fails them
LABEL_DEFECTS = ("ambiguous instance", "off its image", "unknown condition", "unknown level")
SERIES_COLUMNS = ["split", "study_id", "series_id", "description", "status", "reason", "n_stacks",
                  "n_slices", "n_skipped_files", "orig_shape", "orig_spacing", "shape", "spacing", "dtype",
                  "irregular"]
COORDINATE_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y",
                      "world_x", "world_y", "world_z", "stack", "voxel_i", "voxel_j", "voxel_k"]
FOLD_COLUMNS = ["study_id", "fold"]
_SERIES_READ = ("split", "study_id", "series_id", "description", "status", "reason", "n_stacks", "n_slices",
                "n_skipped_files")  # the columns of series.csv that readers use
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NIFTI_HEADER_BYTES = 352  # NIfTI-1 single file: 348-byte header + 4-byte extension flag, then the voxels


def label_defect(reason: object) -> bool:
    """Whether an unresolved point's reason says the label itself cannot be placed (`LABEL_DEFECTS`)."""
    return isinstance(reason, str) and any(defect in reason for defect in LABEL_DEFECTS)


def cache_params(min_slices: int, max_gap_factor: float) -> dict:
    """Everything that decides what a cache holds (and so its id)."""
    return {
        "version": CACHE_VERSION,
        "layout": "acquired stacks: i = DICOM column, j = row, k = slice sorted along the normal by IPP",
        "dtype": "stored integers where RescaleSlope/Intercept keep them integral (int16 or uint16), else float32",
        "min_slices": int(min_slices),
        "max_gap_factor": float(max_gap_factor),
    }


def cache_id(params: dict) -> str:
    """``stacks-v<CACHE_VERSION>-<8 hex digits>``: readable prefix and a hash of `cache_params`."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"{CACHE_PREFIX}-v{CACHE_VERSION}-{digest}"


def volume_options(params: dict) -> dict:
    """`spine.preprocess.volume.make_volume` keyword arguments from a cache's params (cache.json ``params``)."""
    return {"min_slices": int(params.get("min_slices", DEFAULT_MIN_SLICES)),
            "max_gap_factor": float(params.get("max_gap_factor", DEFAULT_MAX_GAP_FACTOR))}


def format_triple(values) -> str:
    """(3,) numbers as ``'x y z'`` (how series.csv stores shapes, spacings and origins)."""
    return " ".join(f"{float(v):.6g}" if not float(v).is_integer() else str(int(v)) for v in values)


def parse_triple(text: str) -> np.ndarray:
    """Inverse of `format_triple`."""
    return np.array([float(v) for v in str(text).split()])


# --------------------------------------------------------------------------------------- file paths


def stack_path(root: Path, study_id: int, series_id: int, index: int) -> Path:
    return Path(root) / "volumes" / str(int(study_id)) / f"{int(series_id)}_{int(index)}.nii"


def record_path(root: Path, study_id: int, series_id: int) -> Path:
    return Path(root) / "volumes" / str(int(study_id)) / f"{int(series_id)}.json"


def _tmp_name(path: Path) -> Path:
    """A hidden temporary name in the same folder, with the same extension (ITK picks its writer by it)."""
    suffix = "".join(path.suffixes)
    return path.with_name(f".{path.name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")


def remove_partials(folder: Path, series_id: int | None = None) -> None:
    """Delete the temporary files a killed run left in a study folder (of one series, or of all): hidden
    ``.{series}.{pid}.tmp.json`` and ``.{series}_{n}.{pid}.tmp.nii`` (`_tmp_name`); never those of a series
    whose id merely starts with the same digits."""
    if not folder.is_dir():
        return
    patterns = [".*.tmp*"] if series_id is None else [f".{int(series_id)}.*.tmp*", f".{int(series_id)}_*.tmp*"]
    for pattern in patterns:
        for stale in folder.glob(pattern):
            stale.unlink(missing_ok=True)


def storage_dtype(pixels: np.ndarray) -> np.dtype:
    """int16 or uint16 when every value is an integer in its range (the stored DICOM integers after an integral
    rescale), else float32."""
    return _stored(pixels).dtype


def _stored(pixels: np.ndarray) -> np.ndarray:
    """The pixels as they are stored (`storage_dtype`): one min/max, one cast and one comparison, no rounding."""
    values = np.asarray(pixels)
    if values.dtype in (np.int16, np.uint16):
        return values
    if values.size:
        low, high = float(values.min()), float(values.max())  # NaN or inf: not finite, stays float
        if np.isfinite(low) and np.isfinite(high):
            for dtype in (np.int16, np.uint16):
                info = np.iinfo(dtype)
                if info.min <= low and high <= info.max:
                    cast = values.astype(dtype)
                    if values.dtype.kind in "iu" or np.array_equal(cast, values):
                        return cast
                    break  # not integral: no other integer type holds it either
    return values.astype(np.float32, copy=False)


def write_stack(stack: DicomStack, path: Path) -> np.dtype:
    """Write one stack atomically as an uncompressed NIfTI on its own grid (array [i, j, k], RAS affine of the
    stack's affine; the nominal one for an irregular stack, whose true IPPs are in `stack_record`); returns the
    voxel type used.

    The file is nibabel's header (with the qform and sform of the affine, no intensity scaling) followed by the
    pixels as they lie in memory: the C order of the (k, j, i) array is the NIfTI (Fortran) order of [i, j, k], so
    the stored slices are written once, without a transposed copy (byte for byte what ``nib.save`` writes).
    """
    stored = np.ascontiguousarray(_stored(stack.pixels))
    header = nib.Nifti1Header()
    header.set_data_dtype(stored.dtype)
    header.set_data_shape(stored.shape[::-1])
    affine = LPS_TO_RAS @ stack.affine_lps
    header.set_qform(affine, code=1)  # scanner coordinates, as dcm2niix writes them
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header.set_slope_inter(1.0, 0.0)
    header["vox_offset"] = NIFTI_HEADER_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(header.binaryblock + b"\0\0\0\0")  # 348-byte header, no extensions
            handle.write(memoryview(stored).cast("B"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return stored.dtype


def stack_record(stack: DicomStack, name: str) -> dict:
    """The JSON record of one cached stack: its file, exact geometry (every slice's IPP, LPS mm, float64) and
    instance numbers."""
    return {"file": name, "shape_ijk": [int(v) for v in stack.shape[::-1]],
            "pixel_spacing": [float(stack.spacing[1]), float(stack.spacing[0])],  # DICOM order: row, column
            "r": [float(v) for v in stack.direction_lps[:, 0]], "c": [float(v) for v in stack.direction_lps[:, 1]],
            "ipp": [[float(v) for v in ipp] for ipp in stack.image_positions_lps],
            "instance_numbers": [None if n is None else int(n) for n in stack.instance_numbers],
            "slice_thickness": stack.slice_thickness, "regular": bool(stack.is_regular),
            "irregular": irregular_reason(stack)}


def irregular_reason(stack: DicomStack) -> str:
    """Why a stack is sampled piecewise from its true slice positions (empty for a regular one)."""
    what = []
    if not stack.uniform:
        steps = np.diff(stack.slice_positions)
        what.append(f"uneven steps {steps.min():.2f}..{steps.max():.2f} mm")
    if stack.sheared:
        what.append(f"sheared {stack.shear_mm:.2f} mm (gantry tilt)")
    return " and ".join(what)


def range_key(percentiles) -> str:
    """The record's key of a series' robust intensity range (``intensity_range``), e.g. ``'1,99'``: written
    when the series is cached, so that no stage reads every stack again to compute it."""
    return ",".join(f"{float(p):g}" for p in percentiles)


def read_stack(root: Path, folder: Path, record: dict, repair: str = "") -> DicomStack:
    """A cached stack, its pixels memory-mapped read-only ([k, j, i] view of the NIfTI's [i, j, k]); its slice
    positions are its own copy of the record's (IPP, LPS mm).

    Raises:
        CacheError: the stack file is missing, cut short or not the record's shape; the message names the file
            and ends with ``repair`` (how to rebuild it; `Cache.repair_hint`), or a generic hint without one.
    """
    path = Path(folder) / record["file"]
    repair = repair or f"rebuild it with python -m spine.preprocess (same data_dir and cache_dir as {root})"
    try:
        image = nib.load(path, mmap="r")
        pixels = np.asanyarray(image.dataobj).T  # nibabel checks the file holds every voxel of its header
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:  # cut short, missing, not a NIfTI
        raise CacheError(f"damaged cached stack {path}: {_stack_damage(err)}; {repair}") from err
    if list(pixels.shape[::-1]) != list(record["shape_ijk"]):
        raise CacheError(f"damaged cached stack {path}: {list(pixels.shape[::-1])} voxels, its record says "
                         f"{record['shape_ijk']}; {repair}")
    return DicomStack.from_slices(pixels, np.array(record["ipp"], dtype=np.float64), record["r"], record["c"],
                                  record["pixel_spacing"], record["instance_numbers"], record.get("slice_thickness"))


def _stack_damage(err: Exception) -> str:
    """Why a stack file could not be mapped, in a few words (nibabel's message names the file again)."""
    if isinstance(err, FileNotFoundError):
        return "missing"
    text = one_line(err, 200)
    if text.startswith("Expected ") and " bytes, got " in text:  # nibabel: the file is shorter than its header says
        expected, got = text.split(" bytes, got ", 1)
        return f"cut short ({got.split(' bytes', 1)[0]} of {expected.removeprefix('Expected ')} voxel bytes)"
    return f"{type(err).__name__}: {text}"


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


class CacheError(SpineError, FileNotFoundError):
    """No usable cache: none, several to choose from, one made by another cache version, or a damaged one (a
    table, a record or a stack file that cannot be read: the message names the file and how to rebuild it)."""


def _version_of(root: Path) -> int | None:
    """The cache version in ``root/cache.json`` (None when unreadable)."""
    try:
        return int(json.loads((root / CACHE_JSON).read_text())["params"]["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Cache:
    """A preprocessing cache: ``Cache(root)`` with root the cache-id folder (the one holding series.csv).

    Attributes:
        cache_id: the folder's name (``stacks-v5-<hash>``).
        root: that folder.
        info: cache.json (how it was made).
        series: series.csv as a DataFrame (column ``description`` is the series description).
        coordinates: coordinates.csv (empty if the train split was not processed).
        folds: folds.csv, study_id and fold.

    The tables are read once, on first use; so is what `load_volume` needs of each series' record (its stacks'
    geometry and intensity ranges, a few KB a series). A pickled Cache (e.g. sent to DataLoader workers) leaves
    the parsed records behind: each process reads its own.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / SERIES_CSV).is_file():
            raise CacheError(f"{self.root} is not a preprocessing cache (no series.csv)")
        self.cache_id = self.root.name
        info = self.root / CACHE_JSON
        try:
            self.info: dict = json.loads(info.read_text()) if info.is_file() else {}
        except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise CacheError(f"damaged cache file {info}: {type(err).__name__}: {one_line(err, 160)}; "
                             f"{self.repair_hint()}") from err
        if not isinstance(self.info, dict):
            raise CacheError(f"damaged cache file {info}: not a JSON object; {self.repair_hint()}")
        self._volume_records: dict[tuple[int, int], dict] = {}  # (study, series) -> `_volume_record`

    @classmethod
    def open(cls, cache_dir: str | Path) -> Cache:
        """The cache in ``cache_dir``: cache_dir itself if it is a cache-id folder, else the one cache-id folder
        inside it. Never guesses: several caches in ``cache_dir`` are an error that lists them, and a cache made
        by another ``CACHE_VERSION`` is refused with the command that rebuilds it (:class:`CacheError`)."""
        cache_dir = Path(cache_dir)
        if (cache_dir / SERIES_CSV).is_file():
            return cls._checked(cache_dir)
        candidates = sorted(d for d in cache_dir.iterdir() if (d / SERIES_CSV).is_file()) if cache_dir.is_dir() else []
        if not candidates:
            raise CacheError(f"no preprocessing cache in {cache_dir} (run python -m spine.preprocess)")
        current = [d for d in candidates if _version_of(d) == CACHE_VERSION]
        if len(current) > 1 or (len(candidates) > 1 and not current):
            raise CacheError(f"{cache_dir} holds {len(candidates)} caches ({', '.join(d.name for d in candidates)}): "
                             f"pass one of them as cache_dir={cache_dir}/<cache id>")
        return cls._checked(current[0] if current else candidates[0])

    @classmethod
    def _checked(cls, root: Path) -> Cache:
        cache = cls(root)  # a cache.json that is not a JSON object: CacheError naming it
        version = _version_of(root)
        if version is None and cache.info:
            raise CacheError(f"damaged cache file {root / CACHE_JSON}: no params.version; {cache.repair_hint()}")
        if version != CACHE_VERSION:
            raise CacheError(f"{root} was made by cache version {version}, this spine reads version {CACHE_VERSION}: "
                             f"rebuild it with python -m spine.preprocess (same data_dir and options)")
        return cache

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_volume_records"] = {}  # small pickles: each process parses the records it loads
        return state

    def repair_hint(self, split: str = "all") -> str:
        """The command that rebuilds what is damaged in this cache: preprocessing again into the same cache
        (complete series are kept; a series whose record or stack files are damaged, or whose stack file size
        does not match its record, is rebuilt: `spine.preprocess.job.cached_record`)."""
        data_dir = self.info.get("data_dir") if isinstance(getattr(self, "info", None), dict) else None
        return (f"rebuild it with python -m spine.preprocess data_dir={data_dir or '<data_dir>'} "
                f"cache_dir={self.root.parent} split={split}")

    def _table(self, name: str, columns: tuple[str, ...], **read_csv) -> pd.DataFrame:
        """``root/name`` read by ``pd.read_csv(**read_csv)``, with ``columns`` present; CacheError naming the file
        and what is wrong with it otherwise."""
        path = self.root / name
        try:
            frame = pd.read_csv(path, **read_csv)
        except (OSError, ValueError) as err:  # empty, not CSV, not text: pandas' errors are ValueErrors
            raise CacheError(f"damaged cache table {path}: {type(err).__name__}: {one_line(err, 160)}; "
                             f"remove it and {self.repair_hint()}") from err
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise CacheError(f"damaged cache table {path}: no column {', '.join(missing)}; remove it and "
                             f"{self.repair_hint()}")
        return frame

    def _integers(self, frame: pd.DataFrame, name: str, columns: tuple[str, ...], nullable: bool) -> None:
        """Convert text ``columns`` of table ``name`` in place to int64 (nullable Int64, empty -> <NA>, when
        ``nullable``); CacheError naming the file, the line and the value that is not an integer."""
        for column in columns:
            text = frame[column].astype(str).str.strip()
            bad = ~text.str.fullmatch(r"[+-]?\d+")
            if nullable:
                bad &= text != ""
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise CacheError(f"damaged cache table {self.root / name}: line {row + 2}: {column} "
                                 f"{frame[column].iloc[row]!r} is not an integer; remove it and {self.repair_hint()}")
            frame[column] = pd.to_numeric(text.replace("", None)).astype("Int64" if nullable else np.int64)

    @cached_property
    def series(self) -> pd.DataFrame:
        """series.csv: ids int64, counts nullable Int64 (empty for series that could not be read), text otherwise.

        Raises:
            CacheError: series.csv is empty, not CSV, lacks a column or holds an id or a count that is not an
                integer (the message names the file, the line and the repair).
        """
        frame = self._table(SERIES_CSV, _SERIES_READ, dtype=str, keep_default_na=False)
        self._integers(frame, SERIES_CSV, ("study_id", "series_id"), nullable=False)
        self._integers(frame, SERIES_CSV, ("n_stacks", "n_slices", "n_skipped_files"), nullable=True)
        frame["description"] = [series_type(d) for d in frame["description"]]  # also caches of older runs
        return frame

    @cached_property
    def coordinates(self) -> pd.DataFrame:
        """coordinates.csv (empty without one); CacheError when it cannot be read or lacks an id column."""
        if not (self.root / COORDINATES_CSV).is_file():
            return pd.DataFrame(columns=COORDINATE_COLUMNS)
        return self._table(COORDINATES_CSV, ("study_id", "series_id", "condition", "level"))

    @cached_property
    def folds(self) -> pd.DataFrame:
        """folds.csv, study_id and fold (empty without one); CacheError when it cannot be read or lacks them."""
        if not (self.root / FOLDS_CSV).is_file():
            return pd.DataFrame(columns=FOLD_COLUMNS)
        return self._table(FOLDS_CSV, tuple(FOLD_COLUMNS))

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
            raise KeyError(f"series {study_id}/{series_id} is not in {self.root / SERIES_CSV}")
        return rows.iloc[0]

    def record(self, study_id: int, series_id: int) -> dict:
        """The series' record (volumes/{study}/{series}.json): its stacks' geometry and every instance's.

        Raises:
            CacheError: the record is missing, not JSON or has no ``stacks`` list (named, with the repair).
        """
        path = record_path(self.root, study_id, series_id)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            why = "missing" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {one_line(err, 120)}"
            raise CacheError(f"damaged cache record {path}: {why}; "
                             f"{self.repair_hint(self._split_of(study_id, series_id))}") from err
        if not isinstance(record, dict) or not isinstance(record.get("stacks"), list):
            raise CacheError(f"damaged cache record {path}: no stacks list; "
                             f"{self.repair_hint(self._split_of(study_id, series_id))}")
        return record

    def _split_of(self, study_id: int, series_id: int) -> str:
        """The split the series was preprocessed in (its series.csv row), ``all`` when unknown."""
        try:
            split = str(self.row(study_id, series_id).split)
        except (KeyError, AttributeError, CacheError):
            return "all"
        return split if split in ("train", "test") else "all"

    def volume_options(self) -> dict:
        """Keyword arguments of `spine.preprocess.volume.make_volume` that select stacks as this cache did."""
        return volume_options(self.info.get("params", {}))

    def load_volume(self, study_id: int, series_id: int, percentiles=(1.0, 99.0)) -> SeriesVolume:
        """The cached series as a `SeriesVolume` of memory-mapped stacks (nothing is read until sampled).

        Raises:
            KeyError: the series has no stacks (status error) or is not in series.csv.
            CacheError: its record or a stack file is damaged (missing, cut short, not its record's shape); the
                message names the file and the command that rebuilds it.
        """
        record = self._volume_record(study_id, series_id)
        folder = record_path(self.root, study_id, series_id).parent
        repair = self.repair_hint(record["split"])
        stacks = [read_stack(self.root, folder, r, repair) for r in record["stacks"]]
        percentiles = tuple(float(p) for p in percentiles)
        known = record["intensity_range"].get(range_key(percentiles), "unknown")
        ranges = {} if known == "unknown" else {percentiles: None if known is None else tuple(known)}
        return SeriesVolume(stacks, percentiles, int(series_id), record["description"], list(record["notes"]),
                            "cache", record["max_gap_factor"], ranges)

    def _volume_record(self, study_id: int, series_id: int) -> dict:
        """What `load_volume` needs of a series, looked up once per Cache: its series.csv row (description,
        notes), its record's ``stacks`` and ``intensity_range``, and the cache's ``max_gap_factor``.

        Raises:
            KeyError: the series has no stacks (status error) or is not in series.csv.
        """
        key = (int(study_id), int(series_id))
        kept = self._volume_records.get(key)
        if kept is None:
            row = self.row(*key)
            if row.status != "ok":
                raise KeyError(f"series {study_id}/{series_id} has no stacks: {row.reason}")
            record = self.record(*key)
            kept = {"description": row.description, "notes": [n for n in str(row.reason).split("; ") if n],
                    "split": str(row.split) if str(row.split) in ("train", "test") else "all",
                    "stacks": record["stacks"], "intensity_range": record.get("intensity_range", {}),
                    "max_gap_factor": float(self.volume_options()["max_gap_factor"])}
            self._volume_records[key] = kept
        return kept
