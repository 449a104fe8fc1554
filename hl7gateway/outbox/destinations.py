"""ORU destinations declared in ``HL7_ORU_DESTINATIONS`` (deployment as code; the admin can add
more): the forms are ``project.delivery.destinations.parse_mllp``'s, the options those the ORU
renderer supports (MSH-12 versions, OBX-2 value types)."""

from __future__ import annotations

import logging

from django.conf import settings

from hl7gateway import oru
from hl7gateway.models.outbound import OutboundDestination
from project.delivery.declared import sync_declared
from project.delivery.destinations import MLLP_DEFAULTS, MllpDestination, parse_mllp

log = logging.getLogger("hl7gateway.outbox")


def parse_destinations(value: str) -> list[MllpDestination]:
    """Parse ``HL7_ORU_DESTINATIONS``: ``name=mllp://host:port[?version=2.3.1&application=BILL
    &facility=HOSP&text=FT&timeout=30&messages=oru,status,charges,orders&links=viewer,wado&validate=1&pdf=1]``,
    comma-separated;
    ``mllps://`` for MLLP over TLS.
    Raises ValueError with the reason (the system check hl7gateway.E101)."""
    return parse_mllp(value, versions=oru.VERSIONS, text_value_types=oru.TEXT_VALUE_TYPES)


def sync_environment_destinations(value: str | None = None) -> list[OutboundDestination]:
    """Make the destination rows match ``HL7_ORU_DESTINATIONS``.

    Declared destinations are created or updated (host, port, TLS and the options given; the
    kinds of message, the ORU links, validation and the PDF always: results only, no links, no
    validation and no PDF unless ``messages=`` / ``links=`` / ``validate=`` / ``pdf=`` say otherwise; other fields keep their admin values); a destination no longer declared is disabled, not
    deleted (its messages stay visible).  Costs one query when nothing changed.
    """
    value = settings.HL7_ORU_DESTINATIONS if value is None else value
    try:
        specs = parse_destinations(value)
    except ValueError as exc:  # reported by the system check hl7gateway.E101
        log.error("HL7_ORU_DESTINATIONS ignored: %s", exc)
        return []
    declared = {s.name: {"host": s.host, "port": s.port, "tls": s.tls, **MLLP_DEFAULTS, **s.options} for s in specs}
    return sync_declared(
        OutboundDestination, declared, flag="declared_in_environment",
        retire={"declared_in_environment": False, "enabled": False},
        on_created=lambda d: log.info("ORU destination declared", extra={"destination": d.name}),
        on_retired=lambda d: log.warning("ORU destination no longer declared: disabled",
                                         extra={"destination": d.name}),
    )
