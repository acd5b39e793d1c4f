"""The fast path of the DICOM reader: the few tags a classic, uncompressed, little-endian file needs, read straight
from its bytes.

`parse_native` walks the elements of a file already in memory (``Path.read_bytes``) with ``struct``, keeps the
values of `TAGS` (the geometry, the pixel description, the identifiers) and where the pixel data lies, and stops
there; the pixels are then a numpy view of those bytes. Nothing is converted that is not needed, which is most
of what ``pydicom.dcmread`` spends its time on. It answers None, and the reader takes pydicom's path with its
own checks and messages, for anything it does not handle exactly as pydicom does: no ``DICM`` preamble, another
transfer syntax (compressed, big endian, deflated), enhanced multi-frame functional groups, a value of an
unexpected VR, text that is not plain ASCII numbers, an empty value, or a malformed element.

Values are what ``Dataset.get(keyword)`` gives, in plain Python: DS / IS text -> a float, or a list of floats
for several values; US -> an int; UI / LO / CS / SH text -> a str without its padding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["NATIVE_SYNTAXES", "NativeFile", "TAGS", "parse_native"]

NATIVE_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # UID -> implicit VR
# (group, element) -> (keyword, kind): what the reader needs of a classic single-file image
TAGS: dict[tuple[int, int], tuple[str, str]] = {
    (0x0008, 0x103E): ("SeriesDescription", "text"),
    (0x0018, 0x0050): ("SliceThickness", "number"),
    (0x0020, 0x000E): ("SeriesInstanceUID", "text"),
    (0x0020, 0x0013): ("InstanceNumber", "number"),
    (0x0020, 0x0032): ("ImagePositionPatient", "number"),
    (0x0020, 0x0037): ("ImageOrientationPatient", "number"),
    (0x0028, 0x0002): ("SamplesPerPixel", "us"),
    (0x0028, 0x0008): ("NumberOfFrames", "number"),
    (0x0028, 0x0010): ("Rows", "us"),
    (0x0028, 0x0011): ("Columns", "us"),
    (0x0028, 0x0030): ("PixelSpacing", "number"),
    (0x0028, 0x0100): ("BitsAllocated", "us"),
    (0x0028, 0x0101): ("BitsStored", "us"),
    (0x0028, 0x0103): ("PixelRepresentation", "us"),
    (0x0028, 0x1052): ("RescaleIntercept", "number"),
    (0x0028, 0x1053): ("RescaleSlope", "number"),
}
_EXPECTED_VR = {"text": {b"UI", b"LO", b"CS", b"SH"}, "number": {b"DS", b"IS"}, "us": {b"US"}}
_FALLBACK_GROUPS = {(0x5200, 0x9229), (0x5200, 0x9230)}  # functional groups: enhanced multi-frame
_PIXEL_DATA = (0x7FE0, 0x0010)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_HEADER = struct.Struct("<HH")
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class _Unhandled(Exception):
    """Something pydicom must read instead (internal)."""


@dataclass(frozen=True)
class NativeFile:
    """What `parse_native` found: ``values`` (keyword -> value, the `TAGS` present), and the pixel data's
    ``pixel_offset`` and ``pixel_length`` (bytes) in the file."""

    values: dict[str, object]
    pixel_offset: int
    pixel_length: int


def parse_native(data: bytes) -> NativeFile | None:
    """The tags and pixel position of a classic uncompressed little-endian file, None for anything else."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        position, syntax = _file_meta(data, 132)
        if syntax not in NATIVE_SYNTAXES:
            return None
        implicit = NATIVE_SYNTAXES[syntax]
        values: dict[str, object] = {}
        for tag, vr, _at, start, length in _elements(data, position, implicit):
            if tag == _PIXEL_DATA:
                if length == _UNDEFINED or start + length > len(data):
                    return None  # encapsulated or cut short: pydicom says what it is
                return NativeFile(values, start, length)
            if tag in _FALLBACK_GROUPS:
                return None
            if tag in TAGS:
                keyword, kind = TAGS[tag]
                values[keyword] = _value(data[start:start + length], vr, kind)
    except (_Unhandled, struct.error, IndexError, ValueError, UnicodeDecodeError):
        return None
    return None  # no pixel data: pydicom's path reports it


def _file_meta(data: bytes, position: int) -> tuple[int, str]:
    """(where the dataset starts, TransferSyntaxUID) from the file meta group (always explicit VR little endian)."""
    syntax = ""
    for tag, _vr, at, start, length in _elements(data, position, implicit=False):
        if tag[0] != 0x0002:
            return at, syntax
        if tag == (0x0002, 0x0010):
            syntax = data[start:start + length].rstrip(b"\x00 ").decode("ascii")
    raise _Unhandled("nothing after the file meta group")


def _elements(data: bytes, position: int, implicit: bool):
    """(tag, VR (None when implicit), element position, value start, value length) of each element from
    ``position`` to the end of ``data``; sequences of undefined length are stepped over. Stops after the pixel
    data."""
    while position + 8 <= len(data):
        tag, vr, start, length = _header(data, position, implicit)
        yield tag, vr, position, start, length
        if tag == _PIXEL_DATA:
            return
        position = _after(data, vr, start, length, implicit)


def _header(data: bytes, position: int, implicit: bool) -> tuple[tuple[int, int], bytes | None, int, int]:
    """(tag, VR, value start, value length) of the element at ``position``."""
    tag = _HEADER.unpack_from(data, position)
    if implicit or tag[0] == 0xFFFE:  # items and delimiters have no VR, even in explicit VR
        return tag, None, position + 8, _U32.unpack_from(data, position + 4)[0]
    vr = data[position + 4:position + 6]
    if vr in _LONG_VRS:
        return tag, vr, position + 12, _U32.unpack_from(data, position + 8)[0]
    return tag, vr, position + 8, _U16.unpack_from(data, position + 6)[0]


def _after(data: bytes, vr: bytes | None, start: int, length: int, implicit: bool) -> int:
    """Where the element whose value starts at ``start`` ends; a sequence of undefined length is walked."""
    if length != _UNDEFINED:
        return start + length
    if vr == b"SQ" or (implicit and vr is None):
        return _after_sequence(data, start, implicit)
    if vr == b"UN":
        return _after_sequence(data, start, implicit=True)  # UN of undefined length is implicit VR inside
    raise _Unhandled(f"undefined length of VR {vr!r}")


def _after_sequence(data: bytes, position: int, implicit: bool) -> int:
    """Where a sequence of undefined length whose first item is at ``position`` ends (after its delimiter)."""
    while True:
        tag = _HEADER.unpack_from(data, position)
        length = _U32.unpack_from(data, position + 4)[0]
        position += 8
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM:
            raise _Unhandled("not an item inside a sequence")
        if length != _UNDEFINED:
            position += length
            continue
        while _HEADER.unpack_from(data, position) != _ITEM_END:  # an item of undefined length: its elements
            tag, vr, start, length = _header(data, position, implicit)
            position = _after(data, vr, start, length, implicit)
        position += 8


def _value(raw: bytes, vr: bytes | None, kind: str) -> object:
    """One element's value as ``Dataset.get`` would give it (see the module docstring)."""
    if vr is not None and vr not in _EXPECTED_VR[kind]:
        raise _Unhandled(f"VR {vr!r} where {kind} is expected")
    if kind == "us":
        if len(raw) != 2:
            raise _Unhandled("US of several values")
        return _U16.unpack(raw)[0]
    text = raw.rstrip(b"\x00 ")
    if not text or not text.isascii():
        raise _Unhandled("empty or non-ASCII value")
    if kind == "text":
        return text.strip().decode("ascii")
    numbers = [float(part) for part in text.split(b"\\")]  # ValueError for anything but numbers: pydicom's path
    return numbers[0] if len(numbers) == 1 else numbers
