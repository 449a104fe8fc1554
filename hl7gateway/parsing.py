"""HL7 v2 parsing: bytes of one MLLP payload -> a python-hl7 message and its MSH.

Layering (docs/architecture.md): framing knows bytes (``hl7gateway.mllp``), this module knows
HL7, the mapping modules turn messages into plain ``ris.commands``.

* Segment terminators: the standard says ``\\r`` (HL7 v2.5.1 section 2.5.4); real senders also
  use ``\\n`` and ``\\r\\n``. All three are accepted and normalised to ``\\r``.
* Character set: MSH-18 (HL7 table 0211). ``UNICODE UTF-8``, ``8859/1`` and ``ASCII`` are
  supported; an empty MSH-18 means ``settings.HL7_DEFAULT_CHARSET``.
* ``read_msh`` reads the MSH from the raw bytes without parsing the rest, so an ACK can be built
  even when the body is unreadable (HAPI's "negative ACK from whatever MSH was read").

The library is python-hl7, the lighter of the Python HL7 v2 parsers (figures in
bench/RESULTS.md "HL7 intake").  On the intake's hot path ``parse`` takes separators and
escape character from python-hl7's parse plan and its escape handling, but splits segments
and fields itself (``str.split``): the intake reads a few dozen fields, and python-hl7's
whole container tree costs several times the split.  The tree is built only when
``ParsedMessage.message`` is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import hl7
import hl7.parser
from django.conf import settings

from project.text import no_nul

# HL7 table 0211 (alternate character sets) -> Python codec.
CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",  # seen from senders that shorten it
    "8859/1": "latin-1",
    "ASCII": "ascii",
    "": None,  # the interface default
}

_SEGMENT_SPLIT = re.compile(rb"\r\n|\r|\n")
_SEGMENT_SPLIT_TEXT = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class HL7Error(Exception):
    """A message we cannot accept.  Carries what the ACK needs.

    ``ack_code`` AR (reject: unsupported, unparseable) or AE (application error);
    ``code`` HL7 table 0357; ``location`` ERR-2 as ``SEG^sequence^field[^component]``.
    """

    def __init__(self, text: str, *, code: int, location: str = "", ack_code: str = "AE"):
        super().__init__(text)
        self.text = text
        self.code = code
        self.location = location
        self.ack_code = ack_code


@dataclass(frozen=True)
class MSH:
    """The message header as read from the raw bytes (fields keep their HL7 escaping).

    Attribute names follow the HL7 field addresses: ``msh_3`` = MSH-3 Sending Application.
    """

    field_separator: str = "|"
    encoding_characters: str = "^~\\&"
    msh_3: str = ""  # sending application
    msh_4: str = ""  # sending facility
    msh_5: str = ""  # receiving application
    msh_6: str = ""  # receiving facility
    msh_7: str = ""  # date/time of message
    msh_9: str = ""  # message type, e.g. ORM^O01 or OMI^O23^OMI_O23
    msh_10: str = ""  # message control ID
    msh_11: str = ""  # processing ID
    msh_12: str = ""  # version ID
    msh_15: str = ""  # accept acknowledgment type
    msh_16: str = ""  # application acknowledgment type
    msh_18: str = ""  # character set

    @cached_property
    def has_valid_separators(self) -> bool:
        """MSH-1 and MSH-2 usable as delimiters (HL7 v2.5.1 section 2.5.4, 2.14.9.1-2): one field
        separator and four encoding characters (a fifth, the v2.7 truncation character, is
        tolerated), each a printable non-alphanumeric ASCII character other than space, all
        different.  Anything else cannot delimit fields, and cannot be echoed in an ACK."""
        chars = self.field_separator + self.encoding_characters
        return (len(self.field_separator) == 1 and len(self.encoding_characters) in (4, 5)
                and len(set(chars)) == len(chars)
                and all(33 <= ord(c) < 127 and not c.isalnum() for c in chars))

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[:1] or "^"

    @property
    def message_code(self) -> str:
        return self.msh_9.split(self.component_separator)[0].strip().upper()

    @property
    def trigger_event(self) -> str:
        parts = self.msh_9.split(self.component_separator)
        return parts[1].strip().upper() if len(parts) > 1 else ""

    @property
    def message_type(self) -> str:
        """``ORM^O01`` (code and trigger, without the structure)."""
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code

    @property
    def version(self) -> str:
        return self.msh_12.split(self.component_separator)[0].strip()


def split_segments(raw: bytes) -> list[bytes]:
    """Split on ``\\r``, ``\\n`` or ``\\r\\n`` and drop empty lines."""
    return [s for s in _SEGMENT_SPLIT.split(raw) if s.strip()]


def read_msh(raw: bytes) -> MSH | None:
    """The MSH of ``raw`` (the first segment), or None when there is no MSH at all.

    Reads bytes as Latin-1 (every byte maps to one character), which is exact for the ASCII
    fields of MSH; it never fails, whatever the rest of the message holds.
    """
    start = raw.find(b"MSH")
    if start < 0:
        return None
    line = _SEGMENT_SPLIT.split(raw[start:], maxsplit=1)[0].decode("latin-1")
    # The header is stored, looked up and echoed in the ACK, so a NUL in it becomes U+FFFD
    # (project.text); the message itself is refused for it (hl7gateway.limits).
    line = no_nul(line)
    if len(line) < 8:
        return None
    sep = line[3]
    parts = line.split(sep)
    # parts[0] = "MSH", parts[1] = encoding characters (MSH-2), parts[n-1] = MSH-n for n >= 3.

    def f(n: int) -> str:
        return parts[n - 1] if len(parts) > n - 1 else ""

    return MSH(
        field_separator=sep,
        encoding_characters=parts[1] if len(parts) > 1 else "^~\\&",
        msh_3=f(3), msh_4=f(4), msh_5=f(5), msh_6=f(6), msh_7=f(7), msh_9=f(9), msh_10=f(10),
        msh_11=f(11), msh_12=f(12), msh_15=f(15), msh_16=f(16), msh_18=f(18),
    )


def codec_for(msh_18: str) -> tuple[str, str]:
    """(charset name recorded, Python codec) for an MSH-18 value; HL7Error when unsupported."""
    name = (msh_18 or "").split("~")[0].strip().upper()
    if not name:
        name = settings.HL7_DEFAULT_CHARSET
    codec = CHARSETS.get(name)
    if codec is None:
        raise HL7Error(f"character set {name!r} (MSH-18) is not supported", code=103, location="MSH^1^18",
                       ack_code="AR")
    return name, codec


@dataclass
class ParsedMessage:
    """One message split into segments and fields (``fields[i][n]`` = field n of segment i as
    sent, ``fields[i][0]`` the segment ID; for MSH ``[1]`` is MSH-1 and ``[2]`` MSH-2, as in
    python-hl7).  Splitting with ``str.split`` costs a fraction of building python-hl7's
    container tree; ``message`` (python-hl7) is built only when asked for."""

    msh: MSH
    text: str  # \r-terminated segments
    charset: str  # the MSH-18 name used (or the default)
    fields: list[list[str]]
    separators: str  # python-hl7 order: segment, field, repetition, component, subcomponent
    esc: str

    @cached_property
    def message(self) -> hl7.Message:
        return hl7.parse(self.text)

    @cached_property
    def _unescaper(self) -> hl7.Message:
        return hl7.Message(separator=self.separators[0], sequence=[], esc=self.esc, separators=self.separators)

    def unescape(self, value: str) -> str:
        """HL7 escape sequences (v2.5.1 section 2.7) resolved by python-hl7's ``unescape``."""
        return self._unescaper.unescape(value) if self.esc in value else value

    def __iter__(self):
        return iter(self.fields)

    def segments(self, segment_id: str) -> list[Segment]:
        return [Segment(s, self) for s in self.fields if s[0] == segment_id]

    def segment(self, segment_id: str) -> Segment | None:
        found = self.segments(segment_id)
        return found[0] if found else None

    def groups(self, head: str, members: set[str]) -> list[list[Segment]]:
        """Split the segments after each ``head`` into groups: [head, member, member, ...]."""
        groups: list[list[Segment]] = []
        for raw in self.fields:
            seg = Segment(raw, self)
            if seg.id == head:
                groups.append([seg])
            elif groups and seg.id in members:
                groups[-1].append(seg)
        return groups


class Segment:
    """Read access to one segment by HL7 address: ``seg.get(3, 1)`` = component 1 of field 3.

    Returns unescaped strings (HL7 2.7 escape sequences ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``), the first
    repetition unless ``repetitions`` is used.
    """

    __slots__ = ("_seg", "_msg", "id")

    def __init__(self, seg: list[str], msg: ParsedMessage):
        self._seg = seg
        self._msg = msg
        self.id = seg[0]

    def field(self, n: int) -> str:
        """Field n as sent (escaped), all repetitions."""
        return self._seg[n] if len(self._seg) > n else ""

    def repetitions(self, n: int) -> list[str]:
        value = self.field(n)
        return value.split(self._msg.separators[2]) if value else []

    def components(self, n: int, repetition: int = 0) -> list[str]:
        reps = self.repetitions(n)
        if len(reps) <= repetition:
            return []
        return [self._msg.unescape(c) for c in reps[repetition].split(self._msg.separators[3])]

    def get(self, n: int, component: int = 1, subcomponent: int | None = None) -> str:
        comps = self.components(n)
        if len(comps) < component:
            return ""
        value = comps[component - 1]
        if subcomponent is not None:
            subs = value.split(self._msg.separators[4]) if len(self._msg.separators) > 4 else [value]
            value = subs[subcomponent - 1] if len(subs) >= subcomponent else ""
        return value.strip()

    def text(self, n: int) -> str:
        """Field n, first repetition, unescaped, components kept with ``^``."""
        return "^".join(self.components(n)).strip()

    def __repr__(self) -> str:
        return f"<Segment {self._seg}>"


def decode(raw: bytes, msh: MSH) -> tuple[str, str]:
    """Decode ``raw`` with its MSH-18 charset: (text with ``\\r`` terminators, charset name)."""
    charset, codec = codec_for(msh.msh_18)
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise HL7Error(
            f"bytes not valid in {charset} (MSH-18) at offset {exc.start}", code=102, location="MSH^1^18"
        ) from None
    lines = [s for s in _SEGMENT_SPLIT_TEXT.split(text) if s.strip()]
    return "\r".join(lines), charset


def parse(raw: bytes) -> ParsedMessage:
    """Parse one payload.  Raises ``HL7Error`` (with the ACK code to send) when it cannot."""
    msh = read_msh(raw)
    if msh is None or not raw.lstrip().startswith(b"MSH"):
        raise HL7Error("message does not start with an MSH segment", code=100, location="MSH^1", ack_code="AR")
    if not msh.has_valid_separators:
        raise HL7Error("MSH-1/MSH-2 separators are invalid", code=102, location="MSH^1^2", ack_code="AR")
    if not msh.msh_9:
        raise HL7Error("MSH-9 message type is missing", code=101, location="MSH^1^9", ack_code="AR")
    if not msh.msh_10:
        raise HL7Error("MSH-10 message control ID is missing", code=101, location="MSH^1^10", ack_code="AR")
    text, charset = decode(raw, msh)
    for i, line in enumerate(text.split("\r"), start=1):
        if not _SEGMENT_ID.match(line[:3]) or (len(line) > 3 and line[3] != msh.field_separator):
            raise HL7Error(f"segment {i} has no valid segment ID", code=100, location=f"{line[:3]}^{i}",
                           ack_code="AR")
    try:
        plan = hl7.parser.create_parse_plan(text)  # separators and escape character, as python-hl7 reads them
    except Exception as exc:  # noqa: BLE001 - python-hl7 raises assorted errors on bad input
        raise HL7Error(f"message cannot be parsed: {exc}", code=102, location="MSH^1", ack_code="AR") from None
    field_sep = plan.separators[1]
    fields = []
    for line in text.split("\r"):
        parts = line.split(field_sep)
        if parts[0] == "MSH":
            parts.insert(1, field_sep)  # MSH-1 is the separator itself
        fields.append(parts)
    return ParsedMessage(msh=msh, text=text, charset=charset, fields=fields, separators=plan.separators,
                         esc=plan.esc)
