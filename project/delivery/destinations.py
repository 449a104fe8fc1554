"""Destinations declared in the environment: their forms, and the rows kept in step with them.

Two settings declare where things go, as comma-separated lists (deployment as code; the admin
can add more rows):

* ``VNA_DESTINATIONS`` (``parse_vna``): ``dicom://AE@host:port`` (C-STORE and Storage
  Commitment, PS3.4 B and J), ``dicoms://AE@host:port`` (the same over TLS, PS3.15 B.9), or
  ``stow+http(s)://[user:password@]host[:port]/path`` (STOW-RS, PS3.18 10.5); each may end in
  ``?adt=mllp://host:port`` (or ``mllps://``): the VNA also takes HL7 ADT there, and patient
  changes (A08, A40) reach it as ADT messages instead of a re-send of its images;
* ``HL7_ORU_DESTINATIONS`` (``parse_mllp``): ``name=mllp://host:port[?options]``, or
  ``mllps://`` for MLLP over TLS; ``messages=oru,status,charges,orders`` chooses the kinds of message
  (results, order status to the placer, charges to billing, filler orders to the placer), ``links=viewer,wado``
  the reference pointers an ORU^R01 carries, ``validate=1`` a check of each message before it is sent,
  ``pdf=1`` the report as a PDF in the ORU^R01.

The parsers are plain functions on strings, importing nothing of Django (``project.settings``
checks ``VNA_DESTINATIONS`` with the same one the router uses), and raise ValueError with the
reason.  ``project.delivery.declared`` keeps the destination tables in step with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

#: ``VnaDestination.kind`` values.
DICOM = "dicom"
STOW = "stow"


def entries(value: str | None) -> list[str]:
    """The non-empty, stripped items of a comma-separated setting."""
    return [p.strip() for p in (value or "").split(",") if p.strip()]


# --- VNA_DESTINATIONS --------------------------------------------------------------------------
_DICOM = re.compile(r"^(?P<scheme>dicoms?)://(?P<ae>[^@/\\]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})/?$")
VNA_FORMS = "dicom(s)://AE@host:port nor stow+http(s)://..."


_ADT = re.compile(r"^(?P<scheme>mllps?)://(?P<host>[^:/?#@]+):(?P<port>\d{1,5})/?$")


def _adt_fields(raw: str, query: str) -> dict:
    """The ``adt=mllp(s)://host:port`` option of a VNA entry as row fields (empty when absent, so
    that removing the option from the environment turns ADT forwarding off again)."""
    fields = {"adt_host": "", "adt_port": None, "adt_tls": False}
    if not query:
        return fields
    options = parse_qs(query, keep_blank_values=True)
    unknown = [k for k in options if k != "adt"]
    m = _ADT.match(options.get("adt", [""])[-1])
    if unknown or not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"VNA_DESTINATIONS entry {raw!r}: the only option is adt=mllp://host:port "
                         f"(or mllps://host:port), the VNA's HL7 ADT receiver")
    return {"adt_host": m["host"], "adt_port": int(m["port"]), "adt_tls": m["scheme"] == "mllps"}


def parse_vna_entry(raw: str) -> dict:
    """One ``VNA_DESTINATIONS`` item as the fields of a ``VnaDestination`` row (``name`` included).

    The name is made of the address without its ``?adt=`` option: adding or changing the ADT
    receiver updates the same row."""
    address, _, query = raw.partition("?")
    adt = _adt_fields(raw, query)
    m = _DICOM.match(address)
    if m:
        return {"name": f"env:{address}"[:100], "kind": DICOM, "ae_title": m["ae"], "host": m["host"],
                "port": int(m["port"]), "url": "", "tls": m["scheme"] == "dicoms", **adt}
    if address.startswith(("stow+http://", "stow+https://")):
        parts = urlsplit(address[len("stow+"):])
        if parts.hostname:
            creds = {"username": parts.username or "", "password": parts.password or ""}
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            clean = parts._replace(netloc=netloc).geturl().rstrip("/")
            return {"name": f"env:stow+{clean}"[:100], "kind": STOW, "ae_title": "", "host": "", "port": None,
                    "url": clean, **creds, **adt}
    raise ValueError(f"VNA_DESTINATIONS entry {raw!r} is neither {VNA_FORMS}")


def parse_vna(text: str | None) -> list[dict]:
    """``VNA_DESTINATIONS`` (see the module docstring) as row fields, in the order given."""
    return [parse_vna_entry(raw) for raw in entries(text)]


# --- HL7_ORU_DESTINATIONS ----------------------------------------------------------------------
@dataclass(frozen=True)
class MllpDestination:
    name: str
    host: str
    port: int
    options: dict  # field name -> value, from the URL's query string
    tls: bool = False  # mllps://


#: URL query option -> ``OutboundDestination`` field.
MLLP_OPTIONS = {
    "version": "hl7_version",
    "application": "receiving_application",
    "facility": "receiving_facility",
    "text": "text_value_type",
    "timeout": "ack_timeout_seconds",
}
#: ``messages=`` values -> the ``OutboundDestination`` field that turns that kind of message on:
#: ORU^R01 results (HL7 v2.5.1 chapter 7) and order status to the placer (IHE RAD-3, ORC-1 SC).
#: and charges to billing (IHE RAD-35, DFT^P03), and the orders the department creates (ORC-1 SN).
MLLP_MESSAGES = {"oru": "sends_results", "status": "sends_order_status", "charges": "sends_charges",
                 "orders": "sends_filler_orders"}
#: ``links=`` values -> the field that adds that OBX of value type RP (HL7 v2.5.1 2A.65) to an ORU^R01.
MLLP_LINKS = {"viewer": "link_viewer", "wado": "link_wado_rs"}
#: On/off options (``1``/``0``, ``true``/``false``, ``yes``/``no``) -> ``OutboundDestination`` field:
#: validate each message before sending it (its HL7 version and message structure), and carry the
#: report as a PDF in an ORU^R01 (an OBX of value type ED, HL7 v2.5.1 2A.24).
MLLP_SWITCHES = {"validate": "validate_messages", "pdf": "report_pdf"}
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: What a declared destination gets when it does not say: results only, no links, no validation, no PDF (the
#: environment decides these for its destinations, so removing an option turns it off again;
#: ``hl7gateway.outbox.destinations`` applies them).
#: A comma that starts the next destination of ``HL7_ORU_DESTINATIONS`` (not one inside a list option).
_NEXT_DESTINATION = re.compile(r",(?=\s*[A-Za-z0-9_-]+\s*=\s*mllps?://)")
MLLP_DEFAULTS = {"sends_results": True, "sends_order_status": False, "sends_charges": False,
                 "sends_filler_orders": False,
                 "link_viewer": False, "link_wado_rs": False, "validate_messages": False, "report_pdf": False}


def _flags(item: str, key: str, value: str, known: dict[str, str], *, allow_empty: bool) -> dict[str, bool]:
    """``a,b`` of a list option as {field: True/False} for every field of ``known``."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or (not names and not allow_empty):
        raise ValueError(f"{item!r}: {key} must be a comma-separated list of {', '.join(known)}"
                         f"{' (or empty)' if allow_empty else ''}")
    return {f: n in names for n, f in known.items()}


def parse_mllp(value: str | None, *, versions: Iterable[str], text_value_types: Iterable[str]) -> list[MllpDestination]:
    """``name=mllp://host:port[?version=2.3.1&application=BILL&facility=HOSP&text=FT&timeout=30
    &messages=oru,status,charges,orders&links=viewer,wado&validate=1&pdf=1]``, comma-separated between
    destinations; ``mllps://`` for MLLP over TLS.  ``versions`` and ``text_value_types`` are the HL7 versions (MSH-12) and OBX-2
    value types the ORU renderer writes.  ``messages`` and ``links`` set every field of their
    list (``MLLP_MESSAGES``, ``MLLP_LINKS``); absent, the options leave them out, and whoever keeps
    the rows applies ``MLLP_DEFAULTS``.

    Destinations are separated by commas, and so are the values of ``messages`` and ``links``:
    a comma starts a new destination only where ``name=mllp://`` (or ``mllps://``) follows it."""
    versions, text_value_types = tuple(versions), tuple(text_value_types)
    specs: list[MllpDestination] = []
    items = (p.strip().strip(",").strip() for p in _NEXT_DESTINATION.split(value or ""))
    for item in filter(None, items):
        name, sep, url = item.partition("=")
        name = name.strip()
        if not sep or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{item!r}: expected name=mllp://host:port or name=mllps://host:port")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("mllp", "mllps") or not parts.hostname:
            raise ValueError(f"{item!r}: the address must be mllp://host:port or mllps://host:port (TLS)")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not port:
            raise ValueError(f"{item!r}: a port between 1 and 65535 is required")
        options: dict = {}
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            if key == "messages":
                options.update(_flags(item, key, values[-1], MLLP_MESSAGES, allow_empty=False))
                continue
            if key == "links":
                options.update(_flags(item, key, values[-1], MLLP_LINKS, allow_empty=True))
                continue
            if key in MLLP_SWITCHES:
                switch = values[-1].strip().lower()
                if switch not in _ON + _OFF:
                    raise ValueError(f"{item!r}: {key} must be 1 or 0")
                options[MLLP_SWITCHES[key]] = switch in _ON
                continue
            if key not in MLLP_OPTIONS:
                known = [*MLLP_OPTIONS, "messages", "links", *MLLP_SWITCHES]
                raise ValueError(f"{item!r}: unknown option {key!r} (known: {', '.join(known)})")
            val = values[-1]
            if not val:
                continue  # an empty option is as if absent (links= alone means: no links)
            if key == "version" and val not in versions:
                raise ValueError(f"{item!r}: version must be one of {', '.join(versions)}")
            if key == "text" and val not in text_value_types:
                raise ValueError(f"{item!r}: text must be {' or '.join(text_value_types)}")
            if key == "timeout":
                try:
                    val = float(val)
                except ValueError:
                    raise ValueError(f"{item!r}: timeout must be a number of seconds") from None
            options[MLLP_OPTIONS[key]] = val
        if any(s.name == name for s in specs):
            raise ValueError(f"destination {name!r} is declared twice")
        specs.append(MllpDestination(name, parts.hostname, port, options, tls=parts.scheme == "mllps"))
    return specs
