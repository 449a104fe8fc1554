"""The sender policy of the inbound interface: which application may send what, from where.

``check(msh, peer)`` decides, before a message is parsed or applied, from its MSH-3 (sending
application), MSH-4 (sending facility) and MSH-9 (message type) and the connection's source
address:

* the pair MSH-3/MSH-4 (first components, the HD namespace IDs) is declared, the address is in
  one of its declared addresses or networks, and the message's kind is granted there: go on;
* declared, but from another address: AR, ERR-3 103 "table value not found" at MSH-3 (MSH-3
  and MSH-4 are values of the user-defined HL7 tables 0361 Application and 0362 Facility,
  HL7 v2.5.1 section 2.14.9.3-4: here, the declared senders of that address);
* declared, but the kind of message is not granted: AR, ERR-3 200 (unsupported message type,
  at MSH-9) for orders, 201 (unsupported event, at MSH-9.2) for ADT events;
* not declared: admitted only from ``HL7_UNDECLARED_SENDERS_FROM`` (default the loopback
  addresses 127.0.0.1 and ::1 -- not all of 127.0.0.0/8, so that a test client bound to
  127.0.0.2 is "another host"), else AR 103 at MSH-3.

Kinds (RAD-1/RAD-12 patient updates and merges, RAD-2/RAD-4/RAD-13 orders): ``orders``
ORM^O01, OMI^O23; ``patients`` ADT^A01, A04, A05, A08; ``merges`` ADT^A40.  A type of no kind
(unsupported) goes on and is refused by the mapping as before.

Declared senders come from the admin and from ``HL7_SENDERS`` (synchronised into the same
table: one lookup path), read into this process and re-read every
``HL7_SENDERS_REFRESH_SECONDS`` (a change in the admin takes effect within that time), so
the check costs a dictionary lookup per message, not a query.

``HL7_SENDERS``: comma-separated ``APP^FACILITY@address[:kind+kind]``, the address an IP
address or a CIDR network (IPv6 in brackets: ``@[2001:db8::/64]``), kinds ``orders``,
``patients``, ``merges`` (none given: all three).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q

from hl7gateway.models import DeclaredSender
from hl7gateway.models.senders import GRANT_CHOICES, MERGES, ORDERS, PATIENTS
from hl7gateway.parsing import MSH, HL7Error

log = logging.getLogger("hl7gateway.senders")

KIND_OF_TYPE = {
    "ORM^O01": ORDERS, "OMI^O23": ORDERS,
    "ADT^A01": PATIENTS, "ADT^A04": PATIENTS, "ADT^A05": PATIENTS, "ADT^A08": PATIENTS,
    "ADT^A40": MERGES,
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class SenderSpec:
    sending_application: str
    sending_facility: str
    address: str
    grants: frozenset[str]


# --- addresses ---------------------------------------------------------------------------
def source_address(host: str) -> str:
    """The address a connection comes from, IPv4-mapped IPv6 (``::ffff:10.1.2.7``, what a
    dual-stack listener sees) written as IPv4, so that one host is one address."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    return str(getattr(ip, "ipv4_mapped", None) or ip)


def address_of(peer: str) -> str:
    """``host`` of a ``host:port`` peer (IPv6 hosts contain colons: the port is after the last)."""
    return source_address(peer.rsplit(":", 1)[0]) if ":" in peer else peer


def _ip(address: str):
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def networks(entries: list[str]) -> list[Network]:
    """Addresses and CIDR networks as networks; ValueError names a bad entry."""
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is neither an IP address nor a CIDR network") from None
    return out


def admits_everywhere(entries: list[str]) -> bool:
    """Whether these networks cover every address (a /0), i.e. no sender needs declaring."""
    try:
        return any(n.prefixlen == 0 for n in networks(entries))
    except ValueError:
        return False


# --- HL7_SENDERS ---------------------------------------------------------------------------
def parse_senders(value: str) -> list[SenderSpec]:
    """Parse ``HL7_SENDERS`` (see the module docstring).  Raises ValueError with the reason."""
    specs: list[SenderSpec] = []
    for item in (p.strip() for p in (value or "").split(",")):
        if not item:
            continue
        who, at, where = item.partition("@")
        application, _, facility = who.partition("^")
        if not at or not application.strip() or "^" in facility:
            raise ValueError(f"{item!r}: expected APP^FACILITY@address[:kind+kind]")
        if where.startswith("["):
            address, bracket, rest = where[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{item!r}: an IPv6 address goes in brackets, e.g. @[2001:db8::/64]:orders")
            kinds = rest[1:]
        else:
            address, _, kinds = where.partition(":")
        networks([address])
        grants = frozenset(k.strip() for k in kinds.split("+") if k.strip()) if kinds else frozenset(GRANT_CHOICES)
        unknown = grants - set(GRANT_CHOICES)
        if unknown or not grants:
            raise ValueError(f"{item!r}: kinds are {', '.join(GRANT_CHOICES)} joined by '+'")
        specs.append(SenderSpec(application.strip(), facility.strip(), address.strip(), grants))
    return specs


def sync_environment_senders(value: str | None = None) -> int:
    """Make the ``declared_in_environment`` rows match ``HL7_SENDERS`` (deployment as code):
    declared ones created or updated, the ones no longer declared disabled.  Returns the count."""
    value = settings.HL7_SENDERS if value is None else value
    try:
        specs = parse_senders(value)
    except ValueError as exc:  # reported by the system check hl7gateway.E102
        log.error("HL7_SENDERS ignored: %s", exc)
        return 0
    keys = {(s.sending_application, s.sending_facility, s.address) for s in specs}
    current = {(d.sending_application, d.sending_facility, d.address): d for d in DeclaredSender.objects.filter(
        Q(declared_in_environment=True) | Q(sending_application__in=[s.sending_application for s in specs]))}
    for spec in specs:
        wanted = {"enabled": True, "declared_in_environment": True,
                  **{f"may_send_{g}": g in spec.grants for g in GRANT_CHOICES}}
        row = current.get((spec.sending_application, spec.sending_facility, spec.address))
        if row is None:
            DeclaredSender.objects.create(sending_application=spec.sending_application,
                                          sending_facility=spec.sending_facility, address=spec.address, **wanted)
        elif any(getattr(row, k) != v for k, v in wanted.items()):
            DeclaredSender.objects.filter(pk=row.pk).update(**wanted)
    for key, row in current.items():
        if key not in keys and row.declared_in_environment:
            DeclaredSender.objects.filter(pk=row.pk).update(declared_in_environment=False, enabled=False)
            log.warning("HL7 sender no longer declared: disabled", extra={"sender": str(row)})
    return len(specs)


# --- the in-process copy ------------------------------------------------------------------------
#: Decisions remembered per (MSH-3, MSH-4, MSH-9, source host) until the next re-read; emptied
#: when full, so that a sender varying MSH-3 cannot grow it without bound.
DECISIONS_KEPT = 4096


class _Declared:
    """{(MSH-3, MSH-4): [(network, grants)]} of the enabled senders, re-read when older than
    ``HL7_SENDERS_REFRESH_SECONDS``, and the decisions taken with it (``decisions``: the same
    header from the same host gets the same answer until then).  A failed re-read keeps the copy
    it has (logged)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.loaded_at: float | None = None
        self.synced = False
        self.table: dict[tuple[str, str], list[tuple[Network, frozenset[str]]]] = {}
        self.decisions: dict[tuple, HL7Error | None] = {}
        self.undeclared_from: tuple[tuple[str, ...], list[Network]] = ((), [])

    def get(self) -> dict[tuple[str, str], list[tuple[Network, frozenset[str]]]]:
        now = time.monotonic()
        if self.loaded_at is not None and now - self.loaded_at < settings.HL7_SENDERS_REFRESH_SECONDS:
            return self.table
        with self.lock:
            if self.loaded_at is None or time.monotonic() - self.loaded_at >= settings.HL7_SENDERS_REFRESH_SECONDS:
                try:
                    self.table = self._load()
                    self.decisions = {}
                except DatabaseError:
                    if self.loaded_at is None:
                        raise
                    log.exception("declared HL7 senders could not be re-read: the previous copy stays in use")
                self.loaded_at = time.monotonic()
        return self.table

    def _load(self):
        if not self.synced:
            sync_environment_senders()
            self.synced = True
        table: dict[tuple[str, str], list[tuple[Network, frozenset[str]]]] = {}
        for row in DeclaredSender.objects.filter(enabled=True):
            table.setdefault((row.sending_application, row.sending_facility), []).append(
                (ipaddress.ip_network(row.address, strict=False), row.grants))
        return table

    def undeclared_networks(self) -> list[Network]:
        """``HL7_UNDECLARED_SENDERS_FROM`` as networks (read again, and the decisions forgotten,
        when the setting changes)."""
        entries = tuple(settings.HL7_UNDECLARED_SENDERS_FROM)
        if self.undeclared_from[0] != entries:
            try:
                self.undeclared_from = (entries, networks(list(entries)))
            except ValueError:  # reported by the system check hl7gateway.E102
                self.undeclared_from = (entries, [])
            self.decisions = {}
        return self.undeclared_from[1]

    def reset(self) -> None:
        """Forget the copy (the next message re-reads it, and re-applies HL7_SENDERS)."""
        with self.lock:
            self.loaded_at = None
            self.synced = False


DECLARED = _Declared()
reset = DECLARED.reset


# --- the decision -------------------------------------------------------------------------------
def _namespace(msh: MSH, value: str) -> str:
    return value.split(msh.component_separator, 1)[0].strip() if msh.has_valid_separators else value.strip()


def _refused(text: str, code: int, location: str) -> HL7Error:
    return HL7Error(text, code=code, location=location, ack_code="AR")


def check(msh: MSH | None, peer: str) -> HL7Error | None:
    """None when the message may go on; else the AR's reason (module docstring).  A dictionary
    lookup for a header and host seen since the last re-read."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    table = DECLARED.get()
    undeclared = DECLARED.undeclared_networks()
    decisions = DECLARED.decisions
    key = (msh.msh_3, msh.msh_4, msh.msh_9, host) if msh else (None, host)
    try:
        return decisions[key]
    except KeyError:
        pass
    decision = _decide(table, undeclared, msh, source_address(host))
    if len(decisions) >= DECISIONS_KEPT:
        decisions.clear()
    decisions[key] = decision
    return decision


def _decide(table, undeclared: list[Network], msh: MSH | None, address: str) -> HL7Error | None:
    ip = _ip(address)
    application = _namespace(msh, msh.msh_3) if msh else ""
    facility = _namespace(msh, msh.msh_4) if msh else ""
    sender = f"{application}/{facility}"  # "/" : a "^" would travel escaped in MSA-3 and ERR-8
    declared = table.get((application, facility))
    if not declared:
        if ip is not None and any(ip in net for net in undeclared):
            return None
        return _refused(f"MSH-3/MSH-4 {sender} is not a declared sender for address {address}", 103, "MSH^1^3")
    matching = [g for net, g in declared if ip is not None and ip in net]
    if not matching:
        return _refused(f"MSH-3/MSH-4 {sender} is not a declared sender for address {address}", 103, "MSH^1^3")
    grants = frozenset().union(*matching)
    kind = KIND_OF_TYPE.get(msh.message_type)
    if kind is not None and kind not in grants:
        allowed = ", ".join(sorted(grants)) or "nothing"
        code, location = (200, "MSH^1^9") if kind == ORDERS else (201, "MSH^1^9^2")
        return _refused(f"{kind} ({msh.message_type}) not granted to {sender}, which may send {allowed}", code,
                        location)
    return None
