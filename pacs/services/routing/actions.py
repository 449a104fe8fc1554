"""What the transfers page does: retry and cancel, recorded with the user who asked."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from pacs.models import Transfer, TransferItem
from pacs.models import transfers as tr
from pacs.services.routing.schedule import enqueue_on_commit
from ris.errors import DomainError
from ris.services.transitions import transition


class TransferActionError(DomainError):
    """An action the transfer's state refuses (message for the operator)."""


def retry(transfer_id: int, *, actor: str) -> Transfer:
    """Operator: try again now (failed, retrying or canceled): refused items are sent again."""
    with transaction.atomic():
        t = Transfer.objects.select_for_update().get(pk=transfer_id)
        if t.status not in (tr.FAILED, tr.RETRYING, tr.CANCELED, tr.SCHEDULED):
            raise TransferActionError(f"a {t.status} transfer cannot be retried")
        TransferItem.objects.filter(transfer=t, status=tr.ITEM_FAILED).update(status=tr.ITEM_PENDING, reason="")
        t.attempts = 0
        t.next_attempt_at = timezone.now()
        t.finished_at = None
        t.save(update_fields=["attempts", "next_attempt_at", "finished_at"])
        if t.status != tr.SCHEDULED:
            transition(t, tr.RETRYING, entity="transfer", cause="retry requested on the transfers page", actor=actor)
        enqueue_on_commit(t.pk)
    return t


def cancel(transfer_id: int, *, actor: str) -> Transfer:
    """Operator: give the transfer up (any state but committed or canceled)."""
    with transaction.atomic():
        t = Transfer.objects.select_for_update().get(pk=transfer_id)
        if t.status in (tr.COMMITTED, tr.CANCELED):
            raise TransferActionError(f"a {t.status} transfer cannot be canceled")
        t.finished_at = timezone.now()
        t.lease_expires_at = None
        t.save(update_fields=["finished_at", "lease_expires_at"])
        transition(t, tr.CANCELED, entity="transfer", cause="canceled on the transfers page", actor=actor)
    return t
