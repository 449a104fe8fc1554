"""A real MLLP listener that stands in for billing or the EHR (an HL7 receiving system).

It listens on a TCP port, decodes MLLP frames with ``hl7gateway.mllp`` and answers each
message the way it is told -- AA, AE or AR (original-mode ACK with MSA-2 = our MSH-10),
nothing at all (``SILENT``: the sender's ACK timeout fires), or by closing the connection
(``CLOSE``) -- and it can be taken down (port closed: connection refused) and brought up
again on the same port.  It records every message it received, with the answer it gave.

It also answers order messages (ORM^O01 / OMI^O23) the way an EHR, the order placer, answers a
new filler order (ORC-1 SN, HL7 v2.5.1 4.5.1.1): ``NA`` -- ORR^O02 (v2.3.1) or ORG^O20 (v2.5.1)
with MSA-1 AA, ORC-1 NA and ORC-2 a placer order number it assigns (``placer_namespace``, the
number kept in ``Received.placer_order_number``); ``NA_NO_NUMBER`` -- the same without ORC-2;
``UA`` -- ORR/ORG with MSA-1 AR and ORC-1 UA ("unable to accept order", HL7 table 0119).

Used by the outbox tests and by ``bench/oru_delivery.py``::

    with MLLPSink() as sink:            # port 0: an ephemeral port
        sink.script(["AE", "AA"])      # answers for the next messages, then ``sink.mode``
        ...
        sink.wait_for(2, timeout=10)
        sink.control_ids()             # MSH-10 of each message received, in order

MLLP over TLS (a destination ``mllps://``): give it a server context, e.g.
``MLLPSink(tls=tls_context(cert, key))`` -- Python's ``ssl`` on a real listener, nothing of the
engine's; with ``ca`` it asks for (and verifies) the client's certificate.  A handshake that
fails is counted in ``handshake_failures`` (its reason in ``handshake_errors``).

Run on its own: ``python tests/support/mllp_sink.py --port 2576 --mode AA`` (``--certificate``,
``--key`` and optionally ``--ca`` for TLS).
"""

from __future__ import annotations

import argparse
import itertools
import socket
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make hl7gateway importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hl7gateway.mllp import MLLPDecoder, frame  # noqa: E402

AA, AE, AR, SILENT, CLOSE = "AA", "AE", "AR", "SILENT", "CLOSE"
NA, NA_NO_NUMBER, UA = "NA", "NA_NO_NUMBER", "UA"  # answers of an order placer (ORR^O02 / ORG^O20)
MODES = (AA, AE, AR, SILENT, CLOSE, NA, NA_NO_NUMBER, UA)


@dataclass(frozen=True)
class Received:
    payload: bytes
    control_id: str  # MSH-10
    answer: str  # the mode used to answer it
    at: float  # time.monotonic()
    placer_order_number: str = ""  # ORC-2.1 the ``NA`` answer assigned

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def segments(self) -> list[list[str]]:
        return [s.split("|") for s in self.text.split("\r") if s]

    def segment(self, name: str, index: int = 0) -> list[str]:
        """Fields of the index-th segment called ``name``; MSH fields are numbered like the standard."""
        found = [s for s in self.segments() if s[0] == name]
        seg = found[index]
        return ["MSH", "|"] + seg[1:] if name == "MSH" else seg


def _msh_fields(payload: bytes) -> list[str]:
    text = payload.decode("utf-8", errors="replace")
    first = text.split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return []
    sep = first[3]
    return ["MSH", sep] + first[4:].split(sep)[0:]  # index n = MSH-n (MSH-2 = encoding characters)


def build_ack(payload: bytes, code: str, control_id: str, text: str = "") -> bytes:
    """ACK^R01 in original mode: MSH-3/4 and 5/6 swapped, MSH-12 echoed, MSA-1 code, MSA-2 = MSH-10."""
    msh = _msh_fields(payload)

    def f(n: int) -> str:
        return msh[n] if len(msh) > n else ""

    now = time.strftime("%Y%m%d%H%M%S")
    lines = [
        f"MSH|^~\\&|{f(5)}|{f(6)}|{f(3)}|{f(4)}|{now}||ACK^R01^ACK|ACK{next(_ack_ids)}|P|{f(12) or '2.5.1'}",
        f"MSA|{code}|{control_id}" + (f"|{text}" if text else ""),
    ]
    if code != AA:
        lines.append(f"ERR|||207^Application internal error^HL70357|E||||{text}")
    return ("\r".join(lines) + "\r").encode("utf-8")


_ack_ids = itertools.count(1)


def _orc3(payload: bytes) -> str:
    """ORC-3 (filler order number) of the message, as sent."""
    for seg in payload.decode("utf-8", errors="replace").split("\r"):
        if seg.startswith("ORC|"):
            fields = seg.split("|")
            return fields[3] if len(fields) > 3 else ""
    return ""


def build_order_answer(payload: bytes, code: str, control_id: str, order_control: str, placer: str = "",
                       text: str = "") -> bytes:
    """The answer of an order placer to an order message: ORR^O02 to a v2.3.1 ORM^O01, ORG^O20
    (with its message structure) to a v2.5.1 OMI^O23 -- MSA-1 ``code``, MSA-2 = MSH-10, then
    ORC-1 ``order_control`` (NA, UA), ORC-2 ``placer`` (number^namespace) and ORC-3 echoed."""
    msh = _msh_fields(payload)

    def f(n: int) -> str:
        return msh[n] if len(msh) > n else ""

    version = f(12) or "2.5.1"
    message_type = "ORR^O02" if version.startswith("2.3") else "ORG^O20^ORG_O20"
    now = time.strftime("%Y%m%d%H%M%S")
    lines = [
        f"MSH|^~\\&|{f(5)}|{f(6)}|{f(3)}|{f(4)}|{now}||{message_type}|ORR{next(_ack_ids)}|P|{version}",
        f"MSA|{code}|{control_id}" + (f"|{text}" if text else ""),
    ]
    if code != AA:
        lines.append(f"ERR|||207^Application internal error^HL70357|E||||{text}")
    lines.append(f"ORC|{order_control}|{placer}|{_orc3(payload)}")
    return ("\r".join(lines) + "\r").encode("utf-8")


def tls_context(certificate, key, ca=None) -> ssl.SSLContext:
    """A server context of the sink: its certificate chain and key; with ``ca``, client
    certificates are required and verified against it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certificate), str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class MLLPSink:
    """A threaded MLLP receiver on 127.0.0.1 (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, mode: str = AA, ack_delay: float = 0.0,
                 record_payloads: bool = True, tls: ssl.SSLContext | None = None, placer_namespace: str = "EHR"):
        if mode not in MODES:
            raise ValueError(mode)
        self.host = host
        self.port = port
        self.mode = mode
        self.ack_delay = ack_delay
        self.record_payloads = record_payloads
        self.tls = tls
        self.placer_namespace = placer_namespace  # ORC-2.2 of the placer order numbers ``NA`` assigns
        self._placer_numbers = itertools.count(1)
        self.handshake_failures = 0
        self.handshake_errors: list[str] = []
        self.peer_certificates: list[dict] = []  # ssl getpeercert() of each TLS connection with one
        self.received: list[Received] = []
        self.count = 0
        self.connections = 0
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._running = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> MLLPSink:
        """Listen (again) on the port; the first start picks an ephemeral port if port is 0."""
        if self._running:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running = True
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                               name=f"mllp-sink-{self.port}")
        self._accept_thread.start()
        return self

    up = start

    def down(self) -> None:
        """Stop listening and drop every open connection: senders get connection refused."""
        self._running = False
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)

    stop = down

    def __enter__(self) -> MLLPSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.down()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"{'mllps' if self.tls else 'mllp'}://{self.host}:{self.port}"

    # -- behaviour -----------------------------------------------------------------------
    def script(self, answers: list[str]) -> None:
        """Answer the next messages with these modes, in order, then fall back to ``mode``."""
        for a in answers:
            if a not in MODES:
                raise ValueError(a)
        with self._lock:
            self._script.extend(answers)

    def _next_answer(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else self.mode

    # -- observation ---------------------------------------------------------------------
    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least n messages were received; raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"sink received {self.count} messages, expected {n} within {timeout} s")
                self._cond.wait(left)
            return list(self.received)

    def control_ids(self) -> list[str]:
        with self._lock:
            return [r.control_id for r in self.received]

    # -- serving -------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if not self._running:
                conn.close()
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.add(conn)
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _handshake(self, conn: socket.socket) -> ssl.SSLSocket | None:
        plain = conn
        try:
            conn.settimeout(10)
            conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(None)
        except (OSError, ValueError) as exc:
            with self._lock:
                self.handshake_failures += 1
                self.handshake_errors.append(str(exc))
                self._open.discard(plain)
            plain.close()
            return None
        with self._lock:
            self._open.discard(plain)
            self._open.add(conn)
            if conn.getpeercert():
                self.peer_certificates.append(conn.getpeercert())
        return conn

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            conn = self._handshake(conn)
            if conn is None:
                return
        decoder = MLLPDecoder()
        try:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for payload in decoder.feed(data):
                    msh = _msh_fields(payload)
                    control_id = msh[10] if len(msh) > 10 else ""
                    answer = self._next_answer()
                    placer = f"PL{self.port}{next(self._placer_numbers):05d}" if answer == NA else ""
                    with self._cond:
                        self.received.append(Received(payload if self.record_payloads else b"", control_id, answer,
                                                      time.monotonic(), placer))
                        self.count += 1
                        self._cond.notify_all()
                    if answer == SILENT:
                        continue
                    if answer == CLOSE:
                        return
                    if self.ack_delay:
                        time.sleep(self.ack_delay)
                    text = {AE: "Simulated application error", AR: "Simulated rejection",
                            UA: "Simulated order rejection"}.get(answer, "")
                    if answer == NA:
                        reply = build_order_answer(payload, AA, control_id, "NA", f"{placer}^{self.placer_namespace}")
                    elif answer == NA_NO_NUMBER:
                        reply = build_order_answer(payload, AA, control_id, "NA")
                    elif answer == UA:
                        reply = build_order_answer(payload, AR, control_id, "UA", text=text)
                    else:
                        reply = build_ack(payload, answer, control_id, text)
                    try:
                        conn.sendall(frame(reply))
                    except OSError:
                        return
        finally:
            with self._lock:
                self._open.discard(conn)
            try:
                conn.close()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MLLP sink: ACKs every HL7 message it receives "
                                                 "(NA, NA_NO_NUMBER, UA: answers as an order placer)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default=AA, choices=MODES)
    parser.add_argument("--certificate", help="PEM certificate chain: MLLP over TLS")
    parser.add_argument("--key", help="PEM private key of --certificate")
    parser.add_argument("--ca", help="PEM CA bundle: require and verify client certificates")
    args = parser.parse_args(argv)
    context = tls_context(args.certificate, args.key, args.ca) if args.certificate else None
    sink = MLLPSink(args.host, args.port, args.mode, record_payloads=False, tls=context).start()
    print(f"listening on {sink.url} answering {sink.mode}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sink.down()


if __name__ == "__main__":
    main()
