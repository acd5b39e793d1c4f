"""Write single-frame MR DICOM files the way the RSNA 2024 data has them.

Used by the synthetic study generator and by tests that need hand-made (or deliberately broken) series.
Geometry tags are in DICOM patient coordinates (LPS, mm): ImagePositionPatient is the centre of the first
transmitted pixel (row 0, column 0); ImageOrientationPatient is (r, c) with r the direction of increasing
column index and c the direction of increasing row index.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root, for generated UIDs


@dataclass
class SliceTags:
    """DICOM tags of one slice. `None` means "tag absent", as on some real hidden-test files."""

    study_id: int
    series_id: int
    instance_number: int
    image_position: tuple[float, float, float] | None  # IPP, LPS mm
    image_orientation: tuple[float, ...] | None  # IOP (r, c), six direction cosines
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    slice_location: float | None = None
    series_description: str | None = None
    patient_position: str | None = "HFS"
    rescale: tuple[float, float] | None = None  # (slope, intercept), stored value -> modality value
    extra: dict[str, object] = field(default_factory=dict)  # any other keyword -> value
    uid_seed: str | None = None  # SOPInstanceUID derived from this text (the same bytes on every run); None: random


# the SliceTags fields that change from slice to slice of a series (SeriesWriter updates only these)
_PER_SLICE = ("instance_number", "image_position", "slice_location", "uid_seed")


def write_slice(path: str | Path, pixels: np.ndarray, tags: SliceTags) -> None:
    """Write one MR slice.

    Args:
        path: output file; parent folders are created.
        pixels: (rows, columns) stored values, uint16 (or int16), indexed [row, column].
        tags: geometry and identification tags.
    """
    SeriesWriter().write(path, pixels, tags)


class SeriesWriter:
    """Writes the slices of one series (the same bytes as `write_slice`), building the header once and changing
    only the tags that differ from slice to slice (`_PER_SLICE`) when the others are the same as the last one's."""

    def __init__(self) -> None:
        self._ds: FileDataset | None = None
        self._common: list | None = None

    def write(self, path: str | Path, pixels: np.ndarray, tags: SliceTags) -> None:
        if pixels.ndim != 2 or pixels.dtype not in (np.uint16, np.int16):
            raise ValueError(f"pixels must be a 2-D uint16/int16 array, got {pixels.dtype} {pixels.shape}")
        ds = self._dataset(tags)
        _write(path, ds, pixels, tags)

    def _dataset(self, tags: SliceTags) -> FileDataset:
        common = [getattr(tags, f) for f in SliceTags.__dataclass_fields__ if f not in _PER_SLICE]
        common += [getattr(tags, f) is None for f in _PER_SLICE]  # a tag present or absent
        if self._ds is None or common != self._common or tags.uid_seed is None:
            self._ds, self._common = _dataset(tags), common
            return self._ds
        ds = self._ds
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(_UID_ROOT, entropy_srcs=[tags.uid_seed])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.InstanceNumber = int(tags.instance_number)
        if tags.image_position is not None:
            ds.ImagePositionPatient = [decimal_string(v) for v in tags.image_position]
        if tags.slice_location is not None:
            ds.SliceLocation = decimal_string(tags.slice_location)
        return ds


def _write(path: str | Path, ds: FileDataset, pixels: np.ndarray, tags: SliceTags) -> None:
    bits = int(max(12, int(pixels.max()).bit_length())) if pixels.dtype == np.uint16 else 16
    # set_pixel_data draws a new SOPInstanceUID unless told not to: keep the derived one of a ``uid_seed``
    ds.set_pixel_data(np.ascontiguousarray(pixels), "MONOCHROME2", bits,
                      generate_instance_uid=tags.uid_seed is None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)  # with the preamble and 'DICM', or dcmread refuses it


def _dataset(tags: SliceTags) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(_UID_ROOT, entropy_srcs=None if tags.uid_seed is None
                                                   else [tags.uid_seed])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.StudyInstanceUID = str(tags.study_id)  # the competition uses the numeric ids as UIDs
    ds.SeriesInstanceUID = str(tags.series_id)
    ds.StudyID = str(tags.study_id)
    ds.SeriesNumber = int(tags.series_id % 100000)
    ds.InstanceNumber = int(tags.instance_number)
    ds.PatientID = str(tags.study_id)
    ds.ContentDate = datetime.date(2024, 1, 1).strftime("%Y%m%d")
    ds.BodyPartExamined = "LSPINE"
    ds.PixelSpacing = [decimal_string(v) for v in tags.pixel_spacing]
    if tags.image_position is not None:
        ds.ImagePositionPatient = [decimal_string(v) for v in tags.image_position]
    if tags.image_orientation is not None:
        ds.ImageOrientationPatient = [decimal_string(v, 8) for v in tags.image_orientation]
    if tags.slice_thickness is not None:
        ds.SliceThickness = decimal_string(tags.slice_thickness)
    if tags.spacing_between_slices is not None:
        ds.SpacingBetweenSlices = decimal_string(tags.spacing_between_slices)
    if tags.slice_location is not None:
        ds.SliceLocation = decimal_string(tags.slice_location)
    if tags.series_description is not None:
        ds.SeriesDescription = tags.series_description
    if tags.patient_position is not None:
        ds.PatientPosition = tags.patient_position
    if tags.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (decimal_string(v) for v in tags.rescale)
    for keyword, value in tags.extra.items():
        setattr(ds, keyword, value)
    return ds


def decimal_string(value: float, digits: int = 6) -> str:
    """A Decimal String value: DS holds at most 16 characters, so round before pydicom formats it."""
    text = f"{float(value):.{digits}f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def read_tags(path: str | Path) -> pydicom.Dataset:
    """Header of a DICOM file without its pixels (for tests and tools)."""
    return pydicom.dcmread(path, stop_before_pixels=True)
