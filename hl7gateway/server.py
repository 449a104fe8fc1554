"""The MLLP listener behind ``manage.py run_mllp``.

One thread per connection: messages of one connection are handled strictly in arrival order
(one ACK written before the next frame is handled), connections run concurrently, each with
its own database connection.  Limits (settings), so that no stranger can hold what the EHR
needs (every read has a deadline for the whole message, every slot a cap per address):

* ``HL7_MAX_FRAME_BYTES``: a larger frame is answered AR, then the connection is closed;
* ``HL7_MESSAGE_DEADLINE_SECONDS``: from the first byte after the last complete frame (or after
  connecting) to the end of the next frame -- junk outside frames included -- a message has
  this long; a sender trickling bytes is cut at the deadline, not after its next byte (each
  ``recv`` waits only for what is left of the deadline).  Writing an ACK has the same bound;
* ``HL7_IDLE_TIMEOUT_SECONDS``: between messages, no byte for that long: closed;
* ``HL7_MAX_CONNECTIONS_PER_ADDRESS`` and ``HL7_MAX_CONNECTIONS``: one connection more from
  that source address, or in total, is closed at once and logged.  The counts are per
  listener process (``--workers N`` gives each process its own).

Bytes outside frames are skipped and logged; up to ``STRAY_LINE_ENDS`` line ends after a frame
do not start the deadline (senders that end frames with CR LF or put LF between them).
``port=0`` binds an ephemeral port, read back from ``server.port``.  With ``reuse_port``
several processes listen on one port (SO_REUSEPORT; ``run_mllp --workers N``).

With ``tls_context`` (``project.tls.server_context``: TLS 1.2 or 1.3, the BCP 195 profile of
DICOM PS3.15 Annex B.9, which MLLP over TLS follows as well) the listener is MLLP over TLS
(``HL7_MLLP_TLS_PORT``): the same limits apply, the connection's slot is taken before the
handshake, and the whole handshake has ``HL7_MESSAGE_DEADLINE_SECONDS`` -- a client that never
finishes it, or speaks clear text, is cut and never reaches the intake.  A client certificate,
when the context asks for one, is verified by OpenSSL against ``TLS_CA_CERTIFICATES`` during
the handshake; one missing (``required``), untrusted or expired ends the connection there.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connections

from hl7gateway import auditing, intake
from hl7gateway.mllp import FrameTooLarge, MLLPDecoder, frame
from hl7gateway.senders import address_of, source_address
from project.tls import peer_certificate

log = logging.getLogger("hl7gateway.server")

RECV_BYTES = 65536
#: Line ends (CR, LF) outside frames after a frame that do not start the message deadline.
STRAY_LINE_ENDS = 4


class MLLPServer:
    def __init__(self, host: str | None = None, port: int | None = None, *, max_frame_bytes: int | None = None,
                 idle_timeout: float | None = None, max_connections: int | None = None,
                 max_connections_per_address: int | None = None, message_deadline: float | None = None,
                 handler: Callable[[bytes, str], bytes] | None = None, reuse_port: bool = False,
                 sock: socket.socket | None = None, tls_context: ssl.SSLContext | None = None):
        self.host = settings.HL7_MLLP_HOST if host is None else host
        self.max_frame_bytes = max_frame_bytes or settings.HL7_MAX_FRAME_BYTES
        self.idle_timeout = idle_timeout or settings.HL7_IDLE_TIMEOUT_SECONDS
        self.max_connections = max_connections or settings.HL7_MAX_CONNECTIONS
        self.max_connections_per_address = max_connections_per_address or settings.HL7_MAX_CONNECTIONS_PER_ADDRESS
        self.message_deadline = message_deadline or settings.HL7_MESSAGE_DEADLINE_SECONDS
        self.handler = handler or intake.handle_payload
        self.tls_context = tls_context
        if sock is None:
            sock = listening_socket(self.host, settings.HL7_MLLP_PORT if port is None else port, reuse_port=reuse_port)
        self.sock = sock
        self.port = sock.getsockname()[1]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[int, socket.socket] = {}
        self._per_address: dict[str, int] = {}
        self._threads: set[threading.Thread] = set()
        self._accept_thread: threading.Thread | None = None
        self.stats = {"connections": 0, "refused": 0, "refused_per_address": 0, "deadline_cuts": 0, "messages": 0,
                      "junk_bytes": 0, "tls_refused": 0}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> MLLPServer:
        """Serve in a background thread (tests, benchmarks)."""
        self._accept_thread = threading.Thread(target=self.serve_forever, name=f"mllp-accept-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        return self

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        log.info("MLLP listener ready", extra={"host": self.host, "port": self.port, "tls": bool(self.tls_context)})
        while not self._stopping.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            self._admit(conn, addr)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns.values())
            threads = list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        for t in threads:
            t.join(timeout)

    # -- connections ----------------------------------------------------------------------
    def _admit(self, conn: socket.socket, addr) -> None:
        address = source_address(addr[0])
        peer = f"{addr[0]}:{addr[1]}"
        with self._lock:
            held = self._per_address.get(address, 0)
            if len(self._conns) >= self.max_connections or held >= self.max_connections_per_address:
                per_address = held >= self.max_connections_per_address
                self.stats["refused_per_address" if per_address else "refused"] += 1
                log.warning("connection refused: HL7_MAX_CONNECTIONS_PER_ADDRESS reached" if per_address
                            else "connection refused: HL7_MAX_CONNECTIONS reached",
                            extra={"peer": peer, "held_by_address": held, "open": len(self._conns)})
                conn.close()
                return
            self._conns[id(conn)] = conn
            self._per_address[address] = held + 1
            self.stats["connections"] += 1
            t = threading.Thread(target=self._serve_connection, args=(conn, peer, address), name=f"mllp-{peer}",
                                 daemon=True)
            self._threads.add(t)
        t.start()

    def _serve_connection(self, conn: socket.socket, peer: str, address: str) -> None:
        key = id(conn)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = MLLPDecoder(self.max_frame_bytes)
        log.info("connection opened", extra={"peer": peer})
        started: float | None = None  # monotonic time of the first byte of the message under way
        stray = 0  # line-end bytes received outside frames since the last complete frame
        try:
            if self.tls_context is not None:
                tls = self._handshake(conn, peer, key)
                if tls is None:
                    return
                conn = tls
            while not self._stopping.is_set():
                if started is None:
                    conn.settimeout(self.idle_timeout)
                else:
                    left = started + self.message_deadline - time.monotonic()
                    if left <= 0:
                        self._cut(peer, decoder)
                        break
                    conn.settimeout(left)
                try:
                    data = conn.recv(RECV_BYTES)
                except TimeoutError:
                    if started is None:
                        log.info("idle timeout: connection closed", extra={"peer": peer, "seconds": self.idle_timeout})
                    else:
                        self._cut(peer, decoder)
                    break
                except OSError:
                    break
                received_at = time.monotonic()
                if not data:
                    if decoder.partial is not None:
                        log.warning("peer closed inside a frame: truncated message discarded, not acknowledged",
                                    extra={"peer": peer, "bytes": len(decoder.partial)})
                    break
                junk_before = decoder.junk_bytes
                try:
                    payloads = decoder.feed(data)
                except FrameTooLarge as exc:
                    self._log_junk(decoder, peer)
                    self._answer(conn, peer, exc.payloads_before)
                    log.warning("frame over HL7_MAX_FRAME_BYTES: AR sent, connection closed",
                                extra={"peer": peer, "limit": exc.limit, "size": exc.size})
                    self._send(conn, peer, intake.handle_oversize(exc.head, exc.size, exc.limit, peer))
                    break
                self._log_junk(decoder, peer)
                if payloads:
                    # A frame completed: the next message's deadline starts with its first byte
                    # (already here when another frame began in this read).
                    started = received_at if decoder.in_frame else None
                    stray = 0
                elif started is None:
                    junk = decoder.junk_bytes - junk_before
                    if not decoder.in_frame and not data.strip(b"\r\n") and stray + junk <= STRAY_LINE_ENDS:
                        stray += junk  # a line end after a frame, as some senders write: not a message
                    else:
                        started = received_at
                if not self._answer(conn, peer, payloads):
                    break
        finally:
            try:
                conn.close()
            finally:
                with self._lock:
                    self._conns.pop(key, None)
                    held = self._per_address.pop(address, 1) - 1
                    if held > 0:
                        self._per_address[address] = held
                    self._threads.discard(threading.current_thread())
                connections.close_all()
                log.info("connection closed", extra={"peer": peer})

    def _handshake(self, conn: socket.socket, peer: str, key: int) -> ssl.SSLSocket | None:
        """The TLS handshake, all of it within ``message_deadline`` (a peer sending its
        ClientHello byte by byte is cut at the deadline too: non-blocking steps, each waiting
        only for what is left).  Returns the TLS socket, or None when the connection was ended."""
        deadline = time.monotonic() + self.message_deadline
        conn.setblocking(False)
        try:
            tls = self.tls_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.warning("TLS connection could not be set up", extra={"peer": peer, "error": str(exc)})
            return None
        with self._lock:
            if key in self._conns:
                self._conns[key] = tls  # stop() shuts down the socket that now owns the descriptor
        reason = ""
        while not reason:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                wait = ([tls], [])
            except ssl.SSLWantWriteError:
                wait = ([], [tls])
            except ssl.SSLCertVerificationError as exc:
                reason = f"client certificate refused: {exc.verify_message or exc.reason}"
                continue
            except ssl.SSLError as exc:
                reason = f"TLS handshake failed: {exc.reason or exc}"
                continue
            except OSError as exc:
                reason = f"TLS handshake failed: {exc}"
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not any(select.select(*wait, [], left)[:2]):
                self.stats["deadline_cuts"] += 1
                reason = "TLS handshake not complete within HL7_MESSAGE_DEADLINE_SECONDS"
        if reason:
            self.stats["tls_refused"] += 1
            try:  # the audit trail's Security Alert (PS3.15 A.5.3.11), queued: the close is not delayed
                auditing.tls_refused(address_of(peer), reason)
            except Exception:  # noqa: BLE001 - recorded or not, the connection is refused
                log.exception("TLS refusal not recorded on the audit trail")
            log.warning("TLS connection refused at the handshake: connection closed",
                        extra={"peer": peer, "reason": reason})
            tls.close()
            return None
        tls.setblocking(True)
        cert = peer_certificate(tls)
        log.info("TLS connection established", extra={
            "peer": peer, "tls_version": tls.version(), "cipher": (tls.cipher() or ("",))[0],
            "client_certificate": sorted(cert.names()) if cert else None})
        return tls

    def _cut(self, peer: str, decoder: MLLPDecoder) -> None:
        self.stats["deadline_cuts"] += 1
        log.warning("message not complete within HL7_MESSAGE_DEADLINE_SECONDS: discarded, connection closed",
                    extra={"peer": peer, "seconds": self.message_deadline,
                           "bytes": len(decoder.partial or b"")})

    def _answer(self, conn: socket.socket, peer: str, payloads: list[bytes]) -> bool:
        for payload in payloads:
            ack = self.handler(payload, peer)
            self.stats["messages"] += 1
            if ack is None or not self._send(conn, peer, ack):
                return False
        return True

    def _send(self, conn: socket.socket, peer: str, ack: bytes) -> bool:
        try:
            conn.settimeout(self.message_deadline)  # a peer that does not read its ACKs holds no slot longer
            conn.sendall(frame(ack))
            return True
        except OSError as exc:
            # Stored and committed, but the ACK did not reach the sender: it resends, and the
            # resend is answered from the stored ACK (duplicate key).
            log.warning("ACK could not be written", extra={"peer": peer, "error": str(exc)})
            return False

    def _log_junk(self, decoder: MLLPDecoder, peer: str) -> None:
        for sample in decoder.take_junk():
            self.stats["junk_bytes"] += len(sample)
            log.warning("bytes outside an MLLP frame skipped", extra={"peer": peer, "sample": sample[:64].hex()})


def listening_socket(host: str, port: int, *, reuse_port: bool = False, backlog: int = 128) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock
