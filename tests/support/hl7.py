"""HL7 v2 messages and MLLP clients for the tests: the fixture files (tests/fixtures/hl7) as
templates, ACKs read with python-hl7 (HL7 v2.5.1 chapter 2, MSA and ERR), MLLP framing
(HL7 v2.5.1 Appendix C), connections from a chosen source address (another loopback address
stands for another host), the process's RSS."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import hl7

#: MSH-3^MSH-4 of epic_orm_o01_nw.hl7 (and of ``new_order``'s messages): the interface key of their sender.
SENDER = "EPIC^SYNTH_HOSP"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hl7"


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


def unsupported(control_id: str) -> bytes:
    """A message type the engine does not accept (QRY^Q01 in MSH-9): answered AR."""
    return new_order(control_id).replace(b"ORM^O01", b"QRY^Q01", 1)


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


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A connection to the listener on 127.0.0.1 from ``source`` (any of 127.0.0.0/8 on Linux)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock: socket.socket, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send one framed message and return its ACK (unframed); AssertionError when closed instead."""
    sock.sendall(b"\x0b" + raw + b"\x1c\r")
    ack = recv_frame(sock, timeout)
    assert ack is not None, "the listener closed the connection instead of answering"
    return ack


def rss_kb() -> int:
    """Resident set size of this process (the in-process listener's too), from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def adt_a08(control_id: str, patient_id: str, *, issuer: str = "HOSP", name: str = "", birth_date: str = "",
            sex: str = "") -> bytes:
    """An ADT^A08 (HL7 v2.5.1 3.3.8, update patient information) for one patient, synthetic."""
    return ("MSH|^~\\&|EHR|HOSP|PACS|RADIOLOGY|20261203120000||ADT^A08^ADT_A01|" + control_id + "|P|2.5.1\r"
            "EVN|A08|20261203120000\r"
            f"PID|1||{patient_id}^^^{issuer}^MR||{name}||{birth_date}|{sex}\r"
            "PV1|1|O\r").encode()


def adt_a40(control_id: str, survivor_id: str, retired_id: str, *, issuer: str = "HOSP", name: str = "") -> bytes:
    """An ADT^A40 (HL7 v2.5.1 3.3.40, merge patient - patient identifier list): ``retired_id``
    (MRG-1) merged into ``survivor_id`` (PID-3), synthetic."""
    return ("MSH|^~\\&|EHR|HOSP|PACS|RADIOLOGY|20261203120000||ADT^A40^ADT_A39|" + control_id + "|P|2.5.1\r"
            "EVN|A40|20261203120000\r"
            f"PID|1||{survivor_id}^^^{issuer}^MR||{name}\r"
            f"MRG|{retired_id}^^^{issuer}^MR\r").encode()


def send_mllp(port: int, raw: bytes) -> dict:
    """Send one message to the engine's MLLP listener with python-hl7's client; the ACK's fields."""
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", port) as client:
        return ack_fields(unframe(client.send_message(raw)))
