"""Encoding of flat data sets (text values and empty elements only) in the little endian
transfer syntaxes, without building a pydicom ``Dataset``.

A C-FIND answer (PS3.4 C.4.1.1.3.2) is such a data set: a few attributes of text VRs, each
with a value from the index or empty, and empty sequences.  Building a ``Dataset`` and writing
it with pydicom costs more than the query that found it; these bytes are the same as pydicom's
(the tests compare the two).  Rules followed (PS3.5):

* 7.1.2 / 7.1.3: Explicit VR: tag, VR, then a 2-byte length, or 2 reserved bytes and a 4-byte
  length for the VRs of Table 7.1-1 (OB, OD, OF, OL, OV, OW, SQ, SV, UC, UN, UR, UT, UV);
  Implicit VR: tag and a 4-byte length;
* 6.2: a value of a text VR is padded to an even length with a space, a UI value with NUL;
  values of a multi-valued element are separated by ``\\``;
* 6.1.2.3: text in the repertoire of SpecificCharacterSet (here ASCII, or UTF-8 for ISO_IR 192);
* elements in ascending tag order (7.1).

Anything else (a binary VR with a value, an ambiguous VR, big endian or deflated transfer
syntaxes) is not encoded here: :func:`encode` returns None and the caller falls back to pydicom.
"""

from __future__ import annotations

import struct

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                      "UR", "UT"})
_LONG_LENGTH = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_KNOWN_VRS = TEXT_VRS | _LONG_LENGTH | frozenset({"AT", "FD", "FL", "SL", "SS", "UL", "US"})
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2sHI")


def _value(vr: str, value, encoding: str) -> bytes | None:
    if value is None or value == "" or value == []:
        return b""
    if vr not in TEXT_VRS:
        return None
    if isinstance(value, (list, tuple)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    raw = text.encode(encoding)
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode(elements: list[tuple[int, str, object]], transfer_syntax: str, *, utf8: bool = False) -> bytes | None:
    """``elements``: (tag as an int, VR, value: None, text, an int of an IS, or a list of
    texts); the data set's bytes in ``transfer_syntax``, or None when this encoder cannot
    write it exactly."""
    if transfer_syntax == ImplicitVRLittleEndian:
        implicit = True
    elif transfer_syntax == ExplicitVRLittleEndian:
        implicit = False
    else:
        return None
    encoding = "utf-8" if utf8 else "ascii"
    parts = []
    for tag, vr, value in sorted(elements, key=lambda e: e[0]):
        if vr not in _KNOWN_VRS:
            return None
        try:
            raw = _value(vr, value, encoding)
        except UnicodeEncodeError:
            return None
        if raw is None:
            return None
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            parts.append(_IMPLICIT.pack(group, element, len(raw)))
        elif vr in _LONG_LENGTH:
            parts.append(_EXPLICIT_LONG.pack(group, element, vr.encode(), 0, len(raw)))
        else:
            if len(raw) > 0xFFFF:
                return None
            parts.append(_EXPLICIT_SHORT.pack(group, element, vr.encode(), len(raw)))
        parts.append(raw)
    return b"".join(parts)
