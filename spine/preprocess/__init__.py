"""Preprocessing: DICOM series -> their acquired stacks, cached on disk or selected in memory.

- `spine.preprocess.volume`: `volume_from_dicom` (series folder -> `SeriesVolume` in memory, for inference),
  `make_volume` (one `DicomSeries` -> its kept stacks), `select_stacks`, `pixel_to_world`: the code path shared
  by the cache and inference. Nothing is resampled here: `spine.data.volume.SeriesVolume.sample` draws every
  network input from the stacks.
- the cache itself (its layout, names and reader `Cache`, which every later stage uses) is `spine.cache`.
- `spine.preprocess.run`: the run behind ``python -m spine.preprocess`` (jobs, resume, tables, summary), with
  `spine.preprocess.job` (one series -> its stack files and record), `spine.preprocess.pool` (the process pool)
  and `spine.preprocess.coordinates` (the label points in every frame).
See docs/preprocess.md. Names are imported on first use, so that the command line starts fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SeriesVolume": "spine.data.volume",
    "VolumeError": "spine.preprocess.volume",
    "make_volume": "spine.preprocess.volume",
    "pixel_to_world": "spine.preprocess.volume",
    "select_stacks": "spine.preprocess.volume",
    "volume_from_dicom": "spine.preprocess.volume",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spine.preprocess' has no attribute {name!r}")
