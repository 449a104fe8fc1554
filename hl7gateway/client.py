"""MLLP client: send one HL7 message and wait for its acknowledgement (original mode).

HL7 v2.x Implementation Guide Appendix C (MLLP release 1) for the framing -- done by
``hl7gateway.mllp`` --, HL7 v2.5.1 2.9.2 "Original acknowledgment rules" for the answer:
the receiver answers every message with one ACK whose MSA-1 is AA, AE or AR and whose
MSA-2 echoes our MSH-10.  Enhanced-mode commit codes (CA/CE/CR) are read as AA/AE/AR.

``MLLPConnection.send`` (and ``send_message`` for a single message) classifies every
outcome; the caller (``hl7gateway.outbox``) decides what to do with it.  Nothing here
retries: one call is one attempt.  Like any HL7 sender, one connection carries many
messages in turn (original mode: the next message only after the ACK of the previous).

``tls=True`` is MLLP over TLS (a destination ``mllps://host:port``): the context of
``project.tls.client_context`` (TLS 1.2 or 1.3, the BCP 195 profile of DICOM PS3.15 Annex B.9),
the destination's certificate verified against TLS_CA_CERTIFICATES and its host name checked
(RFC 6125), the engine's certificate offered when the destination asks for one.  A handshake
that fails -- certificate not trusted, expired, for another name -- is a CONNECT_ERROR whose
detail says why; the message is never sent in clear text instead.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from hl7gateway.mllp import FrameTooLarge, MLLPDecoder, frame
from project.tls import TLSConfigurationError, client_context

# Outcomes of one attempt.
ACCEPTED = "AA"
ERROR = "AE"
REJECTED = "AR"
TIMEOUT = "TIMEOUT"  # connected and sent, no ACK within the timeout
CONNECT_ERROR = "CONNECT_ERROR"  # refused, unreachable, DNS, connect timeout
CONNECTION_LOST = "CONNECTION_LOST"  # peer closed or reset before a complete ACK
BAD_ACK = "BAD_ACK"  # an answer that is not an ACK of this message

#: Outcomes after which the connection is still usable for the next message.
ANSWERED = (ACCEPTED, ERROR, REJECTED)
_ENHANCED = {"CA": ACCEPTED, "CE": ERROR, "CR": REJECTED}
MAX_ACK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SendResult:
    outcome: str
    ack: bytes = b""
    detail: str = ""  # MSA-3 / ERR text, or the socket error
    elapsed: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED


@dataclass(frozen=True)
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3 and ERR segments, for the operator


def parse_ack(payload: bytes) -> Ack | None:
    """Read MSA-1, MSA-2 and the error text of an ACK; None if there is no MSH/MSA.

    The field separator is MSH-1 of the ACK itself; segments may end in CR, LF or CR LF.
    """
    text = payload.decode("utf-8", errors="replace")
    if not text.startswith("MSH") or len(text) < 4:
        return None
    sep = text[3]
    comp = text[4] if len(text) > 4 else "^"
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    msa = next((s.split(sep) for s in segments if s.startswith("MSA" + sep)), None)
    if msa is None or len(msa) < 2:
        return None
    notes = []
    if len(msa) > 3 and msa[3]:
        notes.append(msa[3])
    for seg in segments:
        if seg.startswith("ERR" + sep):
            fields = seg.split(sep)
            # ERR-3 error code (v2.5) / ERR-1 (v2.3.1) and ERR-8 user message.
            pieces = [f for f in fields[1:] if f]
            notes.append(" ".join(p.replace(comp, " ").strip() for p in pieces))
    code = msa[1].strip().upper()
    return Ack(code=_ENHANCED.get(code, code), control_id=msa[2].strip() if len(msa) > 2 else "", text="; ".join(notes))


class MLLPConnection:
    """One MLLP connection that carries messages one after the other, each waiting for its ACK.

    Connects on first use.  After a timeout, a lost connection or an answer that is not the
    ACK of the message sent, the connection is closed (a late ACK would otherwise be read as
    the answer to the next message); the next ``send`` connects again.
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0, ack_timeout: float = 30.0,
                 tls: bool = False):
        self.host, self.port, self.tls = host, port, tls
        self.connect_timeout, self.ack_timeout = connect_timeout, ack_timeout
        self.sock: socket.socket | None = None
        self.decoder = MLLPDecoder(max_frame_bytes=MAX_ACK_BYTES)

    def __enter__(self) -> MLLPConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.decoder = MLLPDecoder(max_frame_bytes=MAX_ACK_BYTES)

    def _connect(self) -> socket.socket:
        """A connected socket (the TLS handshake done, within ``connect_timeout``); raises."""
        context = client_context() if self.tls else None
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def send(self, payload: bytes, *, message_control_id: str) -> SendResult:
        """Send one message and wait for its ACK; classify the outcome (never raises for I/O)."""
        started = time.monotonic()
        result = self._send(payload, message_control_id, started)
        if result.outcome not in (ACCEPTED, ERROR, REJECTED):
            self.close()
        return result

    def _send(self, payload: bytes, message_control_id: str, started: float) -> SendResult:
        def result(outcome: str, ack: bytes = b"", detail: str = "") -> SendResult:
            return SendResult(outcome, ack, detail, time.monotonic() - started)

        if self.sock is None:
            try:
                self.sock = self._connect()
            except TLSConfigurationError as exc:
                return result(CONNECT_ERROR, detail=f"MLLP over TLS to {self.host}:{self.port}: {exc}")
            except ssl.SSLCertVerificationError as exc:
                return result(CONNECT_ERROR, detail=f"TLS: the certificate of {self.host}:{self.port} is not "
                                                    f"accepted: {exc.verify_message or exc.reason}")
            except ssl.SSLError as exc:
                return result(CONNECT_ERROR, detail=f"TLS handshake with {self.host}:{self.port} failed: "
                                                    f"{exc.reason or exc}")
            except OSError as exc:
                return result(CONNECT_ERROR, detail=f"connect to {self.host}:{self.port}: {exc}")
        sock = self.sock
        ack_timeout = self.ack_timeout
        deadline = time.monotonic() + ack_timeout
        try:
            sock.settimeout(ack_timeout)
            sock.sendall(frame(payload))
        except OSError as exc:
            return result(CONNECTION_LOST, detail=f"send: {exc}")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result(TIMEOUT, detail=f"no ACK within {ack_timeout:g} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return result(TIMEOUT, detail=f"no ACK within {ack_timeout:g} s")
            except OSError as exc:
                return result(CONNECTION_LOST, detail=f"receive: {exc}")
            if not data:
                partial = self.decoder.partial
                return result(CONNECTION_LOST, ack=partial or b"", detail="connection closed before a complete ACK")
            try:
                frames = self.decoder.feed(data)
            except FrameTooLarge as exc:
                return result(BAD_ACK, ack=exc.head, detail=f"answer larger than {MAX_ACK_BYTES} bytes")
            for answer in frames:
                ack = parse_ack(answer)
                if ack is None:
                    return result(BAD_ACK, ack=answer, detail="answer has no MSH/MSA segment")
                if ack.control_id != message_control_id:
                    # An ACK of another message (a stale one on this connection): not ours.
                    return result(BAD_ACK, ack=answer,
                                  detail=f"MSA-2 {ack.control_id!r} does not match MSH-10 {message_control_id!r}")
                if ack.code not in (ACCEPTED, ERROR, REJECTED):
                    return result(BAD_ACK, ack=answer, detail=f"MSA-1 {ack.code!r} is not AA, AE or AR")
                return result(ack.code, ack=answer, detail=ack.text)


def send_message(
    host: str,
    port: int,
    payload: bytes,
    *,
    message_control_id: str,
    connect_timeout: float = 10.0,
    ack_timeout: float = 30.0,
    tls: bool = False,
) -> SendResult:
    """Open a connection, send one framed message, wait for its ACK, close."""
    with MLLPConnection(host, port, connect_timeout=connect_timeout, ack_timeout=ack_timeout, tls=tls) as conn:
        return conn.send(payload, message_control_id=message_control_id)
