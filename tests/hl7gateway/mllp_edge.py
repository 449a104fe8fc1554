"""Helpers for the socket tests of the MLLP listener's edge: clients from a chosen source
address (another loopback address stands for another host), one exchange, the process's RSS."""

from __future__ import annotations

import socket

from tests.hl7gateway.intake_helpers import recv_frame


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
