"""DICOM Upper Layer framing and DIMSE command sets on a blocking socket (PS3.8 9.3, PS3.7 9-10).

What the engine's acceptor (``pacs.dimse.acceptor``) needs, written for speed: one PDU read
is two ``recv_into`` calls into one buffer, one P-DATA-TF carries the command set, and a
command set is encoded or decoded here in implicit VR little endian (PS3.7 6.3.1) without
building a pydicom Dataset.  A-ASSOCIATE-RQ/AC/RJ are encoded and decoded by pynetdicom's
PDU classes (``pacs.dimse.acceptor``), which are exercised by its own test suite.
"""

from __future__ import annotations

import socket
import struct
import time

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))

# A-ABORT source and reason (PS3.8 9.3.8)
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

# Largest PDU we read when we announce no limit (0): a bound against a peer that claims 4 GiB.
UNLIMITED_READ = 64 * 2**20

# Bounds of the PDUs other than P-DATA-TF, known from the header before any of the body is
# read.  An A-ASSOCIATE-RQ/AC is a few hundred bytes to a few KiB (PS3.8 9.3.2-9.3.3: one
# item per presentation context, each UID at most 64 bytes); A-ASSOCIATE-RJ, A-RELEASE-RQ/RP
# and A-ABORT have a fixed PDU-length of 4 (PS3.8 9.3.4, 9.3.6-9.3.8).
ASSOCIATE_PDU_MAX = 64 * 1024
PDU_BOUNDS = {
    A_ASSOCIATE_RQ: ASSOCIATE_PDU_MAX,
    A_ASSOCIATE_AC: ASSOCIATE_PDU_MAX,
    A_ASSOCIATE_RJ: 4,
    A_RELEASE_RQ: 4,
    A_RELEASE_RP: 4,
    A_ABORT: 4,
}
# A command set (PS3.7 9.3, 10.3) is a handful of group-0000 elements; anything near this
# bound is not one.
COMMAND_SET_MAX = 64 * 1024
# A body is read into a buffer that grows with what has arrived, starting here: a header
# announcing a length allocates nothing until the bytes come.
_FIRST_CHUNK = 16 * 1024
_ZEROS = memoryview(bytes(2**20))  # what a buffer is extended with, without a temporary copy
# A read may wait this much beyond its deadline: the socket's timeout is set again only when it
# would otherwise overshoot by more (setting it costs a system call per recv).
DEADLINE_SLACK = 0.25

_HEADER = struct.Struct(">BxL")
_PDV = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")


class ConnectionClosed(Exception):
    """The peer closed the connection (or it broke) before a whole PDU arrived."""


class ProtocolError(Exception):
    """A PDU or a command set we cannot accept; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = REASON_INVALID_PARAMETER):
        super().__init__(message)
        self.reason = reason


class Deadline:
    """The time by which a whole unit (a PDU, a DIMSE message) must have arrived.

    Each ``recv`` waits at most for what is left of it, so a peer that sends one byte now
    and then cannot stretch the unit beyond it (the ARTIM timer of PS3.8 9.1.5 for the
    A-ASSOCIATE-RQ; a whole message for P-DATA).  ``min_rate`` (bytes per second, 0 = none)
    extends it by what has arrived, so that a large data set on a slow but working link
    has the time its size needs, and a trickle earns nothing."""

    __slots__ = ("at", "min_rate")

    def __init__(self, seconds: float, min_rate: float = 0):
        self.at = time.monotonic() + seconds
        self.min_rate = min_rate

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def received(self, n: int) -> None:
        if self.min_rate:
            self.at += n / self.min_rate


class ReadBuffer:
    """One association's P-DATA-TF receive buffer, kept between PDUs.  It grows (doubling,
    never to more than twice what has arrived) to the largest body received so far and is
    then reused: a stream of PDUs at the negotiated maximum length is read with no allocation
    and no copy, and a header that announces a length still allocates nothing until the bytes
    come.  What ``read_pdu`` returns from it is valid until the next read into it."""

    __slots__ = ("data",)

    def __init__(self):
        self.data = bytearray()


def _fill(sock: socket.socket, view: memoryview, got: int, deadline: Deadline | None) -> int:
    """One ``recv_into`` at ``view[got:]``; the new count.  With ``deadline`` the socket's
    timeout is cut to what is left of it."""
    if deadline is not None:
        left = deadline.remaining()
        timeout = sock.gettimeout()
        if timeout is None or timeout > left + DEADLINE_SLACK:
            sock.settimeout(left)
    k = sock.recv_into(view[got:], len(view) - got)
    if k == 0:
        raise ConnectionClosed(f"connection closed after {got} of {len(view)} bytes")
    if deadline is not None:
        deadline.received(k)
    return got + k


def recv_exact(sock: socket.socket, n: int, deadline: Deadline | None = None,
               reuse: ReadBuffer | None = None) -> bytearray | memoryview:
    """``n`` bytes.  Into ``reuse`` when it is large enough (a view of it is returned), else
    into a buffer that grows (doubling) as they arrive, never to more than twice what has
    arrived, and that becomes ``reuse``'s.  With ``deadline`` the whole read must end by it;
    without, each ``recv`` has the socket's own timeout."""
    if reuse is not None and len(reuse.data) >= n:
        view = memoryview(reuse.data)[:n]
        got = 0
        while got < n:
            got = _fill(sock, view, got, deadline)
        return view
    buffer = bytearray(min(n, _FIRST_CHUNK))
    got = 0
    while got < n:
        if got == len(buffer):
            grow = min(n, 2 * got) - got
            while grow:
                step = min(grow, len(_ZEROS))
                buffer += _ZEROS[:step]
                grow -= step
        with memoryview(buffer) as view:
            got = _fill(sock, view, got, deadline)
    if reuse is not None:
        reuse.data = buffer
    return buffer


def read_pdu(sock: socket.socket, max_length: int, deadline: Deadline | None = None,
             expect: int | None = None, reuse: ReadBuffer | None = None) -> tuple[int, bytearray | memoryview]:
    """One PDU: ``(type, body)``.  ``max_length`` bounds a P-DATA-TF body (0 = UNLIMITED_READ),
    ``PDU_BOUNDS`` every other; both are checked on the header, before the body is read.
    ``expect``: the only PDU type acceptable here (any other is refused unread).  ``reuse``:
    the buffer a P-DATA-TF body is read into (then valid until the next read into it)."""
    pdu_type, length = _HEADER.unpack(recv_exact(sock, 6, deadline))
    if pdu_type not in PDU_TYPES:
        raise ProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", REASON_UNRECOGNIZED_PDU)
    if expect is not None and pdu_type != expect:
        raise ProtocolError(f"unexpected PDU 0x{pdu_type:02X}", REASON_UNEXPECTED_PDU)
    if pdu_type == P_DATA_TF:
        limit = max_length + 6 if max_length else UNLIMITED_READ  # a P-DATA-TF may carry its 6 header bytes
        if length > limit:
            raise ProtocolError(f"P-DATA-TF of {length} bytes exceeds the negotiated maximum")
    elif length > PDU_BOUNDS[pdu_type]:
        raise ProtocolError(f"PDU 0x{pdu_type:02X} of {length} bytes exceeds its bound")
    if not length:
        return pdu_type, bytearray()
    return pdu_type, recv_exact(sock, length, deadline, reuse if pdu_type == P_DATA_TF else None)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def abort_pdu(source: int = ABORT_SOURCE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    return pdu(A_ABORT, bytes((0, 0, source, reason)))


RELEASE_RP = pdu(A_RELEASE_RP, b"\x00\x00\x00\x00")


def iter_pdvs(body: bytearray):
    """The presentation data values of a P-DATA-TF body: ``(context_id, is_command, is_last, data)``."""
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("truncated PDV item")
        length, context_id, control = _PDV.unpack_from(view, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError("PDV item length out of range")
        yield context_id, bool(control & 0x01), bool(control & 0x02), view[offset + 6:offset + 4 + length]
        offset += 4 + length


def p_data_pdus(context_id: int, is_command: bool, data: bytes, max_length: int):
    """``data`` as one or more P-DATA-TF PDUs of one PDV each, within the peer's maximum
    (``max_length`` = its Maximum Length Received; 0 = no limit)."""
    room = (max_length - 6) if max_length else len(data) or 1
    room = max(room, 1)
    flag = 0x01 if is_command else 0x00
    total = len(data)
    if total <= room:
        yield _HEADER.pack(P_DATA_TF, total + 6) + _PDV.pack(total + 2, context_id, flag | 0x02) + data
        return
    view = memoryview(data)
    for start in range(0, total, room):
        chunk = view[start:start + room]
        last = 0x02 if start + room >= total else 0x00
        yield _HEADER.pack(P_DATA_TF, len(chunk) + 6) + _PDV.pack(len(chunk) + 2, context_id, flag | last) + chunk


def message_pdus(context_id: int, command: bytes, data: bytes | None, max_length: int) -> list[bytes]:
    """One DIMSE message as P-DATA-TF PDUs: the command set and the data set in ONE PDU (two
    PDVs) when both fit the peer's maximum, else fragmented.  Never more than one message per
    PDU: pynetdicom's receiver, for one, reads only the first message of a PDU."""
    if data is not None and max_length and len(command) + len(data) + 12 > max_length:
        return [*p_data_pdus(context_id, True, command, max_length), *p_data_pdus(context_id, False, data, max_length)]
    if data is None:
        return list(p_data_pdus(context_id, True, command, max_length))
    body = (_PDV.pack(len(command) + 2, context_id, 0x03) + command
            + _PDV.pack(len(data) + 2, context_id, 0x02) + data)
    return [_HEADER.pack(P_DATA_TF, len(body)) + body]


# Bytes of P-DATA-TF PDUs handed to the socket per write when a stored file is sent.
SEND_BYTES = 256 * 1024
_PDU_PDV = struct.Struct(">BxLLBB")  # PDU header + PDV header


def send_file_data_set(sock: socket.socket, fh, offset: int, context_id: int, room: int, *, name: str = "") -> None:
    """The data set of an open Part 10 file (from ``offset``, after its File Meta Information) as
    P-DATA-TF PDUs of ``room`` data bytes each; several PDUs are read into one buffer behind
    their headers and written with one ``sendall`` (at a peer's 16 KiB maximum a 512 KiB image
    is 32 PDUs).  Never decoded: the bytes go as stored."""
    fh.seek(0, 2)
    remaining = fh.tell() - offset
    fh.seek(offset)
    if remaining <= 0:
        sock.sendall(_PDU_PDV.pack(P_DATA_TF, 6, 2, context_id, 0x02))
        return
    step = 12 + min(room, remaining)
    per_write = max(1, SEND_BYTES // step)
    buffer = bytearray(step * per_write)
    view = memoryview(buffer)
    while remaining > 0:
        used = 0
        for _ in range(per_write):
            if remaining <= 0:
                break
            size = min(room, remaining)
            got = fh.readinto(view[used + 12:used + 12 + size])
            if got != size:
                raise OSError(f"{name or 'a stored file'} changed while being sent")
            remaining -= size
            _PDU_PDV.pack_into(buffer, used, P_DATA_TF, size + 6, size + 2, context_id, 0x00 if remaining else 0x02)
            used += 12 + size
        sock.sendall(view[:used])


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, implementation_class_uid: str,
              implementation_version_name: str, source_ae_title: str = "") -> bytes:
    """Zero preamble, 'DICM' and the File Meta Information group (PS3.10 7.1), explicit VR
    little endian, for a received data set."""
    body = b"".join([
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
        _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
        _meta_element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
        _meta_element(0x0012, b"UI", implementation_class_uid.encode("ascii")),
        _meta_element(0x0013, b"SH", implementation_version_name.encode("ascii")),
        *([_meta_element(0x0016, b"AE", source_ae_title.encode("ascii", "replace"))] if source_ae_title else []),
    ])
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(body)) + body


# ---------------------------------------------------------------------------------------------
# Command sets (PS3.7 9.3 / 10.3): group 0000, implicit VR little endian.

COMMAND_FIELDS = {
    0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE", 0x0030: "C-ECHO",
    0x0FFF: "C-CANCEL", 0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET",
    0x0130: "N-ACTION", 0x0140: "N-CREATE", 0x0150: "N-DELETE",
}
NO_DATA_SET = 0x0101

# keyword -> (tag, VR) of the command elements we read or write
COMMAND_ELEMENTS = {
    "AffectedSOPClassUID": (0x00000002, "UI"),
    "RequestedSOPClassUID": (0x00000003, "UI"),
    "CommandField": (0x00000100, "US"),
    "MessageID": (0x00000110, "US"),
    "MessageIDBeingRespondedTo": (0x00000120, "US"),
    "MoveDestination": (0x00000600, "AE"),
    "Priority": (0x00000700, "US"),
    "CommandDataSetType": (0x00000800, "US"),
    "Status": (0x00000900, "US"),
    "OffendingElement": (0x00000901, "AT"),
    "ErrorComment": (0x00000902, "LO"),
    "ErrorID": (0x00000903, "US"),
    "AffectedSOPInstanceUID": (0x00001000, "UI"),
    "RequestedSOPInstanceUID": (0x00001001, "UI"),
    "EventTypeID": (0x00001002, "US"),
    "AttributeIdentifierList": (0x00001005, "AT"),
    "ActionTypeID": (0x00001008, "US"),
    "NumberOfRemainingSuboperations": (0x00001020, "US"),
    "NumberOfCompletedSuboperations": (0x00001021, "US"),
    "NumberOfFailedSuboperations": (0x00001022, "US"),
    "NumberOfWarningSuboperations": (0x00001023, "US"),
    "MoveOriginatorApplicationEntityTitle": (0x00001030, "AE"),
    "MoveOriginatorMessageID": (0x00001031, "US"),
}
_KEYWORD_OF_TAG = {tag: keyword for keyword, (tag, _vr) in COMMAND_ELEMENTS.items()}


def _decode_value(vr: str, raw: memoryview):
    if vr == "US":
        if len(raw) != 2:
            raise ProtocolError("US command element of the wrong length")
        return raw[0] | (raw[1] << 8)
    if vr == "UL":
        return int.from_bytes(raw, "little")
    if vr == "AT":
        return [int.from_bytes(raw[i:i + 2], "little") << 16 | int.from_bytes(raw[i + 2:i + 4], "little")
                for i in range(0, len(raw) - 3, 4)]
    text = bytes(raw).decode("ascii", "replace")
    return text.rstrip("\x00 ") if vr == "UI" else text.strip()


class Command:
    """A decoded command set: its elements as attributes by DICOM keyword (absent = None)."""

    __slots__ = ("elements",)

    def __init__(self, elements: dict):
        self.elements = elements

    def __getattr__(self, keyword: str):
        if keyword.startswith("__"):
            raise AttributeError(keyword)
        return self.elements.get(keyword)

    @property
    def has_data_set(self) -> bool:
        kind = self.elements.get("CommandDataSetType")
        return kind is not None and kind != NO_DATA_SET

    @property
    def name(self) -> str:
        return COMMAND_FIELDS.get(self.elements.get("CommandField"), "unknown")


def decode_command(data: bytes | bytearray) -> Command:
    """Decode a command set (implicit VR LE).  Unknown group-0000 elements are skipped."""
    view = memoryview(data)
    offset, end = 0, len(data)
    elements = {}
    while offset < end:
        if end - offset < 8:
            raise ProtocolError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += 8
        if group != 0x0000 or length == 0xFFFFFFFF or offset + length > end:
            raise ProtocolError("command set is not group 0000 in implicit VR little endian")
        tag = element  # group is 0
        keyword = _KEYWORD_OF_TAG.get(tag)
        if keyword is not None:
            vr = COMMAND_ELEMENTS[keyword][1]
            elements[keyword] = _decode_value(vr, view[offset:offset + length])
        offset += length
    if "CommandField" not in elements:
        raise ProtocolError("command set without CommandField")
    return Command(elements)


def _encode_value(vr: str, value) -> bytes:
    if vr == "US":
        return int(value).to_bytes(2, "little")
    if vr == "UL":
        return int(value).to_bytes(4, "little")
    if vr == "AT":
        values = value if isinstance(value, (list, tuple)) else [value]
        return b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in values)
    raw = str(value).encode("ascii", "replace")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def encode_command(elements: dict) -> bytes:
    """Encode ``{keyword: value}`` (keywords of COMMAND_ELEMENTS; None values left out) as a
    command set with its CommandGroupLength, elements in tag order."""
    parts = []
    for keyword, value in sorted(
        ((k, v) for k, v in elements.items() if v is not None), key=lambda kv: COMMAND_ELEMENTS[kv[0]][0]
    ):
        tag, vr = COMMAND_ELEMENTS[keyword]
        raw = _encode_value(vr, value)
        parts.append(_ELEMENT.pack(0, tag, len(raw)) + raw)
    body = b"".join(parts)
    return _ELEMENT.pack(0, 0, 4) + len(body).to_bytes(4, "little") + body


def status_elements(status) -> dict:
    """A handler's status (an int, or a Dataset with Status and other group-0000 keywords) as
    command elements."""
    if isinstance(status, int):
        return {"Status": status}
    elements = {"Status": int(status.Status)}
    for elem in status:
        if elem.tag.group != 0 or elem.tag.element == 0x0900:
            continue
        keyword = _KEYWORD_OF_TAG.get(elem.tag.element)
        if keyword is None:
            continue
        value = elem.value
        if COMMAND_ELEMENTS[keyword][1] == "AT" and not isinstance(value, (list, tuple)):
            value = [value]
        elements[keyword] = value
    return elements
