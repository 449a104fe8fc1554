"""The operator's actions on a message (the interfaces page, the console's replay): retry a
failed message, cancel a pending or failed one; each recorded with who did it and why."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from hl7gateway.models.outbound import CANCELED, FAILED, PENDING, OutboundAction, OutboundMessage
from hl7gateway.outbox import publish
from hl7gateway.outbox.queue import blocking_message, next_in_line
from hl7gateway.outbox.rules import ENTITY, OutboxError
from project.delivery import leases
from ris.errors import InvalidTransition, UnknownKey
from ris.services.transitions import transition


def _locked(message_id: int) -> OutboundMessage:
    try:
        return OutboundMessage.objects.select_for_update(of=("self",)).get(pk=message_id)
    except OutboundMessage.DoesNotExist:
        raise UnknownKey(f"no outbound message {message_id}") from None


def retry(message_id: int, user, reason: str = "") -> OutboundMessage:
    """Send a FAILED message again (same bytes, same MSH-10), now; recorded with who did it."""
    now = timezone.now()
    with transaction.atomic():
        row = _locked(message_id)
        if row.status != FAILED:
            raise OutboxError(f"only a failed message can be retried; this one is {row.status.lower()}")
        OutboundAction.objects.create(message=row, action=OutboundAction.RETRY, user=user,
                                      username=user.get_username(), reason=reason[:500], from_status=row.status)
        transition(row, PENDING, entity=ENTITY, cause=f"operator retry: {reason}"[:255], actor=user.get_username())
        row.next_attempt_at = now
        row.attempt_floor = row.attempt_count  # a fresh allowance of attempts; the old attempt rows stay
        if blocking_message(row) is None:
            publish.schedule(row, now, now)
        else:
            row.dispatched_at = None
        row.save(update_fields=["next_attempt_at", "attempt_floor", "dispatched_at", "updated_at"])
    return row


def cancel(message_id: int, user, reason: str = "") -> OutboundMessage:
    """Give up a PENDING or FAILED message (it will not be sent); the patient's next message moves up."""
    now = timezone.now()
    with transaction.atomic():
        row = _locked(message_id)
        if row.status not in (PENDING, FAILED):
            raise OutboxError(f"a {row.status.lower()} message cannot be canceled")
        if leases.held(row.leased_until, now):
            raise OutboxError("the message is being sent right now; try again in a moment")
        OutboundAction.objects.create(message=row, action=OutboundAction.CANCEL, user=user,
                                      username=user.get_username(), reason=reason[:500], from_status=row.status)
        try:
            transition(row, CANCELED, entity=ENTITY, cause=f"operator cancel: {reason}"[:255],
                       actor=user.get_username())
        except InvalidTransition as exc:
            raise OutboxError(str(exc)) from None
        row.leased_until = None
        row.save(update_fields=["leased_until", "updated_at"])
        nxt = next_in_line(row)
        if nxt is not None:
            publish.schedule(nxt, max(nxt.next_attempt_at, now), now)
            nxt.save(update_fields=["dispatched_at"])
    return row
