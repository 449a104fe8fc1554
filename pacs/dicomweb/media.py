"""Media types of DICOMweb requests and answers: the Accept header read (RFC 9110 12.5.1),
DICOM JSON written (PS3.18 F.2), multipart/related bodies streamed (RFC 2387, PS3.18 8.6.1.2)."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date

from pydicom.datadict import dictionary_VR, tag_for_keyword

DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class MediaRange:
    type: str  # "multipart/related", "application/dicom", "*/*", ...
    params: dict = field(default_factory=dict)  # lower-case names, unquoted values

    @property
    def part_type(self) -> str:
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str:
        return self.params.get("transfer-syntax", "")


def _split(text: str, separator: str) -> list[str]:
    """Split outside double quotes."""
    out, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


def accepted(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header, in its order (q=0 ones dropped); ``*/*`` when absent."""
    ranges = []
    for item in _split(header or "", ","):
        parts = [p.strip() for p in _split(item, ";")]
        if not parts[0]:
            continue
        params = {}
        for p in parts[1:]:
            name, _, value = p.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        ranges.append(MediaRange(parts[0].lower(), params))
    return ranges or [MediaRange("*/*")]


@functools.lru_cache(maxsize=1024)
def _vr(keyword: str) -> str:
    return dictionary_VR(keyword)


@functools.lru_cache(maxsize=1024)
def tag(keyword: str) -> str:
    """A keyword's tag as DICOM JSON names it (PS3.18 F.2.1.1: eight upper-case hex digits)."""
    return f"{tag_for_keyword(keyword):08X}"


def element(keyword: str, value) -> dict:
    """One attribute in DICOM JSON (PS3.18 F.2.2): ``{"vr": .., "Value": [..]}``; an empty
    value has no ``Value``."""
    vr = _vr(keyword)
    doc: dict = {"vr": vr}
    if value is None or value == "":
        return doc
    if isinstance(value, date):
        value = value.strftime("%Y%m%d")
    if vr == "PN":
        doc["Value"] = [{"Alphabetic": str(value)}]
    elif vr in ("IS", "US", "UL", "SS", "SL"):
        doc["Value"] = [int(value)]
    elif vr == "CS" and isinstance(value, str) and "\\" in value:
        doc["Value"] = [v for v in value.split("\\") if v]
    else:
        doc["Value"] = [str(value)]
    return doc


def dataset_json(values: dict) -> dict:
    """``{keyword: value}`` as a DICOM JSON object, keyed by tag in ascending order (F.2.1)."""
    tagged = {tag(k): element(k, v) for k, v in values.items()}
    return dict(sorted(tagged.items()))


def json_array(items: Iterable[dict]) -> Iterator[bytes]:
    """A JSON array written as its items come (one item in memory at a time)."""
    yield b"["
    first = True
    for item in items:
        if not first:
            yield b","
        first = False
        yield json.dumps(item, separators=(",", ":")).encode()
    yield b"]"


def boundary() -> str:
    return f"dicomweb-{uuid.uuid4().hex}"


def _part_header(content_type: str, mark: str) -> bytes:
    return f"--{mark}\r\nContent-Type: {content_type}\r\n\r\n".encode()


def multipart(parts: Iterable[tuple[str, Iterable[bytes]]], mark: str) -> Iterator[bytes]:
    """A multipart/related body: each ``(content type, body chunks)`` as one part (RFC 2387)."""
    for content_type, body in parts:
        yield _part_header(content_type, mark)
        yield from body
        yield b"\r\n"
    yield f"--{mark}--\r\n".encode()


def multipart_length(parts: Iterable[tuple[str, int]], mark: str) -> int:
    """The byte length of ``multipart`` of parts of these ``(content type, body length)``: the
    answer's Content-Length, so that it is sent as it is and not cut into HTTP/1.1 chunks
    (RFC 9112 6.3), which costs both ends a pass over the bytes."""
    return sum(len(_part_header(t, mark)) + n + 2 for t, n in parts) + len(f"--{mark}--\r\n")


def multipart_type(part_type: str, mark: str, transfer_syntax: str = "") -> str:
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"{syntax}; boundary={mark}'
