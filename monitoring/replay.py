"""Replay with a record: reprocess a failed inbound HL7 message, resend a failed ORU.

Each action needs a reason and is recorded (``monitoring.records.ReplayRecord``: who, when,
why, outcome) before it runs, so that an action interrupted half-way is still on record.
The original is never changed:

- inbound: the stored bytes go through the intake's own ``hl7gateway.intake.handle_payload``
  with ``replay_of`` = the original; it stores a NEW ``InboundMessage`` pointing at the
  original (the duplicate key ``uniq_inbound_msh_key`` excludes replays by design) and applies
  it like any message -- no second store-and-apply;
- outbound: ``hl7gateway.outbox.actions.retry`` (same bytes, same MSH-10; it writes its own
  ``OutboundAction`` with the user and the reason as well).

The permission (administrator) is checked by the views (``project.access.roles``).
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone

from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage
from hl7gateway.outbox import actions as outbox_actions
from monitoring.records import ReplayRecord
from ris.errors import DomainError

REPLAYABLE = (InboundMessage.STATUS_ERROR, InboundMessage.STATUS_REJECTED)
STARTED = "started"
# A record still "started" after this was interrupted (process killed): it no longer blocks.
RUNNING_FOR_AT_MOST = dt.timedelta(minutes=5)


class ReplayError(DomainError):
    """The replay was refused (no reason, wrong status, unknown message)."""


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ReplayError("a reason is required")
    return reason[:500]


def reprocess_inbound(message_id: int, user, reason: str) -> ReplayRecord:
    """Reprocess a stored inbound message answered AE/AR; returns the record (with the new row)."""
    reason = _reason(reason)
    original = InboundMessage.objects.filter(pk=message_id).first()
    if original is None:
        raise ReplayError(f"no inbound message {message_id}")
    if original.status not in REPLAYABLE:
        raise ReplayError(f"only a message answered with an error can be reprocessed; this one is "
                          f"{original.status.lower()}")
    with transaction.atomic():
        # Two operators pressing the button at once: the second is refused while the first runs.
        InboundMessage.objects.select_for_update().filter(pk=original.pk).values_list("pk", flat=True).first()
        running = ReplayRecord.objects.filter(inbound=original, outcome=STARTED,
                                              at__gte=timezone.now() - RUNNING_FOR_AT_MOST)
        if running.exists():
            raise ReplayError("this message is being reprocessed by someone else right now")
        record = ReplayRecord.objects.create(kind=ReplayRecord.INBOUND, inbound=original, user=user,
                                             username=user.get_username(), reason=reason, outcome=STARTED)
    earlier = list(InboundMessage.objects.filter(replay_of=original).values_list("pk", flat=True))
    handle_payload(bytes(original.raw), peer=f"replay:{user.get_username()}"[:64], replay_of=original.pk)
    new = InboundMessage.objects.filter(replay_of=original).exclude(pk__in=earlier).order_by("-pk").first()
    if new is None:
        record.outcome = "not stored: the database refused it (see the log); nothing changed"
    else:
        record.replay = new
        record.outcome = f"{new.status}, ACK {new.ack_code}" + (f": {new.error_text}" if new.error_text else "")
    record.outcome = record.outcome[:255]
    record.save(update_fields=["replay", "outcome"])
    return record


def resend_outbound(message_id: int, user, reason: str) -> ReplayRecord:
    """Resend a FAILED outbound ORU through the outbox's own retry; recorded here as well."""
    reason = _reason(reason)
    record = ReplayRecord.objects.create(kind=ReplayRecord.OUTBOUND, outbound_id=None, user=user,
                                         username=user.get_username(), reason=reason, outcome=STARTED)
    try:
        row = outbox_actions.retry(message_id, user, reason)
    except DomainError as exc:
        record.delete()  # refused before anything happened: nothing to record
        raise ReplayError(str(exc)) from None
    record.outbound = row
    record.outcome = f"now {row.status.lower()}"
    record.save(update_fields=["outbound", "outcome"])
    return record


def failed_inbound(limit: int = 100) -> list[InboundMessage]:
    """Inbound messages answered AE/AR, newest first, with the replays already made of each."""
    return list(InboundMessage.objects.filter(status__in=REPLAYABLE).defer("raw", "ack")
                .prefetch_related("replays").order_by("-received_at", "-pk")[:limit])


def failed_inbound_count() -> int:
    return InboundMessage.objects.filter(status__in=REPLAYABLE).count()
