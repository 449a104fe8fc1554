"""Publishing delivery tasks: the drain of a destination (``wake``, coalesced) and the task of
one row (``dispatch``).  Publishing happens after the commit that made the rows due; losing a
task is harmless, the sweep re-drives rows whose task has not run (``dispatched_at``).

The task names are what the broker and the beat schedule store: they never change.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from hl7gateway.models.outbound import OutboundDestination, OutboundMessage
from hl7gateway.outbox.rules import COUNTDOWN_LIMIT_SECONDS
from project.celery import app

#: The task that sends one row (and the due rows of its destination that fit in its batch).
TASK_NAME = "hl7gateway.deliver_oru"
#: The task that drains one destination, batch after batch.
DRAIN_TASK_NAME = "hl7gateway.drain_destination"


def wake_after_commit(destination_ids: set[int]) -> None:
    """Wake these destinations when the current transaction commits: one callback per
    transaction however many signatures it holds (a dictation system signing a batch)."""
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
    for pk in message_ids:
        app.send_task(TASK_NAME, args=[pk], countdown=countdown or None,
                      retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})


def schedule(row: OutboundMessage, at: datetime, now: datetime) -> None:
    """Run the row's task at ``at``: a countdown when it is near, else the sweep picks it up."""
    delay = max((at - now).total_seconds(), 0.0)
    if delay <= COUNTDOWN_LIMIT_SECONDS:
        row.dispatched_at = at
        pk = row.pk
        transaction.on_commit(lambda: dispatch([pk], countdown=delay), robust=True)
    else:
        row.dispatched_at = None
