"""A lean C-FIND SCU for benchmarks: one association per query, written straight onto a socket.

pynetdicom's own SCU costs several milliseconds per association and per answer in the client
(its state machine, its DIMSE queues), the same for every server it talks to, which hides what
the servers themselves spend.  This client does only what PS3.8 and PS3.7 require for one query:

* A-ASSOCIATE-RQ (PS3.8 9.3.2) with the application context, one presentation context (the
  C-FIND SOP class, Implicit VR Little Endian) and the user information (maximum length,
  implementation class UID); the A-ASSOCIATE-AC's context result must be 0 (acceptance);
* one C-FIND-RQ (PS3.7 9.3.2.1) as two P-DATA-TF PDUs (command, then identifier);
* the C-FIND-RSPs are read until a status that is not Pending (0xFF00 / 0xFF01), counting the
  Pending ones (each carries one match); the identifiers are not decoded;
* A-RELEASE-RQ / A-RELEASE-RP (PS3.8 9.3.6, 9.3.7).

It is no general SCU: it refuses anything it does not expect (an A-ASSOCIATE-RJ, an A-ABORT,
a rejected context) with an exception.
"""

from __future__ import annotations

import socket
import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"
CONTEXT_ID = 1


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def associate_rq(calling: str, called: str, sop_class: str) -> bytes:
    context = struct.pack(">BBBB", CONTEXT_ID, 0, 0, 0) + _item(0x30, _uid(sop_class)) + _item(0x40, _uid(IMPLICIT_LE))
    user = _item(0x51, struct.pack(">I", 65536)) + _item(0x52, _uid(IMPLEMENTATION_CLASS_UID))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
            + _item(0x10, _uid(APPLICATION_CONTEXT)) + _item(0x20, context) + _item(0x50, user))
    return _pdu(0x01, body)


def _implicit(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()


def c_find_rq(sop_class: str, identifier: Dataset, message_id: int = 1) -> bytes:
    """The C-FIND-RQ command set (group 0000, always Implicit VR Little Endian, PS3.7 6.3.1)
    and the identifier, each in its own P-DATA-TF with one last-fragment PDV."""
    command = Dataset()
    command.AffectedSOPClassUID = sop_class
    command.CommandField = 0x0020
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0001
    encoded = _implicit(command)
    group_length = struct.pack("<HHI", 0x0000, 0x0000, 4) + struct.pack("<I", len(encoded))
    command_bytes = group_length + encoded
    data_bytes = _implicit(identifier)
    pdv_command = struct.pack(">IBB", len(command_bytes) + 2, CONTEXT_ID, 0x03) + command_bytes
    pdv_data = struct.pack(">IBB", len(data_bytes) + 2, CONTEXT_ID, 0x02) + data_bytes
    return _pdu(0x04, pdv_command) + _pdu(0x04, pdv_data)


RELEASE_RQ = _pdu(0x05, bytes(4))


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    kind, _, length = struct.unpack(">BBI", _read_exactly(sock, 6))
    return kind, _read_exactly(sock, length)


def _status(command: bytes) -> int:
    """(0000,0900) Status of an Implicit VR Little Endian command set."""
    at = 0
    while at + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, at)
        if (group, element) == (0x0000, 0x0900):
            return struct.unpack_from("<H", command, at + 8)[0]
        at += 8 + length
    raise ValueError("a C-FIND-RSP without a Status")


def _accepted(ac: bytes) -> bool:
    at = 68  # after the fixed fields of the A-ASSOCIATE-AC (PS3.8 9.3.3)
    while at + 4 <= len(ac):
        kind, _, length = struct.unpack_from(">BBH", ac, at)
        if kind == 0x21:
            return ac[at + 4 + 2] == 0
        at += 4 + length
    return False


def find(host: str, port: int, *, calling: str, called: str, sop_class: str, identifier: Dataset) -> int:
    """One association, one C-FIND; the number of Pending answers.  A final status other than
    Success raises."""
    request = associate_rq(calling, called, sop_class), c_find_rq(sop_class, identifier)
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request[0])
        kind, body = _read_pdu(sock)
        if kind != 0x02 or not _accepted(body):
            raise ConnectionError(f"association not accepted (PDU type 0x{kind:02X})")
        sock.sendall(request[1])
        pending, command = 0, b""
        while True:
            kind, body = _read_pdu(sock)
            if kind != 0x04:
                raise ConnectionError(f"unexpected PDU type 0x{kind:02X} during the C-FIND")
            at = 0
            final = None
            while at < len(body):
                length, _context, header = struct.unpack_from(">IBB", body, at)
                if header & 0x01:  # a command fragment
                    command += body[at + 6:at + 4 + length]
                    if header & 0x02:
                        status = _status(command)
                        command = b""
                        if status in (0xFF00, 0xFF01):
                            pending += 1
                        else:
                            final = status
                at += 4 + length
            if final is not None:
                break
        sock.sendall(RELEASE_RQ)
        kind, _ = _read_pdu(sock)
        if kind != 0x06:
            raise ConnectionError(f"no A-RELEASE-RP (PDU type 0x{kind:02X})")
    if final != 0x0000:
        raise RuntimeError(f"C-FIND ended with status 0x{final:04X}")
    return pending
