"""The data elements of an encoded data set in the order they were written (not as pydicom hands
them back: a decoded ``Dataset`` iterates in tag order whatever the bytes held).

PS3.5 section 7.1: the data elements of a data set, and of every sequence item (section 7.5),
are in increasing order of their tags, group then element, as unsigned numbers.  A receiver may
rely on it (a streaming decoder stops at the first tag past the ones it needs), so a check of an
encoder has to read the bytes, not a decoded object.

Little endian transfer syntaxes only (implicit VR: PS3.5 section 7.1.3; explicit VR: 7.1.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass
class Element:
    tag: int
    start: int  # offset of its tag in the buffer
    end: int  # offset just past its value (or its sequence delimiter)
    items: list[list[Element]] = field(default_factory=list)  # a sequence's items, each in written order


def written(raw: bytes, *, implicit: bool) -> list[Element]:
    """The top-level elements of ``raw`` (a data set without preamble or file meta), as written."""
    elements, _ = _data_set(memoryview(raw), 0, len(raw), implicit)
    return elements


def written_tags(raw: bytes, *, implicit: bool) -> list[int]:
    return [e.tag for e in written(raw, implicit=implicit)]


def assert_ascending(raw: bytes, *, implicit: bool) -> None:
    """AssertionError unless the tags of the data set and of every item in it ascend (PS3.5 7.1)."""
    _check(written(raw, implicit=implicit), "data set")


def _check(elements: list[Element], where: str) -> None:
    for before, after in zip(elements, elements[1:], strict=False):
        assert before.tag < after.tag, (
            f"{where}: ({after.tag >> 16:04X},{after.tag & 0xFFFF:04X}) written after "
            f"({before.tag >> 16:04X},{before.tag & 0xFFFF:04X}): not in ascending tag order (PS3.5 7.1)")
    for element in elements:
        for n, item in enumerate(element.items, 1):
            _check(item, f"{where} > ({element.tag >> 16:04X},{element.tag & 0xFFFF:04X}) item {n}")


def _tag(buf: memoryview, pos: int) -> int:
    group, number = struct.unpack_from("<HH", buf, pos)
    return group << 16 | number


def _data_set(buf: memoryview, pos: int, end: int | None, implicit: bool) -> tuple[list[Element], int]:
    """Elements from ``pos`` to ``end``, or to an item delimiter when ``end`` is None."""
    elements: list[Element] = []
    while end is None or pos < end:
        start, tag = pos, _tag(buf, pos)
        if tag == ITEM_END:
            return elements, pos + 8
        if implicit:
            (length,) = struct.unpack_from("<L", buf, pos + 4)
            pos += 8
            is_sequence = dictionary_VR(tag) == "SQ" if _known(tag) else length == UNDEFINED
        else:
            vr = bytes(buf[pos + 4:pos + 6])
            if vr in LONG_VRS:
                (length,) = struct.unpack_from("<L", buf, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", buf, pos + 6)
                pos += 8
            is_sequence = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
        element = Element(tag, start, pos)
        if is_sequence:
            pos = _sequence(buf, pos, None if length == UNDEFINED else pos + length, implicit, element.items)
        else:
            pos += length
        element.end = pos
        elements.append(element)
    return elements, pos


def _sequence(buf: memoryview, pos: int, end: int | None, implicit: bool, items: list) -> int:
    """Items (always implicit-style headers, PS3.5 7.5) up to ``end`` or a sequence delimiter."""
    while end is None or pos < end:
        tag = _tag(buf, pos)
        (length,) = struct.unpack_from("<L", buf, pos + 4)
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        assert tag == ITEM, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) inside a sequence, not an item"
        item, pos = _data_set(buf, pos, None if length == UNDEFINED else pos + length, implicit)
        items.append(item)
    return pos


def _known(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True
