"""Audit messages as syslog: RFC 5424 messages over TLS (RFC 5425), TCP or UDP (RFC 5426).

IHE ITI TF-2 ITI-20 (Record Audit Event) carries each DICOM audit message as the MSG of one
RFC 5424 syslog message:

- PRI: facility 10 (security/authorization, RFC 5424 6.2.1) and a severity from the event's
  outcome: 5 (notice) for success, as IHE asks of most messages; 4 (warning), 3 (error) and
  2 (critical) for a minor, serious and major failure (EventOutcomeIndicator 4, 8, 12);
- VERSION 1, TIMESTAMP the event's time in UTC, HOSTNAME this machine's fully qualified name,
  APP-NAME the audit source (AUDIT_SOURCE_ID), PROCID this process, MSGID ``IHE+RFC-3881``,
  no STRUCTURED-DATA;
- MSG the XML as UTF-8 after a byte order mark (RFC 5424 6.4, MSG-UTF8).

Framing: over TLS and TCP, RFC 5425 4.3 octet counting, ``MSG-LEN SP SYSLOG-MSG``; over UDP one
message per datagram (RFC 5426 3.1), and a message larger than a datagram can carry is refused
(``MessageTooLarge``), never cut.

When is a message exported?  Syslog has no application-level acknowledgement.  Over TLS and TCP,
``SyslogSender.send`` writes a batch and then waits until the repository's TCP stack has
acknowledged every byte written (Linux SIOCOUTQ reaches 0) and the connection is still open: only
then does the batch count as accepted.  A connection reset or closed by the repository, a timeout,
or a refused connection make the whole batch count as not sent (it is sent again later: the
repository may then hold a message twice).  What this cannot see: a repository that acknowledged
the bytes at the TCP level and then stopped before reading them (its kernel discards them); only an
application-level acknowledgement (which RFC 5425 syslog lacks) would close that gap.  Over UDP a datagram handed to the
network counts as sent; UDP cannot say more (RFC 5426 3.6).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import logging
import os
import select
import socket
import ssl
import struct
import termios
import time
from collections.abc import Sequence

from project.audit_repository import Destination, parse_url

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
SEVERITY_BY_OUTCOME = {0: 5, 4: 4, 8: 3, 12: 2}
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
# RFC 5426 3.2: the largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header) and IPv6.
UDP_MAX_IPV4 = 65507
UDP_MAX_IPV6 = 65527
_TCP_ESTABLISHED, _TCP_CLOSE_WAIT = 1, 8


class MessageTooLarge(ValueError):
    """A message is larger than one datagram of the transport can carry (RFC 5426 3.2)."""


def _printable(value: str, limit: int) -> str:
    """An RFC 5424 header field: PRINTUSASCII (33-126), at most ``limit`` characters, else NILVALUE."""
    text = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return text or "-"


def format_message(xml: bytes, *, outcome: int, timestamp: dt.datetime, app_name: str,
                   hostname: str | None = None, procid: int | None = None) -> bytes:
    """One RFC 5424 SYSLOG-MSG carrying one audit message (see the module's docstring)."""
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY_BY_OUTCOME.get(int(outcome), 5)
    stamp = timestamp.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = " ".join([
        f"<{pri}>1", stamp, _printable(hostname or socket.getfqdn(), 255), _printable(app_name, 48),
        _printable(str(os.getpid() if procid is None else procid), 128), MSGID, "-",
    ])
    return header.encode("ascii") + b" " + BOM + xml


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3 / RFC 6587 3.4.1 framing: MSG-LEN SP SYSLOG-MSG, MSG-LEN in octets."""
    return str(len(message)).encode("ascii") + b" " + message


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes written to this TCP socket that the peer has not yet acknowledged (Linux SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _tcp_state(sock: socket.socket) -> int:
    """tcpi_state of TCP_INFO (1 established, 8 close-wait, 7 closed after a reset)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


class SyslogSender:
    """Sends audit messages to one Audit Record Repository over one kept connection.

    ``send(messages)`` returns how many of the messages were accepted (see the module's docstring
    for what that means per transport) and sets ``last_error`` when not all were.  A connection that
    the repository closed while idle is noticed before writing and replaced; a failure during the
    batch closes the connection, and the next ``send`` connects again.
    """

    def __init__(self, destination: Destination | str, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 10.0):
        self.destination = parse_url(destination) if isinstance(destination, str) else destination
        if self.destination.transport == "tls" and ssl_context is None:
            raise ValueError("a syslog+tls destination needs an SSL context")
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.last_error = ""
        self._sock: socket.socket | None = None

    @classmethod
    def from_settings(cls) -> SyslogSender:
        """The sender to AUDIT_REPOSITORY_URL, TLS with the AUDIT_REPOSITORY_* files."""
        from django.conf import settings

        from project import tls

        destination = parse_url(settings.AUDIT_REPOSITORY_URL)
        context = None
        if destination.transport == "tls":
            context = tls.client_context(ca_certificates=settings.AUDIT_REPOSITORY_CA_CERTIFICATES,
                                         certificate=settings.AUDIT_REPOSITORY_CERTIFICATE,
                                         private_key=settings.AUDIT_REPOSITORY_PRIVATE_KEY)
        return cls(destination, ssl_context=context, timeout=settings.AUDIT_REPOSITORY_TIMEOUT_SECONDS)

    @property
    def max_message_size(self) -> int | None:
        """The largest SYSLOG-MSG one send can carry (UDP), None when the stream has no limit."""
        if self.destination.transport != "udp":
            return None
        return UDP_MAX_IPV6 if ":" in self.destination.host else UDP_MAX_IPV4

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None

    def __enter__(self) -> SyslogSender:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, messages: Sequence[bytes]) -> int:
        if not messages:
            return 0
        if self.destination.transport == "udp":
            return self._send_datagrams(messages)
        return self._send_stream(messages)

    # -- TLS and TCP -------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        d = self.destination
        sock = socket.create_connection((d.host, d.port), timeout=self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=d.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _still_open(self, sock: socket.socket) -> bool:
        """False when the repository closed or reset the idle connection.  A repository sends
        nothing on a syslog connection; readable means an end of stream, a reset, or (TLS 1.3)
        a session ticket, which a non-blocking read consumes without application data."""
        if not select.select([sock], [], [], 0)[0]:
            return True
        sock.settimeout(0)
        try:
            return sock.recv(1) != b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False
        finally:
            sock.settimeout(self.timeout)

    def _wait_acknowledged(self, sock: socket.socket) -> None:
        """Until the repository's TCP stack acknowledged every byte written; raises on a reset,
        a close before that, or the timeout."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            state = _tcp_state(sock)
            if state not in (_TCP_ESTABLISHED, _TCP_CLOSE_WAIT):
                raise ConnectionResetError(errno.ECONNRESET, "the repository closed the connection")
            if _unacknowledged(sock) == 0:
                if state == _TCP_CLOSE_WAIT:
                    raise ConnectionResetError(errno.ECONNRESET, "the repository closed the connection")
                return
            if time.monotonic() >= deadline:
                raise TimeoutError("the repository did not acknowledge the messages in time")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _send_stream(self, messages: Sequence[bytes]) -> int:
        reused = self._sock is not None
        if reused and not self._still_open(self._sock):
            self.close()
            reused = False
        try:
            if self._sock is None:
                self._sock = self._connect()
            for message in messages:
                self._sock.sendall(octet_counted(message))
            self._wait_acknowledged(self._sock)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            if reused:
                # A kept connection the repository dropped after the idle check: once more, anew.
                return self._send_stream(messages)
            self.last_error = f"{self.destination}: {exc}"
            log.warning("audit repository %s: %d message(s) not sent: %s", self.destination, len(messages), exc)
            return 0
        self.last_error = ""
        return len(messages)

    # -- UDP -----------------------------------------------------------------------------------

    def _send_datagrams(self, messages: Sequence[bytes]) -> int:
        limit = self.max_message_size
        if any(len(m) > limit for m in messages):
            raise MessageTooLarge(f"a syslog message over UDP holds at most {limit} octets (RFC 5426 3.2)")
        sent = 0
        try:
            if self._sock is None:
                d = self.destination
                family, kind, proto, _, address = socket.getaddrinfo(d.host, d.port, type=socket.SOCK_DGRAM)[0]
                sock = socket.socket(family, kind, proto)
                sock.settimeout(self.timeout)
                sock.connect(address)
                self._sock = sock
            for message in messages:
                self._sock.send(message)
                sent += 1
        except OSError as exc:
            # A refused port (ICMP unreachable) reported by the socket: this and later ones are not sent.
            self.close()
            self.last_error = f"{self.destination}: {exc}"
            log.warning("audit repository %s: %d message(s) not sent: %s", self.destination,
                        len(messages) - sent, exc)
            return sent
        self.last_error = ""
        return sent
