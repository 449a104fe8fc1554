"""HL7 message -> ``ris.commands`` (one module per message type).

``SUPPORTED`` is the list of message types and versions we accept; anything else is
rejected with AR (ERR-3 200 unsupported message type, 201 unsupported event, 203 unsupported
version).  docs/hl7-interface.md lists the same.
"""

from __future__ import annotations

from hl7gateway.mapping.adt import map_adt
from hl7gateway.mapping.omi import map_omi
from hl7gateway.mapping.orm import map_orm
from hl7gateway.parsing import HL7Error, ParsedMessage

_V23_TO_V251 = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
SUPPORTED: dict[str, tuple[frozenset[str], object]] = {
    "ORM^O01": (_V23_TO_V251, map_orm),
    "OMI^O23": (frozenset({"2.5", "2.5.1"}), map_omi),
    **{f"ADT^{e}": (_V23_TO_V251, map_adt) for e in ("A01", "A04", "A05", "A08", "A40")},
}
SUPPORTED_CODES = {t.split("^")[0] for t in SUPPORTED}


def map_message(msg: ParsedMessage) -> list:
    """The commands for one message; ``HL7Error`` (AR) when its type or version is unsupported."""
    mtype = msg.msh.message_type
    entry = SUPPORTED.get(mtype)
    if entry is None:
        if msg.msh.message_code in SUPPORTED_CODES:
            raise HL7Error(f"event {mtype} is not supported", code=201, location="MSH^1^9^2", ack_code="AR")
        raise HL7Error(f"message type {mtype} is not supported", code=200, location="MSH^1^9", ack_code="AR")
    versions, mapper = entry
    if msg.msh.version not in versions:
        raise HL7Error(f"version {msg.msh.version or '(empty)'} is not supported for {mtype}", code=203,
                       location="MSH^1^12", ack_code="AR")
    return mapper(msg)
