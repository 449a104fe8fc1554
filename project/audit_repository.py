"""Where audit messages go: the AUDIT_REPOSITORY_URL setting, parsed.

Read by project.settings (so it imports nothing of Django). The three forms are the syslog transports
IHE ITI TF-2 ITI-20 (Record Audit Event) names for an Audit Record Repository:

- ``syslog+tls://host:6514``: RFC 5425, syslog over TLS (6514 is IANA's syslog-tls port);
- ``syslog+tcp://host:601``: the same octet-counting framing over plain TCP (IANA's syslog-conn);
- ``syslog+udp://host:514``: RFC 5426, one message per datagram.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"tls": 6514, "tcp": 601, "udp": 514}


@dataclass(frozen=True)
class Destination:
    transport: str  # tls, tcp or udp
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"syslog+{self.transport}://{host}:{self.port}"


def parse_url(url: str) -> Destination:
    """``syslog+{tls,tcp,udp}://host[:port]`` as a Destination; ValueError says what is wrong."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"cannot be parsed: {exc}") from exc
    scheme = parts.scheme.lower()
    if not scheme.startswith("syslog+") or scheme[7:] not in DEFAULT_PORTS:
        raise ValueError("must start with syslog+tls://, syslog+tcp:// or syslog+udp://")
    if not parts.hostname:
        raise ValueError("names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("must be syslog+transport://host:port and nothing more")
    transport = scheme[7:]
    return Destination(transport, parts.hostname, port or DEFAULT_PORTS[transport])
