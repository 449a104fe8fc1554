"""One step of the export of the audit trail: a batch of records, in seq order, to the repository.

``export_batch`` returns the seq up to which the export is done, so that a cursor is one number:
every record up to it was accepted by the repository (``audit_export.syslog``) or cannot be a
valid message at all (then it is logged by seq with the reason, and stays in the audit trail, where
the audit pages show it).  A record after a failed send is not done: the next step starts there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from .message import AuditMessageError, Engine, to_xml
from .syslog import MessageTooLarge, SyslogSender, format_message

log = logging.getLogger(__name__)

FIELDS = ("seq", "occurred_at", "event_id", "event_type", "action", "outcome", "actor", "actor_kind",
          "source_address", "destination", "objects", "detail")


def as_mapping(record) -> Mapping:
    """A record as a mapping of its fields (a mapping as it is, a model row by its attributes)."""
    if isinstance(record, Mapping):
        return record
    return {name: getattr(record, name, None) for name in FIELDS}


def export_batch(records: Iterable, sender: SyslogSender, engine: Engine | None = None) -> int | None:
    """Send ``records`` (in seq order) and return the seq of the last one done, None if none."""
    engine = engine or Engine.from_settings()
    limit = sender.max_message_size
    pending: list[tuple[int, bytes | None]] = []
    for record in map(as_mapping, records):
        try:
            payload = format_message(to_xml(record, engine), outcome=record.get("outcome") or 0,
                                     timestamp=record["occurred_at"], app_name=engine.source_id)
            if limit is not None and len(payload) > limit:
                raise MessageTooLarge(f"{len(payload)} octets, more than the {limit} one datagram carries")
        except (AuditMessageError, MessageTooLarge) as exc:
            # The reason names fields and sizes, never a value: no patient data in the log.
            log.error("audit record seq=%s cannot be exported: %s", record.get("seq"), exc)
            payload = None
        pending.append((record["seq"], payload))
    accepted = sender.send([payload for _, payload in pending if payload is not None])
    done = None
    sent = 0
    for seq, payload in pending:
        if payload is not None:
            if sent == accepted:
                break
            sent += 1
        done = seq
    return done
