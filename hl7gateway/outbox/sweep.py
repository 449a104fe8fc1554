"""The periodic re-drive of the outbox (``hl7gateway.sweep_outbound``, every
``HL7_ORU_SWEEP_SECONDS``): due rows whose task never ran -- a broker that lost it, a worker
killed mid-send whose lease ran out -- are published again.  Every task claims its row first,
so a second copy of a task that was not lost does nothing."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from hl7gateway.models.outbound import PENDING, OutboundMessage
from hl7gateway.outbox import publish
from hl7gateway.outbox.destinations import sync_environment_destinations
from hl7gateway.outbox.queue import first_in_line
from hl7gateway.outbox.rules import SWEEP_BATCH
from project.delivery import leases

log = logging.getLogger("hl7gateway.outbox")


def sweep(now: datetime | None = None) -> int:
    """Re-queue due rows whose task has not run: PENDING, due, not leased, first in line for
    their patient and destination, and not dispatched within ``HL7_ORU_REQUEUE_AFTER_SECONDS``.
    Returns how many were published."""
    now = now or timezone.now()
    sync_environment_destinations()
    stale = now - timedelta(seconds=settings.HL7_ORU_REQUEUE_AFTER_SECONDS)
    lost = (
        OutboundMessage.objects.filter(status=PENDING, next_attempt_at__lte=now)
        .filter(leases.free("leased_until", now))
        .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=stale))
    )
    heads = first_in_line(list(lost.order_by("id").values_list("id", "destination_id", "patient_id")[:SWEEP_BATCH]))
    with transaction.atomic():
        ids = list(lost.filter(pk__in=heads).select_for_update(skip_locked=True).values_list("id", flat=True))
        if ids:
            OutboundMessage.objects.filter(pk__in=ids).update(dispatched_at=now)
            transaction.on_commit(lambda: publish.dispatch(ids), robust=True)
    if ids:
        log.info("ORU sweep re-queued rows", extra={"count": len(ids)})
    return len(ids)
