"""Preprocessing: DICOM series -> LPS-aligned patient volumes, cached on disk or built in memory.

- `spine.preprocess.volume`: `volume_from_dicom` (series folder -> volume in memory, for inference),
  `make_volume` / `build_volume` (one `DicomSeries` -> volume + coverage mask),
  `world_to_voxel`, `voxel_to_world`, `pixel_to_world`: the code path shared by the cache and inference.
- `spine.preprocess.cache`: `Cache`, the reader of a cache folder every later stage uses.
- `spine.preprocess.run`: the run behind ``python -m spine.preprocess`` (process pool, resume, summary).
See docs/preprocess.md. Names are imported on first use, so that the command line starts fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Cache": "spine.preprocess.cache",
    "FILL_VALUE": "spine.preprocess.volume",
    "Grid": "spine.preprocess.volume",
    "SeriesVolume": "spine.preprocess.volume",
    "VolumeError": "spine.preprocess.volume",
    "build_volume": "spine.preprocess.volume",
    "make_volume": "spine.preprocess.volume",
    "pixel_to_world": "spine.preprocess.volume",
    "spacing_for": "spine.preprocess.volume",
    "volume_from_dicom": "spine.preprocess.volume",
    "voxel_to_world": "spine.preprocess.volume",
    "world_to_voxel": "spine.preprocess.volume",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spine.preprocess' has no attribute {name!r}")
