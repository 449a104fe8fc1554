"""One attempt of a transfer to a VNA: what the Celery task ``pacs.send_transfer`` runs.

``run_transfer`` leases the row (``claim``), sends the items not sent yet over one association
(``pacs.scu``, C-STORE, PS3.4 B) or in STOW-RS requests (``pacs.stow``, PS3.18 10.5), recording
progress as it goes (``record_outcomes``, which renews the lease), then asks for Storage
Commitment (PS3.4 J.3.2) or, without it, counts the sent instances as committed.  Failures are
classified by the sender: transient ones (refused, timeout, 0xA7xx) are retried with backoff up
to ``TRANSFER_MAX_ATTEMPTS``; permanent ones (association rejected permanently, 0xA9xx, 0xCxxx,
a SOP class the VNA does not accept) fail at once with the reason.  Local files are never
deleted here (``archive.purge_archived``).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from pacs import auditing, storage
from pacs.models import Transfer, TransferItem, VnaDestination
from pacs.models import transfers as tr
from pacs.services.routing import archive
from pacs.services.routing.schedule import enqueue_on_commit, next_attempt
from pacs.services.routing.sending import ItemOutcome, ItemToSend, PermanentError, TransientError
from project.delivery import leases
from ris.services.transitions import transition

log = logging.getLogger("pacs.routing")


def claim(transfer_id: int, *, now: dt.datetime | None = None) -> Transfer | None:
    """Take the row for this worker, or None if it is not due, held by a live lease, or final."""
    now = now or timezone.now()
    with transaction.atomic():
        t = Transfer.objects.select_for_update().filter(pk=transfer_id).select_related("destination").first()
        if t is None or t.status in tr.FINAL:
            return None
        if t.status in (tr.SCHEDULED, tr.RETRYING):
            if t.next_attempt_at > now + dt.timedelta(seconds=1):
                return None
        elif t.status == tr.IN_PROGRESS:
            if leases.held(t.lease_expires_at, now):
                return None
        elif t.status == tr.COMMITTING:
            timeout = dt.timedelta(seconds=settings.STORAGE_COMMITMENT_TIMEOUT_SECONDS)
            if not t.commitment_requested_at or t.commitment_requested_at + timeout > now:
                return None
        if not t.destination.enabled:
            transition(t, tr.FAILED, entity="transfer", cause="destination disabled", actor="routing")
            t.reason = "destination disabled"
            t.finished_at = now
            t.save(update_fields=["reason", "finished_at"])
            return None
        transition(t, tr.IN_PROGRESS, entity="transfer", cause=f"attempt {t.attempts + 1}", actor="worker")
        t.attempts += 1
        t.lease_expires_at = leases.until(now, settings.TRANSFER_LEASE_SECONDS)
        t.save(update_fields=["attempts", "lease_expires_at"])
        return t


def items_to_send(transfer: Transfer) -> list[ItemToSend]:
    rows = (
        TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_PENDING)
        .select_related("instance")
        .order_by("instance__series_id", "instance__instance_number", "instance_id")
    )
    return [
        ItemToSend(r.pk, r.instance.sop_class_uid, r.instance.sop_instance_uid, r.instance.transfer_syntax_uid,
                   str(storage.absolute_path(r.instance.path)))
        for r in rows
    ]


def record_outcomes(transfer_id: int, outcomes: list[ItemOutcome]) -> None:
    """Called by the sender every few instances: items sent or refused, lease extended.

    On PostgreSQL this transaction commits without waiting for its WAL flush
    (``synchronous_commit = off``, this transaction only), so the sender does not wait for the
    disk between instances.  A database crash can lose only this progress: the items stay
    PENDING and are sent again by the next attempt (the VNA keeps one copy per SOP Instance UID).
    Every later transaction of the transfer (the storage commitment request, the report) waits
    for its flush, which makes these durable too; COMMITTED still comes only from the report."""
    now = timezone.now()
    sent = [o.item_id for o in outcomes if o.ok]
    outermost = not connection.in_atomic_block  # SET LOCAL would reach an enclosing transaction
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        if sent:
            TransferItem.objects.filter(pk__in=sent, status=tr.ITEM_PENDING).update(status=tr.ITEM_SENT, sent_at=now)
        for o in outcomes:
            if not o.ok and not o.transient:
                TransferItem.objects.filter(pk=o.item_id).update(status=tr.ITEM_FAILED, reason=o.reason[:255])
        leases.renew(Transfer.objects.filter(pk=transfer_id, status=tr.IN_PROGRESS), "lease_expires_at", now,
                     settings.TRANSFER_LEASE_SECONDS)


def _sender(destination: VnaDestination):
    # Imported on first use: pydicom and pynetdicom take about 0.4 s to import, which the web and
    # listener processes need not pay (the worker imports them before forking: pacs.tasks).
    if destination.kind == tr.KIND_STOW:
        from pacs import stow

        return stow
    from pacs import scu

    return scu


def run_transfer(transfer_id: int) -> str:
    """The whole of one attempt (the Celery task's body).  Returns the status it left."""
    transfer = claim(transfer_id)
    if transfer is None:
        return "skipped"
    destination = transfer.destination
    corrections = {k: v[1] for k, v in (transfer.study.corrections or {}).items()}
    sender = _sender(destination)
    try:
        items = items_to_send(transfer)
        transient_left, first_transient = False, ""
        if items:
            outcomes = sender.send_items(destination, items, corrections=corrections,
                                         progress=lambda chunk: record_outcomes(transfer_id, chunk))
            transient_left = any(not o.ok and o.transient for o in outcomes)
            first_transient = next((o.reason for o in outcomes if not o.ok and o.transient), "")
        if transient_left:
            raise TransientError(first_transient or "some instances were not accepted for now")
        committed_directly = destination.kind == tr.KIND_STOW or not destination.storage_commitment
        if committed_directly:
            now = timezone.now()
            TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_SENT).update(
                status=tr.ITEM_COMMITTED, committed_at=now)
            return _finish(transfer_id, cause="sent (no storage commitment requested)")
        return _request_commitment(transfer_id, sender)
    except TransientError as exc:
        return _retry_later(transfer_id, str(exc))
    except PermanentError as exc:
        return _fail(transfer_id, str(exc))
    except Exception as exc:  # noqa: BLE001 - unknown: treat as transient, bounded by max attempts
        log.exception("transfer attempt failed", extra={"transfer_id": transfer_id})
        return _retry_later(transfer_id, f"{type(exc).__name__}: {exc}")


def _request_commitment(transfer_id: int, sender) -> str:
    from pydicom.uid import generate_uid

    with transaction.atomic():
        t = Transfer.objects.select_for_update().select_related("destination").get(pk=transfer_id)
        if t.status != tr.IN_PROGRESS:
            return t.status  # canceled meanwhile
        refs = list(
            TransferItem.objects.filter(transfer=t, status=tr.ITEM_SENT).values_list(
                "instance__sop_class_uid", "instance__sop_instance_uid")
        )
        if not refs:
            return finish_locked(t, cause="nothing left to commit")
        # Written before the N-ACTION: the N-EVENT-REPORT may arrive before its response.
        t.transaction_uid = generate_uid()
        t.commitment_requested_at = timezone.now()
        t.save(update_fields=["transaction_uid", "commitment_requested_at"])
        transition(t, tr.COMMITTING, entity="transfer", cause=f"{len(refs)} instances sent; N-ACTION", actor="worker")
        destination, transaction_uid = t.destination, t.transaction_uid
    sender.request_commitment(destination, transaction_uid, refs)
    return tr.COMMITTING


def _finish(transfer_id: int, *, cause: str) -> str:
    with transaction.atomic():
        t = Transfer.objects.select_for_update().get(pk=transfer_id)
        return finish_locked(t, cause=cause)


def finish_locked(t: Transfer, *, cause: str) -> str:
    """All items resolved: COMMITTED, or FAILED naming the refused instances."""
    if t.status not in (tr.IN_PROGRESS, tr.COMMITTING):
        return t.status
    if TransferItem.objects.filter(transfer=t, status__in=[tr.ITEM_PENDING, tr.ITEM_SENT]).exists():
        return t.status
    failed = list(TransferItem.objects.filter(transfer=t, status=tr.ITEM_FAILED).values_list(
        "instance__sop_instance_uid", "reason")[:5])
    t.finished_at = timezone.now()
    t.lease_expires_at = None
    if failed:
        count = TransferItem.objects.filter(transfer=t, status=tr.ITEM_FAILED).count()
        t.reason = f"{count} instance(s) refused by the VNA: " + "; ".join(f"{u}: {r}" for u, r in failed)
        t.save(update_fields=["finished_at", "lease_expires_at", "reason"])
        transition(t, tr.FAILED, entity="transfer", cause=t.reason[:255], actor="routing")
        return tr.FAILED
    t.reason = ""
    t.save(update_fields=["finished_at", "lease_expires_at", "reason"])
    transition(t, tr.COMMITTED, entity="transfer", cause=cause, actor="routing")
    if settings.AUDIT_ENABLED:  # the study left the engine: on the audit trail with the commit (pacs.auditing)
        auditing.study_exported(t, instances=TransferItem.objects.filter(transfer=t, status=tr.ITEM_COMMITTED).count())
    archive.maybe_archive(t.study_id)
    return tr.COMMITTED


def _locked_for_outcome(transfer_id: int, reason: str) -> tuple[Transfer, bool]:
    """The transfer, locked, and whether it is still in progress; if so, with the attempt's reason
    and its lease released.  One cancelled or finished meanwhile keeps its outcome."""
    t = Transfer.objects.select_for_update().get(pk=transfer_id)
    if t.status not in (tr.IN_PROGRESS, tr.COMMITTING):
        return t, False
    t.reason = reason[:2000]
    t.lease_expires_at = None
    return t, True


def _failed(t: Transfer, cause: str) -> str:
    t.finished_at = timezone.now()
    t.save(update_fields=["reason", "lease_expires_at", "finished_at"])
    transition(t, tr.FAILED, entity="transfer", cause=cause[:255], actor="routing")
    return tr.FAILED


def _retry_later(transfer_id: int, reason: str) -> str:
    with transaction.atomic():
        t, in_progress = _locked_for_outcome(transfer_id, reason)
        if not in_progress:
            return t.status
        retry = next_attempt(t.attempts)
        if retry is None:
            return _failed(t, f"gave up after {t.attempts} attempts: {reason}")
        t.next_attempt_at = retry.at
        t.save(update_fields=["reason", "lease_expires_at", "next_attempt_at"])
        transition(t, tr.RETRYING, entity="transfer", cause=f"transient: {reason}"[:255], actor="routing")
        enqueue_on_commit(t.pk, countdown=retry.delay)
    log.warning("transfer will be retried", extra={"transfer_id": transfer_id, "delay": round(retry.delay, 1)})
    return tr.RETRYING


def _fail(transfer_id: int, reason: str) -> str:
    with transaction.atomic():
        t, in_progress = _locked_for_outcome(transfer_id, reason)
        if not in_progress:
            return t.status
        _failed(t, f"permanent: {reason}")
    log.error("transfer failed", extra={"transfer_id": transfer_id})
    return tr.FAILED


