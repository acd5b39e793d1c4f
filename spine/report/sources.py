"""What a report reads, opened once (:class:`Sources`): the run folder and its config, its landmark run, the
cache it trained on, the data folder (labels); each series volume loaded once. :class:`ReportError` when the run
folder cannot be reported on at all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spine.cache import Cache, CacheError
from spine.errors import SpineError
from spine.io.tables import read_train_labels
from spine.run_folder import OOF_CSV, RunFolderError, load_run_config, read_cache_info

__all__ = ["ReportError", "Sources"]


class ReportError(SpineError):
    """The run folder cannot be reported on at all (not a run folder, unreadable config)."""


class Sources:
    """What the report reads, opened once: the run, its landmark run, the cache, the data folder."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.run = Path(cfg.run)
        self._volumes: dict = {}
        try:
            self.tcfg = load_run_config(self.run)
            self.info = read_cache_info(self.run) or {}
        except RunFolderError as err:  # no config.yaml, or a damaged config.yaml / cache.json: named, one line
            raise ReportError(str(err)) from None
        self.stage = self.tcfg.stage.name
        self.data_dir = self._data_dir()
        self.cache, self.cache_note = self._cache()
        self.landmark_run, self.landmark_note = self._landmark_run()

    def _data_dir(self) -> Path | None:
        text = self.cfg.data_dir or self.info.get("data_dir", "")
        if not text:
            return None
        path = Path(text)
        return path if path.is_dir() else None

    def _cache(self) -> tuple[Cache | None, str]:
        where = self.cfg.cache_dir or self.tcfg.cache_dir
        if not where:
            return None, "no cache_dir (the run's config names none): no images"
        cache_id = self.info.get("cache_id", "")
        tried = []
        for candidate in ([Path(where) / cache_id] if cache_id else []) + [Path(where)]:
            try:
                cache = Cache.open(candidate)
                cache.series  # noqa: B018 - a damaged series.csv is said here, once, not in every figure
            except (CacheError, FileNotFoundError, OSError) as err:
                tried.append(str(err))
                continue
            if cache_id and cache.cache_id != cache_id:
                tried.append(f"{cache.root} is cache {cache.cache_id}, the run trained on {cache_id}")
                continue
            return cache, ""
        return None, f"the run's cache cannot be opened ({'; '.join(tried)}): no images, no label points"

    def _landmark_run(self) -> tuple[Path | None, str]:
        if self.stage == "landmarks":
            return self.run, ""
        text = self.cfg.landmarks or self.tcfg.landmarks
        if not text:
            return None, ("no landmark run: the grading run's config names none (its validation inputs were "
                          "taken at the label points); landmarks=<run> adds one")
        path = Path(text)
        if not (path / OOF_CSV).is_file():
            return None, f"landmark run {path} has no oof.csv"
        return path, ""

    def labels(self) -> pd.DataFrame | None:
        stage_labels = getattr(self.tcfg.stage, "labels", "")
        path = Path(stage_labels) if stage_labels else (self.data_dir / "train.csv" if self.data_dir else None)
        if path is None or not path.is_file():
            return None
        return read_train_labels(path)

    # ---- per study
    def volume(self, study: int, description: str, percentiles=(1.0, 99.0)):
        """(the study's first ok series of that type, '') or (None, why not); each series loaded once."""
        key = (int(study), description, tuple(float(p) for p in percentiles))
        if key not in self._volumes:
            self._volumes[key] = self._load_volume(study, description, percentiles)
        return self._volumes[key]

    def _load_volume(self, study: int, description: str, percentiles):
        if self.cache is None:
            return None, "no cache"
        ids = self.cache.series_of(study, description)
        if not ids:
            return None, f"study {study} has no {description} series in the cache"
        try:
            return self.cache.load_volume(study, ids[0], percentiles), ""
        except (KeyError, OSError, ValueError) as err:
            return None, f"{description} series {ids[0]} unreadable: {err}"

