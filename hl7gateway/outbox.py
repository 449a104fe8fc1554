"""The ORU^R01 outbox: the domain rules of outbound report delivery, in one place.

* ``enqueue_oru(report_version_id)`` -- called by ``ris.services.reports.sign`` inside the
  signing transaction: one ``OutboundMessage`` per enabled destination, rendered now (so
  every resend is the same bytes, MSH-10 included); after the commit
  (``transaction.on_commit``; reliability C-01) ``wake`` queues one drain task per
  destination unless one is already queued (coalesced wake-ups).
* ``drain(destination_id)`` / ``deliver(message_id)`` -- what the Celery tasks
  (``hl7gateway.tasks``) run: claim due rows with a lease (``claim_batch``, ``claim_due``),
  send them over one MLLP connection, record each outcome (``record_results``).
* ``sweep`` -- the periodic re-drive: due rows whose task never ran (a broker that lost
  it, a worker killed mid-send whose lease ran out) are published again (C-02, C-03).
* ``retry`` / ``cancel`` -- the operator's actions, recorded with who did it.
* ``destination_summaries`` -- queue depth, oldest undelivered age, failures per destination.

Delivery rules (issue 5 item 6, reliability H-13/H-14, C-05/C-06):

* AA: delivered.  AR: failed at once.  AE (and an answer that is not an ACK of the
  message): retried with exponential backoff and jitter up to ``HL7_ORU_MAX_ATTEMPTS``
  attempts, then failed.
* No answer within the ACK timeout, connection refused or lost: retried with the same
  capped backoff, without an attempt limit -- a destination that is down for hours must
  not lose reports; the operator page shows the queue growing and its age.
* A worker that died mid-send (lease expired, attempt unfinished) counts as an interrupted
  attempt; after ``HL7_ORU_MAX_ATTEMPTS`` of them the message fails (no endless crash loop,
  C-04).
* Order: a message is not sent while an earlier message (lower id) of the same patient to
  the same destination is not delivered or canceled.  A failed message therefore holds
  back the patient's later messages to that destination until an operator retries or
  cancels it (H-14); other patients are not affected.
* Delays: short ones (<= ``COUNTDOWN_LIMIT_SECONDS``) are Celery countdowns, longer ones
  are left to the sweep through ``next_attempt_at``; both stay far below the Redis
  visibility timeout (C-05).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q
from django.utils import timezone

from hl7gateway import auditing, client, oru
from hl7gateway.models.outbound import (
    CANCELED,
    DELIVERED,
    FAILED,
    PENDING,
    OutboundAction,
    OutboundAttempt,
    OutboundDestination,
    OutboundMessage,
)
from ris.errors import DomainError, InvalidTransition, UnknownKey
from ris.services.transitions import transition

log = logging.getLogger(__name__)

ENTITY = "oru_outbound"
TASK_NAME = "hl7gateway.deliver_oru"
DRAIN_TASK_NAME = "hl7gateway.drain_destination"
#: A drain task sends batches for at most this long, then asks for another (fairness, leases).
DRAIN_SECONDS = 10.0
#: Delays up to this many seconds are Celery countdowns; longer ones wait for the sweep.
COUNTDOWN_LIMIT_SECONDS = 60
#: Added to connect + ACK timeouts for a worker's lease on the row it sends.
LEASE_MARGIN_SECONDS = 5.0
#: Rows the sweep re-queues per run.
SWEEP_BATCH = 500

RETRY_WITHOUT_LIMIT = {client.TIMEOUT, client.CONNECT_ERROR, client.CONNECTION_LOST}
RETRY_WITH_LIMIT = {client.ERROR, client.BAD_ACK}


class OutboxError(DomainError):
    """An outbox request the rules refuse (message for the operator)."""


# --- destinations declared in the environment -------------------------------------------------
@dataclass(frozen=True)
class DestinationSpec:
    name: str
    host: str
    port: int
    options: dict  # field name -> value, from the URL's query string
    tls: bool = False  # mllps://


_OPTION_FIELDS = {
    "version": "hl7_version",
    "application": "receiving_application",
    "facility": "receiving_facility",
    "text": "text_value_type",
    "timeout": "ack_timeout_seconds",
}


def parse_destinations(value: str) -> list[DestinationSpec]:
    """Parse ``HL7_ORU_DESTINATIONS``: ``name=mllp://host:port[?version=2.3.1&application=BILL
    &facility=HOSP&text=FT&timeout=30]``, comma-separated; ``mllps://`` for MLLP over TLS.
    Raises ValueError with the reason."""
    specs: list[DestinationSpec] = []
    for item in (p.strip() for p in (value or "").split(",")):
        if not item:
            continue
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
        for key, values in parse_qs(parts.query).items():
            if key not in _OPTION_FIELDS:
                raise ValueError(f"{item!r}: unknown option {key!r} (known: {', '.join(_OPTION_FIELDS)})")
            val = values[-1]
            if key == "version" and val not in oru.VERSIONS:
                raise ValueError(f"{item!r}: version must be one of {', '.join(oru.VERSIONS)}")
            if key == "text" and val not in oru.TEXT_VALUE_TYPES:
                raise ValueError(f"{item!r}: text must be TX or FT")
            if key == "timeout":
                try:
                    val = float(val)
                except ValueError:
                    raise ValueError(f"{item!r}: timeout must be a number of seconds") from None
            options[_OPTION_FIELDS[key]] = val
        if any(s.name == name for s in specs):
            raise ValueError(f"destination {name!r} is declared twice")
        specs.append(DestinationSpec(name, parts.hostname, port, options, tls=parts.scheme == "mllps"))
    return specs


def sync_environment_destinations(value: str | None = None) -> list[OutboundDestination]:
    """Make the destination rows match ``HL7_ORU_DESTINATIONS`` (deployment as code).

    Declared destinations are created or updated (host, port, TLS and the options given; other
    fields keep their admin values); a destination no longer declared is disabled, not
    deleted (its messages stay visible).  Costs one query when nothing changed.
    """
    value = settings.HL7_ORU_DESTINATIONS if value is None else value
    try:
        specs = parse_destinations(value)
    except ValueError as exc:  # reported by the system check hl7gateway.E001
        log.error("HL7_ORU_DESTINATIONS ignored: %s", exc)
        return []
    current = {d.name: d for d in OutboundDestination.objects.filter(Q(declared_in_environment=True) |
                                                                     Q(name__in=[s.name for s in specs]))}
    synced = []
    for spec in specs:
        wanted = {"host": spec.host, "port": spec.port, "tls": spec.tls, "declared_in_environment": True,
                  **spec.options}
        dest = current.get(spec.name)
        if dest is None:
            dest = OutboundDestination.objects.create(name=spec.name, **wanted)
            log.info("ORU destination declared", extra={"destination": spec.name})
        elif any(getattr(dest, k) != v for k, v in wanted.items()):
            for k, v in wanted.items():
                setattr(dest, k, v)
            dest.save()
        synced.append(dest)
    declared = {s.name for s in specs}
    for name, dest in current.items():
        if name not in declared and dest.declared_in_environment:
            dest.declared_in_environment = False
            dest.enabled = False
            dest.save(update_fields=["declared_in_environment", "enabled", "updated_at"])
            log.warning("ORU destination no longer declared: disabled", extra={"destination": name})
    return synced


# --- building the message ----------------------------------------------------------------------
def report_text_lines(version) -> list[str]:
    """The report as text lines: findings, impression, every addendum up to this version,
    the critical-result communication.  The OBX lines carry exactly these."""
    lines: list[str] = []

    def section(title: str, text: str) -> None:
        body = oru.split_lines(text)
        if not body:
            return
        if lines:
            lines.append("")
        lines.append(title)
        lines.extend(body)

    section("FINDINGS:", version.findings)
    section("IMPRESSION:", version.impression)
    addenda = version.report.versions.filter(
        kind="ADDENDUM", signed_at__isnull=False, version_number__lte=version.version_number
    ).order_by("version_number")
    for number, add in enumerate(addenda, start=1):
        who = oru.Person.from_dicom_pn(add.signer_name)
        name = " ".join(p for p in (who.given, who.family) if p) or add.signer_name
        when = timezone.localtime(add.signed_at).strftime("%Y-%m-%d %H:%M")
        section(f"ADDENDUM {number} ({when}, {name}):", add.addendum)
    for critical in [version] if version.critical_result else []:
        when = timezone.localtime(critical.critical_communicated_at).strftime("%Y-%m-%d %H:%M") \
            if critical.critical_communicated_at else ""
        section("CRITICAL RESULT:", f"Communicated to {critical.critical_communicated_to} {when}".rstrip())
    return lines


def _observation_datetime(rp) -> datetime | None:
    """OBR-7: when the exam was done -- the first performed (else scheduled) step's start."""
    steps = list(rp.steps.all())
    performed = [s for s in steps if s.status in ("STARTED", "DEPARTED", "COMPLETED")]
    chosen = sorted(performed or steps, key=lambda s: s.scheduled_start)
    return chosen[0].scheduled_start if chosen else None


def content_for_report_version(version) -> oru.OruContent:
    """The plain-value content of the ORU^R01 for one signed ``ris.ReportVersion``."""
    rp = version.report.requested_procedure
    order = rp.order
    patient = order.patient
    visit = order.visit
    signer_id = version.signed_by.get_username() if version.signed_by_id else ""
    return oru.OruContent(
        patient_identifiers=tuple(
            oru.PatientIdentifier(i.id_number, i.assigning_authority, i.identifier_type_code)
            for i in patient.identifiers.order_by("pk")
        ),
        patient_name=oru.Person.from_dicom_pn(patient.patient_name),
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        visit_number=visit.visit_number if visit else "",
        patient_class=visit.patient_class if visit else "",
        assigned_location=visit.assigned_location if visit else "",
        referring_physician=oru.Person.from_dicom_pn(
            (visit.referring_physician_name if visit else "") or order.referring_physician_name
        ),
        placer_order_number=order.placer_order_number,
        placer_namespace=order.placer_namespace,
        # ORC-3 / OBR-3: our filler number; an order without one is identified by its accession.
        filler_order_number=order.filler_order_number or rp.accession_number,
        filler_namespace=settings.HL7_RECEIVING_APPLICATION,
        procedure_code_value=rp.procedure_code_value,
        procedure_code_meaning=rp.procedure_code_meaning or rp.requested_procedure_description,
        procedure_code_scheme=rp.procedure_code_scheme,
        observation_datetime=_observation_datetime(rp),
        ordering_provider=oru.Person.from_dicom_pn(order.ordering_provider),
        accession_number=rp.accession_number,
        requested_procedure_id=rp.requested_procedure_id,
        result_status=version.result_status,
        signer=oru.Person.from_dicom_pn(version.signer_name, id_number=signer_id),
        signed_at=version.signed_at,
        text_lines=tuple(report_text_lines(version)),
        study_instance_uid=rp.study_instance_uid,
    )


def message_control_id(pk: int) -> str:
    """MSH-10 (ST, at most 20 characters): fixed when the row is created, reused on every resend."""
    return f"ORU{pk:012d}"


# --- enqueue -----------------------------------------------------------------------------------
def enqueue_oru(report_version_id: int) -> int:
    """Queue one ORU^R01 of this signed report version per enabled destination.

    Call it inside the signing transaction: the rows commit (or roll back) with the
    signature, and the delivery tasks are published only after the commit.  Calling it
    again for the same version adds nothing (one row per version and destination).
    Returns the number of rows created.
    """
    from ris.models import ReportVersion

    with transaction.atomic():
        sync_environment_destinations()
        try:
            version = ReportVersion.objects.select_related(
                "report__requested_procedure__order__patient", "report__requested_procedure__order__visit",
                "signed_by",
            ).get(pk=report_version_id)
        except ReportVersion.DoesNotExist:
            raise UnknownKey(f"no report version {report_version_id}") from None
        if version.signed_at is None or version.result_status not in ("P", "F", "C"):
            raise OutboxError(f"report version {report_version_id} is not signed")
        already = set(OutboundMessage.objects.filter(report_version=version).values_list("destination_id", flat=True))
        destinations = [d for d in OutboundDestination.objects.filter(enabled=True) if d.pk not in already]
        if not destinations:
            if not already:
                log.warning("no enabled ORU destination: report not sent", extra={"report_version_id": version.pk})
            return 0
        content = content_for_report_version(version)
        patient_id_text = "~".join(oru.cx(i) for i in content.patient_identifiers)[:200]
        now = timezone.now()
        created: list[int] = []
        for dest in destinations:
            row = OutboundMessage.objects.create(
                destination=dest,
                report_version=version,
                patient_id=version.report.requested_procedure.order.patient_id,
                patient_id_text=patient_id_text,
                accession_number=content.accession_number,
                result_status=content.result_status,
                hl7_version=dest.version,
                payload=b"",
                next_attempt_at=now,
                dispatched_at=now,
            )
            row.message_control_id = message_control_id(row.pk)
            header = oru.MessageHeader(
                message_control_id=row.message_control_id,
                created_at=now,
                sending_application=settings.HL7_RECEIVING_APPLICATION,
                sending_facility=settings.HL7_RECEIVING_FACILITY,
                receiving_application=dest.receiving_application,
                receiving_facility=dest.receiving_facility,
                version=dest.version,
                text_value_type=dest.text_value_type,
            )
            row.payload = oru.encode(oru.render_oru(content, header, time_zone=settings.TIME_ZONE))
            row.save(update_fields=["message_control_id", "payload"])
            created.append(row.pk)
        _wake_after_commit({d.pk for d in destinations})
    log.info("ORU^R01 queued", extra={"report_version_id": report_version_id, "rows": len(created)})
    return len(created)


def _wake_after_commit(destination_ids: set[int]) -> None:
    """Wake these destinations when the current transaction commits: one callback per
    transaction however many signatures it holds (a dictation system signing a batch)."""
    from django.db import connection

    if not connection.in_atomic_block:
        wake(sorted(destination_ids))
        return
    # Reuse this transaction's callback if it is still registered (not discarded by a rollback).
    pending = next((f for _, f, _ in connection.run_on_commit if hasattr(f, "oru_destination_ids")), None)
    if pending is None:
        woken: set[int] = set()

        def wake_destinations_after_commit() -> None:
            wake(sorted(woken))

        wake_destinations_after_commit.oru_destination_ids = woken
        transaction.on_commit(wake_destinations_after_commit, robust=True)
        pending = wake_destinations_after_commit
    pending.oru_destination_ids |= destination_ids


def wake(destination_ids: list[int]) -> int:
    """Ask for a drain of these destinations (after commit), unless one is already queued.

    Coalesces wake-ups: while a drain task of a destination waits in the queue
    (``drain_requested_at`` set), further signatures publish nothing -- that task will take
    their rows too.  A request older than ``HL7_ORU_REQUEUE_AFTER_SECONDS`` counts as lost
    and is made again.  Returns the number of drain tasks published.
    """
    from project.celery import app

    now = timezone.now()
    stale = now - timedelta(seconds=settings.HL7_ORU_REQUEUE_AFTER_SECONDS)
    published = 0
    for pk in destination_ids:
        requested = OutboundDestination.objects.filter(pk=pk).filter(
            Q(drain_requested_at__isnull=True) | Q(drain_requested_at__lt=stale)
        ).update(drain_requested_at=now)
        if requested:
            try:
                app.send_task(DRAIN_TASK_NAME, args=[pk], retry=True,
                              retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
            except Exception:
                # Broker unreachable: withdraw the request so the next signature tries again (the
                # rows are safe in the database; the sweep re-queues them once the broker is back).
                OutboundDestination.objects.filter(pk=pk, drain_requested_at=now).update(drain_requested_at=None)
                raise
            published += 1
    return published


def dispatch(message_ids: list[int], countdown: float = 0.0) -> None:
    """Publish one delivery task per row (after commit).  Losing one is harmless: the sweep
    re-drives rows whose task has not run (``dispatched_at``)."""
    from project.celery import app

    for pk in message_ids:
        app.send_task(TASK_NAME, args=[pk], countdown=countdown or None,
                      retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})


# --- delivery: claim a batch, send, record ----------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A row leased to one worker for one attempt (plain values for the task)."""

    message_id: int
    number: int  # the attempt number
    host: str
    port: int
    payload: bytes
    message_control_id: str
    connect_timeout: float
    ack_timeout: float
    started_at: datetime
    leased_until: datetime  # doubles as the lease token: still ours if the row still has it
    worker: str
    previous_outcome: str = ""
    tls: bool = False  # MLLP over TLS (the destination's mllps://)


@dataclass(frozen=True)
class NotClaimed:
    reason: str  # settled, not-due, leased, blocked, missing
    retry_in: float | None = None  # seconds until it may be tried (not-due / leased)
    blocked_by: int | None = None


def _earlier_unsettled():
    """Subquery: an earlier undelivered message of the outer row's patient and destination."""
    return OutboundMessage.objects.filter(
        destination_id=OuterRef("destination_id"), patient_id=OuterRef("patient_id"), id__lt=OuterRef("id"),
        status__in=[PENDING, FAILED],
    )


def first_in_line(rows: list[tuple[int, int, int]]) -> list[int]:
    """Of (id, destination id, patient id) triples, the ids that are first in line: no earlier
    undelivered (PENDING or FAILED) message of the same patient to the same destination.

    One grouped query on the (destination, patient, id) index per destination, instead of a
    correlated NOT EXISTS whose plan degrades to a scan per row when the planner misjudges
    the size of a backlog (thousands queued while a destination was down).
    """
    by_dest: dict[int, set[int]] = {}
    for _, dest, patient in rows:
        by_dest.setdefault(dest, set()).add(patient)
    first: dict[tuple[int, int], int] = {}
    for dest, patients in by_dest.items():
        for patient, pk in (
            OutboundMessage.objects.filter(destination_id=dest, patient_id__in=patients, status__in=[PENDING, FAILED])
            .values("patient_id").annotate(first=Min("id")).values_list("patient_id", "first")
        ):
            first[(dest, patient)] = pk
    return [pk for pk, dest, patient in rows if first.get((dest, patient)) == pk]


def blocking_message(message: OutboundMessage) -> OutboundMessage | None:
    """The earliest earlier message of the same patient and destination not yet delivered or canceled."""
    return (
        OutboundMessage.objects.filter(
            destination_id=message.destination_id, patient_id=message.patient_id, id__lt=message.pk,
            status__in=[PENDING, FAILED],
        )
        .order_by("id")
        .first()
    )


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _lease_seconds(connect_timeout: float, ack_timeout: float) -> float:
    # A batch stops starting new sends after ack_timeout; the last one takes at most ack_timeout.
    return connect_timeout + 2 * ack_timeout + LEASE_MARGIN_SECONDS


def _why_not(status: str, next_attempt_at: datetime, leased_until: datetime | None, now: datetime):
    if status != PENDING:
        return NotClaimed("settled")
    if next_attempt_at > now:
        return NotClaimed("not-due", retry_in=(next_attempt_at - now).total_seconds())
    if leased_until and leased_until > now:
        return NotClaimed("leased", retry_in=(leased_until - now).total_seconds())
    return None


def _interrupted_too_often(row: OutboundMessage, now: datetime) -> bool:
    """The previous attempt's worker died (its lease ran out): record that attempt as
    INTERRUPTED; fail the row once that happened ``HL7_ORU_MAX_ATTEMPTS`` times (C-04)."""
    if row.last_outcome != "SENDING":
        return False
    OutboundAttempt.objects.get_or_create(
        message=row, number=row.attempt_count,
        defaults={"started_at": row.updated_at, "finished_at": now, "outcome": OutboundAttempt.INTERRUPTED,
                  "detail": "the worker stopped before recording an outcome (lease expired)"},
    )
    row.last_outcome = OutboundAttempt.INTERRUPTED
    interrupted = row.attempts.filter(outcome=OutboundAttempt.INTERRUPTED, number__gt=row.attempt_floor).count()
    if interrupted < settings.HL7_ORU_MAX_ATTEMPTS:
        return False
    transition(row, FAILED, entity=ENTITY, cause="ORU delivery: worker lost too often", actor="hl7gateway worker")
    OutboundMessage.objects.filter(pk=row.pk).update(
        leased_until=None, last_outcome=OutboundAttempt.INTERRUPTED,
        last_error=f"worker lost {interrupted} times while sending",
    )
    return True


def claim_batch(message_id: int, *, limit: int = 1, worker: str = "") -> list[Claim] | NotClaimed:
    """Lease this row and, if it can be sent, up to ``limit - 1`` more due rows of its destination.

    Every claimed row is due, not leased, and first in line for its patient and destination
    (so one batch holds at most one message per patient); rows another worker is claiming are
    skipped (``SKIP LOCKED``).  The attempt number is counted before anything is sent; a
    worker that dies leaves it behind, and the next claim records it as INTERRUPTED.
    Returns the claims in id order, or why the given row cannot be sent.
    """
    now = timezone.now()
    # Cheap refusal first (no lock, no transaction): most duplicate tasks end here.
    seen = OutboundMessage.objects.filter(pk=message_id).values_list("status", "next_attempt_at",
                                                                     "leased_until").first()
    if seen is None:
        return NotClaimed("missing")
    reason = _why_not(*seen, now)
    if reason is not None:
        return reason
    worker = worker or worker_name()
    with transaction.atomic():
        row = (
            OutboundMessage.objects.select_for_update(of=("self",), skip_locked=True)
            .select_related("destination")
            .filter(pk=message_id)
            .first()
        )
        if row is None:
            return NotClaimed("leased", retry_in=1.0)  # another worker is claiming it right now
        reason = _why_not(row.status, row.next_attempt_at, row.leased_until, now)
        if reason is not None:
            return reason
        blocker = blocking_message(row)
        if blocker is not None:
            return NotClaimed("blocked", blocked_by=blocker.pk)
        if _interrupted_too_often(row, now):
            return NotClaimed("settled")
        return _lease(row.destination, [row], limit, worker, now)


def _due_heads(destination_id: int, limit: int, now: datetime, exclude: int | None = None):
    """Due, unleased PENDING rows of a destination that are first in line for their patient,
    in id order, locked (rows other workers are claiming are skipped).  Call inside a transaction."""
    due = (
        OutboundMessage.objects.filter(destination_id=destination_id, status=PENDING, next_attempt_at__lte=now)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .exclude(pk=exclude)
    )
    heads: list[int] = []
    after = 0
    window = max(4 * limit, 100)
    for _ in range(10):  # a window of rows all held back (one patient's long queue) moves on
        rows = list(due.filter(id__gt=after).order_by("id").values_list("id", "destination_id", "patient_id")[:window])
        if not rows:
            break
        heads += first_in_line(rows)
        after = rows[-1][0]
        if len(heads) >= limit or len(rows) < window:
            break
    if not heads:
        return []
    locked = (
        OutboundMessage.objects.select_for_update(of=("self",), skip_locked=True)
        .filter(pk__in=heads[:limit], status=PENDING)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .order_by("id")
    )
    return [r for r in locked if not _interrupted_too_often(r, now)]


def _lease(dest: OutboundDestination, candidates: list[OutboundMessage], limit: int, worker: str,
           now: datetime) -> list[Claim]:
    """Fill the batch up to ``limit`` with other due rows of the destination and lease them all."""
    if len(candidates) < limit:
        exclude = candidates[0].pk if candidates else None
        candidates = candidates + _due_heads(dest.pk, limit - len(candidates), now, exclude=exclude)
    if not candidates:
        return []
    connect_timeout = settings.HL7_ORU_CONNECT_TIMEOUT_SECONDS
    ack_timeout = dest.ack_timeout
    leased_until = now + timedelta(seconds=_lease_seconds(connect_timeout, ack_timeout))
    OutboundMessage.objects.filter(pk__in=[r.pk for r in candidates]).update(
        attempt_count=F("attempt_count") + 1, leased_until=leased_until, last_outcome="SENDING", updated_at=now
    )
    return [
        Claim(
            message_id=r.pk, number=r.attempt_count + 1, host=dest.host, port=dest.port, payload=bytes(r.payload),
            message_control_id=r.message_control_id, connect_timeout=connect_timeout, ack_timeout=ack_timeout,
            started_at=now, leased_until=leased_until, worker=worker, previous_outcome=r.last_outcome, tls=dest.tls,
        )
        for r in sorted(candidates, key=lambda r: r.pk)
    ]


def claim_due(destination_id: int, *, limit: int, worker: str = "") -> list[Claim]:
    """Lease up to ``limit`` due rows of a destination (first in line for their patient)."""
    now = timezone.now()
    with transaction.atomic():
        dest = OutboundDestination.objects.get(pk=destination_id)
        return _lease(dest, [], limit, worker or worker_name(), now)


def claim(message_id: int, *, worker: str = "") -> Claim | NotClaimed:
    """Lease one due, unblocked PENDING row for one attempt (``claim_batch`` with limit 1)."""
    claimed = claim_batch(message_id, limit=1, worker=worker)
    return claimed[0] if isinstance(claimed, list) else claimed


def backoff_seconds(failures: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base * 2^(failures-1), capped, then a random 50-100 % of it."""
    base = settings.HL7_ORU_RETRY_BASE_SECONDS
    cap = settings.HL7_ORU_RETRY_MAX_SECONDS
    delay = min(cap, base * (2 ** max(failures - 1, 0)))
    return delay * (0.5 + 0.5 * (rng or random).random())


def _next_in_line(row: OutboundMessage) -> OutboundMessage | None:
    """The next PENDING message of the same patient and destination, now that ``row`` is settled."""
    nxt = (
        OutboundMessage.objects.filter(destination_id=row.destination_id, patient_id=row.patient_id, id__gt=row.pk,
                                       status__in=[PENDING, FAILED])
        .order_by("id")
        .first()
    )
    if nxt is None or nxt.status != PENDING or blocking_message(nxt) is not None:
        return None
    return nxt


def _schedule(row: OutboundMessage, at: datetime, now: datetime) -> None:
    """Run the row's task at ``at``: a countdown when it is near, else the sweep picks it up."""
    delay = max((at - now).total_seconds(), 0.0)
    if delay <= COUNTDOWN_LIMIT_SECONDS:
        row.dispatched_at = at
        pk = row.pk
        transaction.on_commit(lambda: dispatch([pk], countdown=delay), robust=True)
    else:
        row.dispatched_at = None


def record_results(outcomes: list[tuple[Claim, client.SendResult]], unsent: list[Claim] = (), *,
                   follow_up: bool = True) -> dict[int, str]:
    """Record the outcomes of a batch in one transaction and decide what happens to each message.

    AA: delivered.  AR: failed.  AE / an answer that is not our ACK: retried after a backoff,
    failed at the attempt cap.  Timeout, refused, lost: retried after a backoff, no cap.
    ``unsent`` are claimed rows the batch did not get to (the destination stopped answering,
    or the batch ran out of time): their attempt is withdrawn and they wait as long as the
    failed message before them.  A row whose lease was taken over meanwhile (another worker
    claimed it after the lease ran out) only gets its attempt recorded.
    Returns {message id: status afterwards}.
    """
    now = timezone.now()
    statuses: dict[int, str] = {}
    with transaction.atomic():
        ids = [c.message_id for c, _ in outcomes] + [c.message_id for c in unsent]
        rows = {r.pk: r for r in OutboundMessage.objects.select_for_update(of=("self",)).filter(pk__in=ids)
                .defer("payload").order_by("id")}
        new_attempts: list[OutboundAttempt] = []
        delivered: list[OutboundMessage] = []
        wait_until = now
        for claimed, result in outcomes:
            row = rows[claimed.message_id]
            detail = (result.detail or "")[:2000]
            attempt = {"started_at": claimed.started_at, "finished_at": now, "outcome": result.outcome,
                       "detail": detail, "ack": result.ack or None, "worker": claimed.worker}
            statuses[row.pk] = row.status
            if row.status != PENDING or row.leased_until != claimed.leased_until:
                # Our lease ran out and another worker took the row over: keep the facts only.
                OutboundAttempt.objects.update_or_create(message=row, number=claimed.number, defaults=attempt)
                log.warning("ORU attempt finished after its lease was taken over",
                            extra={"message_id": row.pk, "attempt": claimed.number, "outcome": result.outcome})
                continue
            new_attempts.append(OutboundAttempt(message=row, number=claimed.number, **attempt))
            summary = f"{result.outcome}: {detail}" if detail else result.outcome
            tries = row.attempt_count - row.attempt_floor  # attempts since creation or the last operator retry
            if result.outcome == client.ACCEPTED:
                transition(row, DELIVERED, entity=ENTITY, actor="hl7gateway worker",
                           cause=f"ORU delivered, AA for MSH-10 {row.message_control_id}")
                if settings.AUDIT_ENABLED:  # the result left the engine (hl7gateway.auditing)
                    auditing.oru_delivered(row, host=claimed.host, port=claimed.port)
                delivered.append(row)
                continue
            if result.outcome == client.REJECTED or (
                result.outcome in RETRY_WITH_LIMIT and tries >= settings.HL7_ORU_MAX_ATTEMPTS
            ):
                cause = (f"ORU rejected (AR) for MSH-10 {row.message_control_id}" if result.outcome == client.REJECTED
                         else f"ORU failed after {tries} attempts ({result.outcome})")
                transition(row, FAILED, entity=ENTITY, actor="hl7gateway worker", cause=cause)
                row.last_error = summary if result.outcome == client.REJECTED else f"{summary} (after {tries} attempts)"
                row.ack = result.ack or None
            else:
                # AE / BAD_ACK below the cap, or the destination unreachable: try again later.
                row.next_attempt_at = now + timedelta(seconds=backoff_seconds(tries))
                row.last_error = summary
                _schedule(row, row.next_attempt_at, now)
                if result.outcome in RETRY_WITHOUT_LIMIT:
                    wait_until = max(wait_until, row.next_attempt_at)
            row.leased_until = None
            row.last_outcome = result.outcome
            row.save(update_fields=["leased_until", "last_outcome", "last_error", "ack", "next_attempt_at",
                                    "dispatched_at", "updated_at"])
            statuses[row.pk] = row.status
        OutboundAttempt.objects.bulk_create(new_attempts)
        if delivered:
            OutboundMessage.objects.filter(pk__in=[r.pk for r in delivered]).update(
                delivered_at=now, leased_until=None, last_outcome=client.ACCEPTED, last_error="", updated_at=now
            )
            statuses.update({r.pk: DELIVERED for r in delivered})
        for claimed in unsent:
            row = rows[claimed.message_id]
            if row.status != PENDING or row.leased_until != claimed.leased_until:
                continue
            row.attempt_count -= 1
            row.leased_until = None
            row.last_outcome = claimed.previous_outcome
            row.next_attempt_at = wait_until
            row.save(update_fields=["attempt_count", "leased_until", "last_outcome", "next_attempt_at", "updated_at"])
            statuses[row.pk] = row.status
        # (A drain continues with the destination's next batch itself: it only needs the unsent.)
        nxt = _follow_up(delivered if follow_up else [], unsent, wait_until, now)
        if nxt is not None:
            kind, key, delay = nxt
            if kind == "row":
                transaction.on_commit(lambda: dispatch([key], countdown=delay), robust=True)
            else:
                transaction.on_commit(lambda: wake([key]), robust=True)
    for claimed, result in outcomes:
        log.info("ORU attempt", extra={"message_id": claimed.message_id, "msh_10": claimed.message_control_id,
                                       "attempt": claimed.number, "outcome": result.outcome,
                                       "status": statuses.get(claimed.message_id)})
    return statuses


def _follow_up(delivered, unsent, wait_until, now) -> tuple[str, int, float] | None:
    """What to queue after a batch: the task of the first row the batch did not get to
    (("row", id, countdown)), or, when a patient's message was delivered and that patient has
    a next one due, a drain of the destination (("wake", destination id, 0))."""
    if unsent:
        first = unsent[0].message_id
        delay = max((wait_until - now).total_seconds(), 0.0)
        if delay > COUNTDOWN_LIMIT_SECONDS:
            return None  # the sweep picks it up when due
        OutboundMessage.objects.filter(pk=first).update(dispatched_at=now + timedelta(seconds=delay))
        return "row", first, delay
    if not delivered:
        return None
    nxt = (
        OutboundMessage.objects.filter(destination_id=delivered[0].destination_id, status=PENDING,
                                       patient_id__in={r.patient_id for r in delivered},
                                       id__gt=min(r.pk for r in delivered), next_attempt_at__lte=now)
        .exclude(Exists(_earlier_unsettled()))
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )
    if nxt is None:
        return None
    OutboundMessage.objects.filter(pk=nxt).update(dispatched_at=now)
    return "wake", delivered[0].destination_id, 0.0


def record_result(claimed: Claim, result: client.SendResult) -> str:
    """Record the outcome of one attempt (``record_results`` for a single claim)."""
    return record_results([(claimed, result)])[claimed.message_id]


def deliver(message_id: int) -> str:
    """One idempotent delivery step: claim this row (and other due rows of its destination, up
    to ``HL7_ORU_BATCH_SIZE``), send them in order over one MLLP connection, each waiting for
    its ACK, and record the outcomes.  Returns what happened to the given row."""
    claimed = claim_batch(message_id, limit=settings.HL7_ORU_BATCH_SIZE)
    if isinstance(claimed, NotClaimed):
        # Nothing to do now: settled, a duplicate task, or not this row's turn.  Whoever holds
        # the lease or settles the blocking row schedules the next step; the sweep backs them up.
        return claimed.reason
    return _send_batch(claimed)[0][message_id]


def _send_batch(claimed: list[Claim], *, follow_up: bool = True) -> tuple[dict[int, str], bool]:
    """Send claimed rows in id order over one connection, each waiting for its ACK; record them.
    Returns the statuses and whether the destination kept answering (every row was sent and
    answered AA, AE or AR)."""
    first = claimed[0]
    outcomes: list[tuple[Claim, client.SendResult]] = []
    budget_ends = time.monotonic() + first.ack_timeout
    with client.MLLPConnection(first.host, first.port, connect_timeout=first.connect_timeout,
                               ack_timeout=first.ack_timeout, tls=first.tls) as conn:
        for c in claimed:
            if outcomes and (outcomes[-1][1].outcome not in client.ANSWERED or time.monotonic() > budget_ends):
                break  # the destination stopped answering, or the batch used up its time
            outcomes.append((c, conn.send(c.payload, message_control_id=c.message_control_id)))
    answering = len(outcomes) == len(claimed) and outcomes[-1][1].outcome in client.ANSWERED
    return record_results(outcomes, unsent=claimed[len(outcomes):], follow_up=follow_up), answering


def drain(destination_id: int) -> int:
    """Send the due messages of one destination, batch after batch (the task ``wake`` queues).

    Clears the destination's drain request first, so that rows committed from now on wake
    another drain.  Stops when nothing is due, when the destination stops answering (the
    rows wait for their backoff; AE and AR do not stop it), or after
    ``DRAIN_SECONDS``, when it asks for another drain.  Returns how many messages it settled.
    """
    OutboundDestination.objects.filter(pk=destination_id).update(drain_requested_at=None)
    started = time.monotonic()
    sent = 0
    limit = settings.HL7_ORU_BATCH_SIZE
    while True:
        try:
            claimed = claim_due(destination_id, limit=limit)
        except OutboundDestination.DoesNotExist:
            return sent
        if not claimed:
            return sent
        statuses, answering = _send_batch(claimed, follow_up=False)
        sent += sum(1 for c in claimed if statuses.get(c.message_id) != PENDING)
        if not answering:
            return sent  # the destination stopped answering: the rows wait for their backoff
        if time.monotonic() - started > DRAIN_SECONDS:
            wake([destination_id])
            return sent


# --- the sweep ---------------------------------------------------------------------------------
def sweep(now: datetime | None = None) -> int:
    """Re-queue due rows whose task has not run: PENDING, due, not leased, first in line for
    their patient and destination, and not dispatched within ``HL7_ORU_REQUEUE_AFTER_SECONDS``.
    Returns how many were published."""
    now = now or timezone.now()
    sync_environment_destinations()
    stale = now - timedelta(seconds=settings.HL7_ORU_REQUEUE_AFTER_SECONDS)
    lost = (
        OutboundMessage.objects.filter(status=PENDING, next_attempt_at__lte=now)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=stale))
    )
    heads = first_in_line(list(lost.order_by("id").values_list("id", "destination_id", "patient_id")[:SWEEP_BATCH]))
    with transaction.atomic():
        ids = list(lost.filter(pk__in=heads).select_for_update(skip_locked=True).values_list("id", flat=True))
        if ids:
            OutboundMessage.objects.filter(pk__in=ids).update(dispatched_at=now)
            transaction.on_commit(lambda: dispatch(ids), robust=True)
    if ids:
        log.info("ORU sweep re-queued rows", extra={"count": len(ids)})
    return len(ids)


# --- operator actions --------------------------------------------------------------------------
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
            _schedule(row, now, now)
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
        if row.leased_until and row.leased_until > now:
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
        nxt = _next_in_line(row)
        if nxt is not None:
            _schedule(nxt, max(nxt.next_attempt_at, now), now)
            nxt.save(update_fields=["dispatched_at"])
    return row


# --- what the operator sees --------------------------------------------------------------------
@dataclass
class DestinationSummary:
    destination: OutboundDestination
    pending: int
    failed: int
    delivered: int
    oldest_undelivered_at: datetime | None
    last_delivered_at: datetime | None

    @property
    def queue_depth(self) -> int:
        return self.pending + self.failed

    @property
    def oldest_age_seconds(self) -> float | None:
        if self.oldest_undelivered_at is None:
            return None
        return (timezone.now() - self.oldest_undelivered_at).total_seconds()


def destination_summaries() -> list[DestinationSummary]:
    """Per destination: queue depth, the oldest undelivered message, failures (one query)."""
    rows = OutboundDestination.objects.annotate(
        n_pending=Count("messages", filter=Q(messages__status=PENDING)),
        n_failed=Count("messages", filter=Q(messages__status=FAILED)),
        n_delivered=Count("messages", filter=Q(messages__status=DELIVERED)),
        oldest=Min("messages__created_at", filter=Q(messages__status__in=[PENDING, FAILED])),
    ).order_by("name")
    last = dict(
        OutboundMessage.objects.filter(status=DELIVERED).values("destination_id")
        .annotate(last=Max("delivered_at")).values_list("destination_id", "last")
    )
    return [
        DestinationSummary(d, d.n_pending, d.n_failed, d.n_delivered, d.oldest, last.get(d.pk)) for d in rows
    ]


__all__ = [
    "CANCELED",
    "DELIVERED",
    "FAILED",
    "PENDING",
    "Claim",
    "NotClaimed",
    "cancel",
    "claim",
    "content_for_report_version",
    "deliver",
    "destination_summaries",
    "enqueue_oru",
    "parse_destinations",
    "record_result",
    "retry",
    "sweep",
    "sync_environment_destinations",
]
