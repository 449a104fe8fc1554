"""Declared DICOM peers: the ``DICOM_NODES`` form, AE titles, and whether a source address
matches a node's host.  Pure functions (no Django), read by the settings and by the
association policy (``pacs.dimse.policy``).

``DICOM_NODES``: comma-separated ``AE@HOST:GRANTS[;cert=NAME][;port=PORT]``.  HOST is an IP
address, a CIDR network (``10.1.4.0/24``) or a host name; GRANTS are ``+``-separated service names
(``GRANTS``); NAME, when given, is the certificate the node must present on the DICOM TLS port
(PS3.15 B.9): its subject CN or one of its DNS or IP subject alternative names; PORT, when given,
is where the node listens (a C-MOVE destination, PS3.4 C.4.2, is reached at HOST:PORT).
C-ECHO (Verification, PS3.4 Annex A) is granted to every node declared this way: it reveals
nothing, and a modality's "test connection" uses it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

# Service name in DICOM_NODES -> the DicomNode grant it sets.
GRANTS = {
    "echo": "allow_echo",
    "mwl": "allow_mwl_find",  # Modality Worklist C-FIND, PS3.4 K.6
    "mpps": "allow_mpps",  # Modality Performed Procedure Step, PS3.4 F.7
    "store": "allow_store",  # Storage, PS3.4 Annex B
    "commitment": "allow_storage_commitment",  # Storage Commitment Push Model N-EVENT-REPORT, PS3.4 J.3.3
    "qr": "allow_query_retrieve",  # Query/Retrieve C-FIND, C-MOVE, C-GET, PS3.4 Annex C
}

# RFC 1123 host name: labels of letters, digits and hyphens, separated by dots.
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    grants: frozenset[str]
    certificate_name: str = ""
    port: int | None = None

    def flags(self) -> dict[str, bool]:
        """The DicomNode grant fields of this declaration (echo always granted, see above)."""
        return {field: name == "echo" or name in self.grants for name, field in GRANTS.items()}


def is_valid_ae_title(value: str) -> bool:
    """PS3.5 6.2 (AE VR): 16 characters at most, default repertoire, no backslash or control."""
    stripped = value.strip(" ")
    return 0 < len(stripped) <= 16 and len(value) <= 16 and all(32 <= ord(c) < 127 and c != "\\" for c in value)


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An address or CIDR network (``10.1.4.0/24``, ``::1``) as a network; None if it is neither."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def host_problem(host: str) -> str | None:
    """Why ``host`` cannot name a peer's source (None: it can)."""
    if not host.strip():
        return "a host (address, CIDR network or host name) is required"
    if network(host) is None and not _HOST_NAME.match(host.strip()):
        return f"{host!r} is neither an IP address, a CIDR network nor a host name"
    return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address; an IPv4-mapped IPv6 address (a dual-stack listener) as the IPv4 one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: str, networks) -> bool:
    """Whether ``address`` lies in one of ``networks`` (address or CIDR strings; bad ones ignored)."""
    peer = _address(address)
    if peer is None:
        return False
    return any(n is not None and peer.version == n.version and peer in n for n in map(network, networks))


def address_matches(host: str, address: str) -> bool:
    """Whether a connection from ``address`` comes from ``host``: an address or CIDR network is
    compared directly; a host name is resolved (every address it has counts).  An empty host
    matches nothing."""
    host = host.strip()
    if not host:
        return False
    if network(host) is not None:
        return in_networks(address, [host])
    peer = _address(address)
    try:
        resolved = {_address(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return peer is not None and peer in resolved


def certificate_problem(name: str) -> str | None:
    """Why ``name`` cannot name a peer's certificate (None: it can; empty: no certificate)."""
    if len(name) > 255 or any(ord(c) < 32 or ord(c) == 127 or c in ",;" for c in name) or name != name.strip():
        return f"{name!r} is not a certificate name (a CN, DNS name or IP address, at most 255 characters)"
    return None


def _comparable(name: str) -> str:
    """A certificate name as compared: an IP address in its normal form, anything else
    case-folded (DNS names are case-insensitive, RFC 6125 6.4.1)."""
    address = _address(name.strip())
    return str(address) if address is not None else name.strip().casefold()


def certificate_matches(expected: str, presented) -> bool:
    """Whether one of the ``presented`` names (CN, DNS and IP SANs of a verified certificate)
    is ``expected``, exactly (no wildcards: a node is one certificate).  An empty expected name
    matches nothing."""
    if not expected.strip():
        return False
    return _comparable(expected) in {_comparable(n) for n in presented if n}


def is_everywhere(networks) -> bool:
    """Whether the networks include a whole address family (``0.0.0.0/0``, ``::/0``)."""
    return any(n is not None and n.prefixlen == 0 for n in map(network, networks))


def parse_nodes(text: str) -> tuple[list[Peer], list[tuple[str, str]]]:
    """``DICOM_NODES`` -> (peers, [(entry, problem)]).  An entry with a problem is left out."""
    peers: list[Peer] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in [e.strip() for e in (text or "").split(",") if e.strip()]:
        declaration, *options = entry.split(";")
        certificate, port, option_problem = _options(options)
        ae_title, at, rest = declaration.strip().partition("@")
        host, colon, grants_text = rest.rpartition(":")
        grants = frozenset(g.strip().lower() for g in grants_text.split("+") if g.strip())
        if not at or not colon or not grants:
            problems.append((entry, "is not AE@HOST:GRANTS[;cert=NAME][;port=PORT] (e.g. CT1@10.1.2.3:mwl+mpps+store)"))
        elif option_problem:
            problems.append((entry, option_problem))
        elif not is_valid_ae_title(ae_title):
            problems.append((entry, f"{ae_title!r} is not a valid AE title (1-16 characters, PS3.5 6.2)"))
        elif host_problem(host):
            problems.append((entry, host_problem(host)))
        elif grants - GRANTS.keys():
            problems.append((entry, f"unknown service(s) {', '.join(sorted(grants - GRANTS.keys()))}; "
                                    f"use {'+'.join(GRANTS)}"))
        elif ae_title.strip() in seen:
            problems.append((entry, f"AE title {ae_title.strip()} is declared twice"))
        else:
            seen.add(ae_title.strip())
            peers.append(Peer(ae_title.strip(), host.strip(), grants, certificate, port))
    return peers, problems


def _options(options: list[str]) -> tuple[str, int | None, str | None]:
    """The ``;cert=NAME`` and ``;port=PORT`` options of a DICOM_NODES entry: (name, port, problem)."""
    certificate, port = "", None
    for option in options:
        key, equals, value = option.strip().partition("=")
        key = key.strip().lower()
        if key == "port" and equals and port is None:
            if not value.strip().isdigit() or not 0 < int(value) < 65536:
                return "", None, f"{option.strip()!r}: the port is a number from 1 to 65535"
            port = int(value)
            continue
        if key != "cert" or not equals or not value.strip() or certificate:
            return "", None, f"{option.strip()!r} is not one cert=NAME or port=PORT option"
        certificate = value.strip()
        problem = certificate_problem(certificate)
        if problem:
            return "", None, problem
    return certificate, port, None
