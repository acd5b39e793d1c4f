"""What a check returns (:class:`CheckResult`) and what every check is given (:class:`Context`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}


@dataclass
class CheckResult:
    """One check's verdict.

    Attributes:
        name: the check (a key of ``checks``).
        status: pass | warn | fail.
        summary: one line: what was measured and how it compares to the threshold.
        details: the studies, series or steps behind a warning or failure (and notes), one line each.
        numbers: what was measured, JSON-serialisable (written to doctor.json).
        figures: PNG paths written by the check.
        seconds: how long it took.
    """

    name: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in _RANK:
            raise ValueError(f"status must be pass, warn or fail, got {self.status!r}")

    @property
    def line(self) -> str:
        """``PASS name: summary``."""
        return f"{self.status.upper()} {self.name}: {self.summary}"

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "summary": self.summary, "details": list(self.details),
                "numbers": jsonable(self.numbers), "figures": [str(f) for f in self.figures],
                "seconds": round(float(self.seconds), 3)}


def worst(statuses) -> str:
    """The worst of some statuses (pass when there are none)."""
    return max(statuses, key=_RANK.__getitem__, default=PASS)


def share_status(bad: int, total: int, max_fraction: float) -> str:
    """pass with no bad item, warn up to ``max_fraction`` of ``total``, fail beyond."""
    if bad <= 0:
        return PASS
    return WARN if total and bad / total <= max_fraction else FAIL


def jsonable(value):
    """Numbers, arrays and frames as plain JSON values (NaN and infinities as None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, pd.DataFrame):
        return jsonable(value.to_dict(orient="records"))
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=1))


class Context:
    """What the checks share: the config, the cache, the output folder, the DICOM folder and train.csv."""

    def __init__(self, cfg, cache, out: Path) -> None:
        self.cfg, self.cache, self.out = cfg, cache, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    @cached_property
    def data_dir(self) -> Path | None:
        """The RSNA-layout folder (config, else cache.json's ``data_dir``); None when it is not there."""
        text = self.cfg.data_dir or str(self.cache.info.get("data_dir", ""))
        return Path(text) if text and Path(text).is_dir() else None

    def series_dir(self, study_id: int, series_id: int) -> Path | None:
        """The DICOM folder of a series (``<data_dir>/<split>_images/<study>/<series>``), None when absent."""
        if self.data_dir is None:
            return None
        splits = ["train", "test"]
        s = self.cache.series
        if "split" in s.columns:
            rows = s[(s.study_id == int(study_id)) & (s.series_id == int(series_id))]
            if len(rows) and rows.split.iloc[0] in splits:
                splits.remove(rows.split.iloc[0])
                splits.insert(0, rows.split.iloc[0])
        for split in splits:
            folder = self.data_dir / f"{split}_images" / str(int(study_id)) / str(int(series_id))
            if folder.is_dir():
                return folder
        return None

    @property
    def labels_path(self) -> Path | None:
        if self.cfg.labels:
            return Path(self.cfg.labels)
        return self.data_dir / "train.csv" if self.data_dir is not None else None

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([int(self.cfg.seed), int(salt)])
