"""Who is next, and who holds what: the order of the queue and the leases on its rows.

* Order: a message is not sent while an earlier message (lower id) of the same patient to the
  same destination is neither delivered nor canceled, so a destination sees each patient's
  results in the order they were signed (an ORU^R01 with result status C after its F, HL7
  v2.5.1 chapter 7.4.1.25).  A failed message holds the patient's later messages back until an
  operator retries or cancels it; other patients are not affected.
* Leases (``project.delivery.leases``): a worker takes due rows for one attempt, counted before
  anything is sent.  A worker that dies leaves the attempt unfinished; when its lease has run
  out the next claim records it as INTERRUPTED, and after ``HL7_ORU_MAX_ATTEMPTS`` of those the
  message fails rather than crash a worker forever.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F, Min, OuterRef
from django.utils import timezone

from hl7gateway.models.outbound import FAILED, PENDING, OutboundAttempt, OutboundDestination, OutboundMessage
from hl7gateway.outbox.rules import ENTITY, lease_seconds
from project.delivery import leases
from ris.services.transitions import transition


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
    validate: bool = False  # checked against its HL7 version and structure before it is sent


@dataclass(frozen=True)
class NotClaimed:
    reason: str  # settled, not-due, leased, blocked, missing
    retry_in: float | None = None  # seconds until it may be tried (not-due / leased)
    blocked_by: int | None = None


def earlier_unsettled():
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


def next_in_line(row: OutboundMessage) -> OutboundMessage | None:
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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _why_not(status: str, next_attempt_at: datetime, leased_until: datetime | None, now: datetime):
    if status != PENDING:
        return NotClaimed("settled")
    if next_attempt_at > now:
        return NotClaimed("not-due", retry_in=(next_attempt_at - now).total_seconds())
    if leases.held(leased_until, now):
        return NotClaimed("leased", retry_in=(leased_until - now).total_seconds())
    return None


def _interrupted_too_often(row: OutboundMessage, now: datetime) -> bool:
    """The previous attempt's worker died (its lease ran out): record that attempt as
    INTERRUPTED; fail the row once that happened ``HL7_ORU_MAX_ATTEMPTS`` times."""
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
        .filter(leases.free("leased_until", now))
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
        .filter(leases.free("leased_until", now))
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
    leased_until = leases.until(now, lease_seconds(connect_timeout, ack_timeout))
    OutboundMessage.objects.filter(pk__in=[r.pk for r in candidates]).update(
        attempt_count=F("attempt_count") + 1, leased_until=leased_until, last_outcome="SENDING", updated_at=now
    )
    return [
        Claim(
            message_id=r.pk, number=r.attempt_count + 1, host=dest.host, port=dest.port, payload=bytes(r.payload),
            message_control_id=r.message_control_id, connect_timeout=connect_timeout, ack_timeout=ack_timeout,
            started_at=now, leased_until=leased_until, worker=worker, previous_outcome=r.last_outcome, tls=dest.tls,
            validate=dest.validate_messages,
        )
        for r in sorted(candidates, key=lambda r: r.pk)
    ]


def claim_due(destination_id: int, *, limit: int, worker: str = "") -> list[Claim]:
    """Lease up to ``limit`` due rows of a destination (first in line for their patient)."""
    now = timezone.now()
    with transaction.atomic():
        dest = OutboundDestination.objects.get(pk=destination_id)
        return _lease(dest, [], limit, worker or worker_name(), now)
