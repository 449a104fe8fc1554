"""Helpers for the inbound HL7 tests: fixture files, ACK reading, a real listener on port 0."""

from __future__ import annotations

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
