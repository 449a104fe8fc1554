"""How much structure one inbound message may carry, checked on the raw bytes before parsing.

A message is refused (AR, ERR-3 207, HL7 table 0357) when it has more than
``HL7_MAX_SEGMENTS`` segments, more than ``HL7_MAX_ORDER_GROUPS`` OBR segments (order groups
of ORM^O01 / OMI^O23, HL7 v2.5.1 chapter 4), or a PID-3 patient identifier list (chapter 3,
3.4.2.3) with more than ``HL7_MAX_PID3_REPETITIONS`` repetitions.  Counting bytes costs
microseconds; parsing and mapping a message with thousands of repetitions costs seconds, so
the count comes first and such a message is answered at once.
"""

from __future__ import annotations

from django.conf import settings

from hl7gateway.parsing import MSH, HL7Error


def _refuse(text: str, location: str) -> HL7Error:
    return HL7Error(text, code=207, location=location, ack_code="AR")


def segment_count(raw: bytes) -> int:
    """Segments of ``raw``: line ends (``\\r``, ``\\n`` or ``\\r\\n``), plus an unterminated last line."""
    breaks = raw.count(b"\r") + raw.count(b"\n") - raw.count(b"\r\n")
    return breaks + (0 if raw.endswith((b"\r", b"\n")) else 1)


def segments_named(raw: bytes, segment_id: bytes) -> int:
    """How many segments of ``raw`` start with ``segment_id`` (``bytes.count``: no regex, no split)."""
    return raw.count(b"\r" + segment_id) + raw.count(b"\n" + segment_id) + raw.startswith(segment_id)


def first_segment(raw: bytes, segment_id: bytes) -> bytes | None:
    """The first segment of ``raw`` that starts with ``segment_id``, without its terminator."""
    starts = [i + 1 for i in (raw.find(b"\r" + segment_id), raw.find(b"\n" + segment_id)) if i >= 0]
    if raw.startswith(segment_id):
        starts.append(0)
    if not starts:
        return None
    start = min(starts)
    ends = [i for i in (raw.find(b"\r", start), raw.find(b"\n", start)) if i >= 0]
    return raw[start:min(ends)] if ends else raw[start:]


def pid_3_repetitions(raw: bytes, msh: MSH) -> int:
    """Repetitions of PID-3 in the first PID segment (0 without one)."""
    pid = first_segment(raw, b"PID")
    if pid is None:
        return 0
    fields = pid.split(msh.field_separator.encode("latin-1"), 4)
    if len(fields) < 4 or not fields[3]:
        return 0
    return fields[3].count(msh.encoding_characters[1].encode("latin-1")) + 1


def nul_location(raw: bytes, msh: MSH | None) -> str:
    """The ERR-2 location (segment^sequence^field) of the first NUL (0x00) in ``raw``."""
    at = raw.index(b"\x00")
    start = max(raw.rfind(b"\r", 0, at), raw.rfind(b"\n", 0, at)) + 1
    segment = raw[start:at]
    name = segment[:3].decode("latin-1")
    if msh is None or not msh.has_valid_separators or not name.isalnum():
        return ""
    field = segment.count(msh.field_separator.encode("latin-1")) + (1 if name == "MSH" else 0)
    number = sum(1 for line in raw[:start].replace(b"\n", b"\r").split(b"\r") if line.startswith(segment[:3])) + 1
    return f"{name}^{number}^{field}"


def check(raw: bytes, msh: MSH | None) -> HL7Error | None:
    """The reason to refuse ``raw`` for its size of structure or its characters, or None."""
    if b"\x00" in raw:
        # No HL7 v2 data type holds the character zero (HL7 v2.5.1 2.A: ST, TX, FT are printable
        # characters and the defined escapes), and a database text column cannot store it: a
        # resend would fail the same way, so the answer is AR, error 102 (data type error).
        return HL7Error("message holds a NUL character (0x00), which no HL7 data type allows", code=102,
                        location=nul_location(raw, msh), ack_code="AR")
    segments = segment_count(raw)
    if segments > settings.HL7_MAX_SEGMENTS:
        return _refuse(f"message has {segments} segments; at most {settings.HL7_MAX_SEGMENTS} are accepted "
                       "(HL7_MAX_SEGMENTS)", "")
    groups = segments_named(raw, b"OBR")
    if groups > settings.HL7_MAX_ORDER_GROUPS:
        return _refuse(f"message has {groups} OBR segments; at most {settings.HL7_MAX_ORDER_GROUPS} are accepted "
                       "(HL7_MAX_ORDER_GROUPS)", f"OBR^{settings.HL7_MAX_ORDER_GROUPS + 1}")
    if msh is not None and msh.has_valid_separators:
        repetitions = pid_3_repetitions(raw, msh)
        if repetitions > settings.HL7_MAX_PID3_REPETITIONS:
            return _refuse(f"PID-3 has {repetitions} repetitions; at most {settings.HL7_MAX_PID3_REPETITIONS} are "
                           "accepted (HL7_MAX_PID3_REPETITIONS)", "PID^1^3")
    return None
