"""The Storage Commitment result (N-EVENT-REPORT, PS3.4 J.3.3) of a transfer's request."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from pacs.models import Transfer, TransferItem, VnaDestination
from pacs.models import transfers as tr
from pacs.services.routing.schedule import enqueue_on_commit, next_attempt
from pacs.services.routing.transfers import finish_locked
from project.peers import address_matches
from ris.services.transitions import transition


class NotFromDestination(Exception):
    """A storage commitment report from another AE title or address than the destination asked."""


def record_commitment(transaction_uid: str, committed: list[str], failed: list[tuple[str, str]], *,
                      reporter: tuple[str, str] | None = None) -> str | None:
    """The N-EVENT-REPORT of a Storage Commitment request (PS3.4 J.3.3).  Idempotent.

    Committed instances are marked; instances the VNA failed to commit go back to PENDING
    and the transfer is retried (they are sent again).  Returns the transfer's status, or
    None when the transaction UID is unknown.  ``reporter`` (calling AE title, source
    address) of a report received over DICOM must be the destination the request went to
    (its AE title, from its host), else ``NotFromDestination`` and nothing is recorded: the
    Transaction UID alone would let any peer mark another archive's instances committed.
    """
    now = timezone.now()
    if reporter is not None:  # before the row lock: a host name is resolved (a transfer's destination never changes)
        destination = VnaDestination.objects.filter(transfers__transaction_uid=transaction_uid).first()
        if destination is not None and not _is_destination(destination, *reporter):
            raise NotFromDestination(f"destination {destination.pk}: report from {reporter[0]} at {reporter[1]}")
    with transaction.atomic():
        t = Transfer.objects.select_for_update().filter(transaction_uid=transaction_uid).first()
        if t is None:
            return None
        items = TransferItem.objects.filter(transfer=t)
        items.filter(instance__sop_instance_uid__in=committed).exclude(status=tr.ITEM_COMMITTED).update(
            status=tr.ITEM_COMMITTED, committed_at=now)
        failed_uids = [u for u, _ in failed]
        if failed_uids:
            items.filter(instance__sop_instance_uid__in=failed_uids, status=tr.ITEM_SENT).update(
                status=tr.ITEM_PENDING, reason="storage commitment failed")
        if t.status != tr.COMMITTING:
            return t.status
        if failed_uids:
            t.reason = f"{len(failed_uids)} instance(s) not committed: " + "; ".join(f"{u}: {r}" for u, r in failed[:5])
            t.save(update_fields=["reason"])
            retry = next_attempt(t.attempts, now)
            if retry is None:
                t.finished_at = now
                t.save(update_fields=["finished_at"])
                transition(t, tr.FAILED, entity="transfer", cause=t.reason[:255], actor="N-EVENT-REPORT")
                return tr.FAILED
            t.next_attempt_at = retry.at
            t.save(update_fields=["next_attempt_at"])
            transition(t, tr.RETRYING, entity="transfer", cause=t.reason[:255], actor="N-EVENT-REPORT")
            enqueue_on_commit(t.pk, countdown=retry.delay)
            return tr.RETRYING
        return finish_locked(t, cause="storage commitment: every instance committed")


def _is_destination(destination: VnaDestination, ae_title: str, address: str) -> bool:
    return destination.ae_title.strip() == ae_title.strip() and address_matches(destination.host, address)
