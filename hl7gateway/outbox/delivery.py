"""Sending ORU^R01 messages: the one delivery path of the outbox.

Both Celery tasks run ``_deliver``: ``deliver`` (the task of one row: a retry after its
backoff, a sweep's re-drive, an operator's retry) claims that row with the other due rows of
its destination that fit in a batch and sends that one batch; ``drain`` (the task ``wake``
queues when reports are signed) claims due rows of a destination batch after batch.  A batch
goes over one MLLP connection (``hl7gateway.client``; over TLS for an ``mllps://``
destination), in id order, each message waiting for its ACK; ``record_results`` applies the
rules of ``rules`` to the answers in one transaction.  What comes next is then queued by
tasks (``deliver``: the first row the batch did not get to, or a drain when a patient's next
message became due) or by the loop itself (``drain``).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists
from django.utils import timezone

from hl7gateway import auditing, client, order_status
from hl7gateway.models.outbound import (
    DELIVERED,
    FAILED,
    PENDING,
    STATUS,
    OutboundAttempt,
    OutboundDestination,
    OutboundMessage,
)
from hl7gateway.outbox import publish
from hl7gateway.outbox.queue import Claim, NotClaimed, claim_batch, claim_due, earlier_unsettled
from hl7gateway.outbox.rules import (
    COUNTDOWN_LIMIT_SECONDS,
    DRAIN_SECONDS,
    ENTITY,
    INVALID,
    RETRY_WITH_LIMIT,
    RETRY_WITHOUT_LIMIT,
    backoff_seconds,
)
from ris.errors import DomainError
from ris.models import RequestedProcedure
from ris.services import orders
from ris.services.transitions import transition

log = logging.getLogger("hl7gateway.outbox")


def deliver(message_id: int) -> str:
    """The task of one row: claim it (and other due rows of its destination, up to
    ``HL7_ORU_BATCH_SIZE``), send that batch, record the outcomes, queue what comes next.
    Returns what happened to the given row, or why it was not sent (settled, not-due,
    leased, blocked, missing)."""
    claimed = claim_batch(message_id, limit=settings.HL7_ORU_BATCH_SIZE)
    if isinstance(claimed, NotClaimed):
        # Nothing to do now: settled, a duplicate task, or not this row's turn.  Whoever holds
        # the lease or settles the blocking row schedules the next step; the sweep backs them up.
        return claimed.reason
    statuses, _ = _deliver(claimed, None, drain=False)
    return statuses[message_id]


def drain(destination_id: int) -> int:
    """The task of a destination: send its due messages, batch after batch.

    Clears the destination's drain request first, so that rows committed from now on wake
    another drain.  Stops when nothing is due, when the destination stops answering (the
    rows wait for their backoff; AE and AR do not stop it), or after ``DRAIN_SECONDS``,
    when it asks for another drain.  Returns how many messages it settled.
    """
    OutboundDestination.objects.filter(pk=destination_id).update(drain_requested_at=None)
    _, settled = _deliver(None, destination_id, drain=True)
    return settled


def _deliver(claimed: list[Claim] | None, destination_id: int | None, *, drain: bool) -> tuple[dict[int, str], int]:
    """Send ``claimed`` (or, when None, the destination's due rows), then, when draining, the
    next batches until nothing is due, the destination stops answering or the time is up.
    Returns {message id: status afterwards} and how many messages were settled."""
    started = time.monotonic()
    statuses: dict[int, str] = {}
    settled = 0
    while True:
        if claimed is None:
            try:
                claimed = claim_due(destination_id, limit=settings.HL7_ORU_BATCH_SIZE)
            except OutboundDestination.DoesNotExist:
                break
        if not claimed:
            break
        batch, answering = _send_batch(claimed, follow_up=not drain)
        statuses.update(batch)
        settled += sum(1 for c in claimed if batch.get(c.message_id) != PENDING)
        if not drain or not answering:
            break  # one batch per row task; a destination that stopped answering waits for its backoff
        if time.monotonic() - started > DRAIN_SECONDS:
            publish.wake([destination_id])
            break
        claimed = None
    return statuses, settled


def _send_batch(claimed: list[Claim], *, follow_up: bool = True) -> tuple[dict[int, str], bool]:
    """Send claimed rows in id order over one connection, each waiting for its ACK; record them.
    A row for a destination that validates is checked first and, if invalid, not sent (outcome
    ``INVALID``).  Returns the statuses and whether the destination kept answering (every row
    was sent and answered AA, AE or AR)."""
    first = claimed[0]
    outcomes: list[tuple[Claim, client.SendResult]] = []
    to_send: list[Claim] = []
    for c in claimed:
        finding = _invalid(c) if c.validate else None
        if finding is None:
            to_send.append(c)
        else:
            outcomes.append((c, client.SendResult(outcome=INVALID, detail=finding)))
    sent: list[tuple[Claim, client.SendResult]] = []
    if to_send:
        budget_ends = time.monotonic() + first.ack_timeout
        with client.MLLPConnection(first.host, first.port, connect_timeout=first.connect_timeout,
                                   ack_timeout=first.ack_timeout, tls=first.tls) as conn:
            for c in to_send:
                if sent and (sent[-1][1].outcome not in client.ANSWERED or time.monotonic() > budget_ends):
                    break  # the destination stopped answering, or the batch used up its time
                sent.append((c, conn.send(c.payload, message_control_id=c.message_control_id)))
    answering = len(sent) == len(to_send) and (not sent or sent[-1][1].outcome in client.ANSWERED)
    return record_results(outcomes + sent, unsent=to_send[len(sent):], follow_up=follow_up), answering


def _invalid(c: Claim) -> str | None:
    """Why the claimed message is not valid HL7 for its version and structure, or None.
    (``hl7gateway.conformance`` loads hl7apy: imported only for a destination that validates.)"""
    from hl7gateway import conformance

    try:
        found = conformance.problems(c.payload)
    except Exception as exc:  # noqa: BLE001 - hl7apy raises assorted errors on input it mishandles: not validated, not sent
        # The exception's text may quote the message's values: its type alone goes to the log.
        log.error("HL7 validation failed: %s", type(exc).__name__, extra={"message_id": c.message_id})
        found = [f"the validator failed ({type(exc).__name__}); the message was not checked"]
    return "; ".join(found) if found else None


def record_results(outcomes: list[tuple[Claim, client.SendResult]], unsent: list[Claim] = (), *,
                   follow_up: bool = True) -> dict[int, str]:
    """Record the outcomes of a batch in one transaction and decide what happens to each message.

    AA: delivered.  AR, or INVALID (not sent: it failed validation): failed.  AE / an answer
    that is not our ACK: retried after a backoff, failed at the attempt cap.  Timeout, refused, lost: retried after a backoff, no cap.
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
            if result.outcome == client.ACCEPTED and row.kind == STATUS and \
                    row.status_event == order_status.FILLER_ORDER:
                result = _filler_order_answered(row, result)
                attempt.update(outcome=result.outcome, detail=(result.detail or "")[:2000])
                detail = attempt["detail"]
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
            if result.outcome in (client.REJECTED, INVALID) or (
                result.outcome in RETRY_WITH_LIMIT and tries >= settings.HL7_ORU_MAX_ATTEMPTS
            ):
                cause = (f"ORU rejected (AR) for MSH-10 {row.message_control_id}" if result.outcome == client.REJECTED
                         else f"not sent: MSH-10 {row.message_control_id} is not valid HL7 {row.hl7_version}"
                         if result.outcome == INVALID
                         else f"ORU failed after {tries} attempts ({result.outcome})")
                transition(row, FAILED, entity=ENTITY, actor="hl7gateway worker", cause=cause[:255])
                row.last_error = (summary if result.outcome in (client.REJECTED, INVALID)
                                  else f"{summary} (after {tries} attempts)")
                row.ack = result.ack or None
            else:
                # AE / BAD_ACK below the cap, or the destination unreachable: try again later.
                row.next_attempt_at = now + timedelta(seconds=backoff_seconds(tries))
                row.last_error = summary
                publish.schedule(row, row.next_attempt_at, now)
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
                transaction.on_commit(lambda: publish.dispatch([key], countdown=delay), robust=True)
            else:
                transaction.on_commit(lambda: publish.wake([key]), robust=True)
    for claimed, result in outcomes:
        log.info("ORU attempt", extra={"message_id": claimed.message_id, "msh_10": claimed.message_control_id,
                                       "attempt": claimed.number, "outcome": result.outcome,
                                       "status": statuses.get(claimed.message_id)})
    return statuses


def _filler_order_answered(row: OutboundMessage, result: client.SendResult) -> client.SendResult:
    """The order placer accepted a filler order (ORC-1 SN) at MSA-1: its answer (ORR^O02 /
    ORG^O20) must also say ORC-1 NA with the placer order number it assigned in ORC-2, which is
    then stored on the order (``ris.services.orders.assign_placer_order_number``, audited).
    Returns ``result`` when stored; otherwise the answer counts as a rejection (AR: the row
    fails at once, shown on the outbound page and counted by the backlog alarm), its detail
    saying why."""
    answer = order_status.read_order_answer(result.ack)
    refusal = order_status.filler_order_refusal(answer)
    if not refusal:
        order_id = (RequestedProcedure.objects.filter(pk=row.requested_procedure_id)
                    .values_list("order_id", flat=True).first())
        try:
            with transaction.atomic():  # a refusal leaves the batch's transaction usable
                orders.assign_placer_order_number(order_id, answer.placer_order_number, answer.placer_namespace,
                                                  actor="hl7gateway worker")
        except DomainError as exc:
            refusal = f"the placer order number could not be stored: {exc}"
        else:
            assigned = f"{answer.placer_order_number}^{answer.placer_namespace}".rstrip("^")[:130]
            OutboundMessage.objects.filter(pk=row.pk).update(placer_order_number=assigned)
            return result
    log.warning("filler order not accepted by the order placer",
                extra={"message_id": row.pk, "msh_10": row.message_control_id, "reason": refusal})
    return client.SendResult(client.REJECTED, result.ack, f"MSA-1 AA, but {refusal}", result.elapsed)


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
        .exclude(Exists(earlier_unsettled()))
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )
    if nxt is None:
        return None
    OutboundMessage.objects.filter(pk=nxt).update(dispatched_at=now)
    return "wake", delivered[0].destination_id, 0.0
