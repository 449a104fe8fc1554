"""Helpers for the inbound HL7 tests: fixture files, ACK reading, a real listener on port 0."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import hl7

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hl7"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def with_control_id(raw: bytes, control_id: str) -> bytes:
    """The fixture with MSH-10 replaced (fixtures are templates for repeated sends)."""
    line_end = min(i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0)
    msh, tail = raw[:line_end], raw[line_end:]
    fields = msh.split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + tail


_orders = itertools.count(1)


def new_order(control_id: str) -> bytes:
    """epic_orm_o01_nw.hl7 as a new order: its own MSH-10, placer number, accession numbers,
    procedure and step IDs and Study Instance UIDs (unique across test processes)."""
    n = next(_orders) + os.getpid() % 1000 * 1000
    raw = with_control_id(fixture("epic_orm_o01_nw.hl7"), control_id)
    for old, new in ((b"P10001^", f"PM{n}^"), (b"EA100001", f"EM{n}A"), (b"EA100002", f"EM{n}B"),
                     (b"RP100001", f"RPM{n}A"), (b"RP100002", f"RPM{n}B"), (b"SPS100001", f"SPM{n}A"),
                     (b"SPS100002", f"SPM{n}B"), (b".1234.1001", f".1234.9{n}1"), (b".1234.1002", f".1234.9{n}2")):
        raw = raw.replace(old, new.encode())
    return raw


def unframe(data: bytes) -> bytes:
    assert data.startswith(b"\x0b") and data.endswith(b"\x1c\r"), f"not an MLLP frame: {data[:40]!r}"
    return data[1:-2]


def ack_fields(ack: bytes | str) -> dict:
    """MSH / MSA / ERR of an ACK, parsed with python-hl7."""
    text = ack.decode("utf-8") if isinstance(ack, bytes) else ack
    msg = hl7.parse(text)
    msh, msa = msg.segment("MSH"), msg.segment("MSA")
    out = {
        "msh_3": str(msh[3]), "msh_4": str(msh[4]), "msh_5": str(msh[5]), "msh_6": str(msh[6]),
        "msh_9": str(msh[9]), "msh_10": str(msh[10]), "msh_12": str(msh[12]),
        "msa_1": str(msa[1]), "msa_2": str(msa[2]), "msa_3": str(msa[3]) if len(msa) > 3 else "",
        "err": None,
    }
    try:
        out["err"] = str(msg.segment("ERR"))
    except KeyError:
        pass
    return out


def recv_frame(sock, timeout: float = 10.0) -> bytes | None:
    """Read one MLLP frame (None when the peer closed first)."""
    sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return unframe(buf)
