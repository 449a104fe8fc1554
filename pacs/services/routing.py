"""Routing complete studies to the VNA (radiology-workflow.md section 6; conventions: outbox rows).

- ``schedule_batch``: one ``Transfer`` per enabled destination for a study's batch, with one
  ``TransferItem`` per instance, in the completing transaction; the task is queued on commit.
- ``run_transfer``: what the Celery task ``pacs.send_transfer`` does with a row ID.  It claims
  the row (a lease), sends the items not sent yet over one association (``pacs.scu``) or
  STOW-RS (``pacs.stow``), asks for storage commitment, and classifies failures: transient
  ones (refused, timeout, 0xA7xx) are retried with exponential backoff and jitter up to
  ``TRANSFER_MAX_ATTEMPTS``; permanent ones (association rejected permanently, 0xA9xx,
  0xCxxx, a SOP class the VNA does not accept) fail at once with the reason.
- ``record_commitment``: the N-EVENT-REPORT (``pacs.dimse.commitment``); the study is
  archived when every transfer of every batch is committed.
- ``sweep``: re-queues rows no worker holds (due, or lease expired), times out commitments.
- ``retry`` / ``cancel``: from the transfers page, recorded with the user.

Local files are never deleted here; ``purge_archived`` removes them only for archived
studies older than ``ARCHIVE_RETENTION_DAYS`` (0: never).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from pacs import auditing, storage
from pacs.models import Instance, Study, Transfer, TransferItem, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services import resends
from project.peers import address_matches
from ris.errors import DomainError
from ris.services.transitions import transition

log = logging.getLogger("pacs.routing")


class TransientError(Exception):
    """Worth retrying: refused, timeout, aborted, 0xA7xx."""


class PermanentError(Exception):
    """Not worth retrying: association rejected permanently, 0xA9xx, 0xCxxx."""


class NotFromDestination(Exception):
    """A storage commitment report from another AE title or address than the destination asked."""


@dataclass(frozen=True)
class ItemToSend:
    item_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str  # absolute


@dataclass(frozen=True)
class ItemOutcome:
    item_id: int
    ok: bool
    transient: bool = False
    reason: str = ""


# --- destinations --------------------------------------------------------------------------

_DEST = re.compile(r"^(?P<scheme>dicoms?)://(?P<ae>[^@/\\]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})/?$")


def parse_destinations(text: str) -> list[dict]:
    """``VNA_DESTINATIONS``: comma-separated ``dicom://AE@host:port``, ``dicoms://AE@host:port``
    (DICOM over TLS, PS3.15 B.9) or ``stow+http(s)://host:port/path``."""
    out = []
    for raw in [p.strip() for p in (text or "").split(",") if p.strip()]:
        m = _DEST.match(raw)
        if m:
            out.append({"name": f"env:{raw}"[:100], "kind": tr.KIND_DICOM, "ae_title": m["ae"], "host": m["host"],
                        "port": int(m["port"]), "url": "", "tls": m["scheme"] == "dicoms"})
            continue
        if raw.startswith(("stow+http://", "stow+https://")):
            url = raw[len("stow+"):]
            parts = urlsplit(url)
            if parts.hostname:
                creds = {"username": parts.username or "", "password": parts.password or ""}
                netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
                clean = parts._replace(netloc=netloc).geturl().rstrip("/")
                out.append({"name": f"env:stow+{clean}"[:100], "kind": tr.KIND_STOW, "ae_title": "", "host": "",
                            "port": None, "url": clean, **creds})
                continue
        raise ValueError(f"VNA_DESTINATIONS entry {raw!r} is neither dicom(s)://AE@host:port nor stow+http(s)://...")
    return out


def sync_environment_destinations() -> list[VnaDestination]:
    """Create/update the destinations declared in ``VNA_DESTINATIONS``; disable ones removed."""
    try:
        declared = parse_destinations(settings.VNA_DESTINATIONS)
    except ValueError:
        log.error("VNA_DESTINATIONS cannot be parsed", exc_info=True)
        return []
    rows = []
    with transaction.atomic():
        for d in declared:
            row, _ = VnaDestination.objects.update_or_create(
                name=d["name"], defaults={**{k: v for k, v in d.items() if k != "name"}, "enabled": True,
                                          "from_environment": True},
            )
            rows.append(row)
        VnaDestination.objects.filter(from_environment=True).exclude(pk__in=[r.pk for r in rows]).update(enabled=False)
    return rows


_synced = False


def destinations() -> list[VnaDestination]:
    global _synced
    if not _synced:
        sync_environment_destinations()
        _synced = True
    return list(VnaDestination.objects.filter(enabled=True))


# --- scheduling ----------------------------------------------------------------------------

def schedule_batch(study: Study, batch: int, instance_ids: list[int]) -> list[Transfer]:
    """Inside the completing transaction: one transfer (+ items) per enabled destination."""
    now = timezone.now()
    created = []
    for destination in destinations():
        transfer, was_created = Transfer.objects.get_or_create(
            study=study, destination=destination, batch=batch, defaults={"next_attempt_at": now}
        )
        if not was_created:
            continue
        TransferItem.objects.bulk_create([TransferItem(transfer=transfer, instance_id=i) for i in instance_ids])
        created.append(transfer)
    for transfer in created:
        enqueue_on_commit(transfer.pk)
    return created


def enqueue_on_commit(transfer_id: int, countdown: float | None = None) -> None:
    def publish():
        from pacs.tasks import send_transfer

        try:
            send_transfer.apply_async((transfer_id,), countdown=countdown)
        except Exception:  # noqa: BLE001 - broker down: the row is due, the sweep publishes it later
            log.warning("could not queue transfer; the sweep will", extra={"transfer_id": transfer_id})

    transaction.on_commit(publish)


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff with jitter, capped (reliability C-06; cap below the visibility timeout)."""
    ceiling = min(settings.TRANSFER_RETRY_MAX_SECONDS, settings.TRANSFER_RETRY_BASE_SECONDS * 2 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)


# --- running -------------------------------------------------------------------------------

def claim(transfer_id: int, *, now: dt.datetime | None = None) -> Transfer | None:
    """Take the row for this worker, or None if it is not due, held by a live lease, or final."""
    now = now or timezone.now()
    lease = now + dt.timedelta(seconds=settings.TRANSFER_LEASE_SECONDS)
    with transaction.atomic():
        t = Transfer.objects.select_for_update().filter(pk=transfer_id).select_related("destination").first()
        if t is None or t.status in tr.FINAL:
            return None
        if t.status in (tr.SCHEDULED, tr.RETRYING):
            if t.next_attempt_at > now + dt.timedelta(seconds=1):
                return None
        elif t.status == tr.IN_PROGRESS:
            if t.lease_expires_at and t.lease_expires_at > now:
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
        t.lease_expires_at = lease
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
        Transfer.objects.filter(pk=transfer_id, status=tr.IN_PROGRESS).update(
            lease_expires_at=now + dt.timedelta(seconds=settings.TRANSFER_LEASE_SECONDS)
        )


def _sender(destination: VnaDestination):
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
            return _finish_locked(t, cause="nothing left to commit")
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
        return _finish_locked(t, cause=cause)


def _finish_locked(t: Transfer, *, cause: str) -> str:
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
    _maybe_archive(t.study_id)
    return tr.COMMITTED


def _maybe_archive(study_id: int) -> None:
    study = Study.objects.select_for_update().get(pk=study_id)
    if study.status != im.COMPLETE:
        return
    if Instance.objects.filter(study=study, batch__isnull=True).exists():
        return
    transfers = Transfer.objects.filter(study=study)
    if not transfers.exists() or transfers.exclude(status=tr.COMMITTED).exists():
        return
    # Every batch sent to every destination must be covered.
    for batch in range(1, study.batch + 1):
        if Instance.objects.filter(study=study, batch=batch).exists() and not transfers.filter(batch=batch).exists():
            return
    study.archived_at = timezone.now()
    study.save(update_fields=["archived_at", "updated_at"])
    transition(study, im.ARCHIVED, entity="study", cause="every instance committed by every VNA", actor="routing")
    resends.release_replaced_on_commit(study.pk)  # versions replaced by a resend: the VNA has the new ones


def _retry_later(transfer_id: int, reason: str) -> str:
    with transaction.atomic():
        t = Transfer.objects.select_for_update().get(pk=transfer_id)
        if t.status not in (tr.IN_PROGRESS, tr.COMMITTING):
            return t.status
        t.reason = reason[:2000]
        t.lease_expires_at = None
        if t.attempts >= settings.TRANSFER_MAX_ATTEMPTS:
            t.finished_at = timezone.now()
            t.save(update_fields=["reason", "lease_expires_at", "finished_at"])
            transition(t, tr.FAILED, entity="transfer", cause=f"gave up after {t.attempts} attempts: {reason}"[:255],
                       actor="routing")
            return tr.FAILED
        delay = backoff_seconds(t.attempts)
        t.next_attempt_at = timezone.now() + dt.timedelta(seconds=delay)
        t.save(update_fields=["reason", "lease_expires_at", "next_attempt_at"])
        transition(t, tr.RETRYING, entity="transfer", cause=f"transient: {reason}"[:255], actor="routing")
        enqueue_on_commit(t.pk, countdown=delay)
    log.warning("transfer will be retried", extra={"transfer_id": transfer_id, "delay": round(delay, 1)})
    return tr.RETRYING


def _fail(transfer_id: int, reason: str) -> str:
    with transaction.atomic():
        t = Transfer.objects.select_for_update().get(pk=transfer_id)
        if t.status not in (tr.IN_PROGRESS, tr.COMMITTING):
            return t.status
        t.reason = reason[:2000]
        t.lease_expires_at = None
        t.finished_at = timezone.now()
        t.save(update_fields=["reason", "lease_expires_at", "finished_at"])
        transition(t, tr.FAILED, entity="transfer", cause=f"permanent: {reason}"[:255], actor="routing")
    log.error("transfer failed", extra={"transfer_id": transfer_id})
    return tr.FAILED


# --- storage commitment report -------------------------------------------------------------

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
            if t.attempts >= settings.TRANSFER_MAX_ATTEMPTS:
                t.finished_at = now
                t.save(update_fields=["finished_at"])
                transition(t, tr.FAILED, entity="transfer", cause=t.reason[:255], actor="N-EVENT-REPORT")
                return tr.FAILED
            delay = backoff_seconds(t.attempts)
            t.next_attempt_at = now + dt.timedelta(seconds=delay)
            t.save(update_fields=["next_attempt_at"])
            transition(t, tr.RETRYING, entity="transfer", cause=t.reason[:255], actor="N-EVENT-REPORT")
            enqueue_on_commit(t.pk, countdown=delay)
            return tr.RETRYING
        return _finish_locked(t, cause="storage commitment: every instance committed")


def _is_destination(destination: VnaDestination, ae_title: str, address: str) -> bool:
    return destination.ae_title.strip() == ae_title.strip() and address_matches(destination.host, address)


# --- sweep, operator actions, retention -----------------------------------------------------

def sweep(*, now: dt.datetime | None = None, grace_seconds: float = 30.0) -> int:
    """Re-queue transfers no worker holds: due rows not picked up within a grace period,
    rows whose worker lease expired (worker killed), commitments that timed out."""
    now = now or timezone.now()
    due = Transfer.objects.filter(
        status__in=[tr.SCHEDULED, tr.RETRYING], next_attempt_at__lte=now - dt.timedelta(seconds=grace_seconds)
    ).values_list("pk", flat=True)
    stale = Transfer.objects.filter(status=tr.IN_PROGRESS, lease_expires_at__lt=now).values_list("pk", flat=True)
    timed_out = Transfer.objects.filter(
        status=tr.COMMITTING,
        commitment_requested_at__lt=now - dt.timedelta(seconds=settings.STORAGE_COMMITMENT_TIMEOUT_SECONDS),
    ).values_list("pk", flat=True)
    ids = sorted(set(due) | set(stale) | set(timed_out))
    from pacs.tasks import send_transfer

    for pk in ids:
        try:
            send_transfer.apply_async((pk,))
        except Exception:  # noqa: BLE001 - broker down: next sweep
            log.warning("sweep could not queue transfer", extra={"transfer_id": pk})
            break
    return len(ids)


class TransferActionError(DomainError):
    pass


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
    with transaction.atomic():
        t = Transfer.objects.select_for_update().get(pk=transfer_id)
        if t.status in (tr.COMMITTED, tr.CANCELED):
            raise TransferActionError(f"a {t.status} transfer cannot be canceled")
        t.finished_at = timezone.now()
        t.lease_expires_at = None
        t.save(update_fields=["finished_at", "lease_expires_at"])
        transition(t, tr.CANCELED, entity="transfer", cause="canceled on the transfers page", actor=actor)
    return t


def purge_archived(*, now: dt.datetime | None = None) -> int:
    """Delete local files of studies archived more than ARCHIVE_RETENTION_DAYS ago (0: never).
    Only ARCHIVED studies qualify: nothing is deleted before storage commitment."""
    days = settings.ARCHIVE_RETENTION_DAYS
    if days <= 0:
        return 0
    now = now or timezone.now()
    purged = 0
    for study in Study.objects.filter(status=im.ARCHIVED, purged_at__isnull=True,
                                      archived_at__lt=now - dt.timedelta(days=days)):
        with transaction.atomic():
            locked = Study.objects.select_for_update().get(pk=study.pk)
            if locked.status != im.ARCHIVED:
                continue
            for path in Instance.objects.filter(study=locked).values_list("path", flat=True):
                storage.remove_instance_file(path)
            locked.purged_at = now
            locked.save(update_fields=["purged_at", "updated_at"])
            purged += 1
    return purged
