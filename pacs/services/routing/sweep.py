"""The routing half of the periodic imaging sweep (``pacs.imaging_sweep``): transfers no worker
holds are published again.  Every task leases its row first, so a second copy of a task that
was not lost does nothing."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.utils import timezone

from pacs.models import Transfer
from pacs.models import transfers as tr
from pacs.services.routing import schedule
from project.delivery import leases
from project.delivery.sweep import publish_each

log = logging.getLogger("pacs.routing")


def sweep(*, now: dt.datetime | None = None, grace_seconds: float = 30.0) -> int:
    """Re-queue transfers no worker holds: due rows not picked up within a grace period, rows
    whose worker's lease ran out (worker killed), commitments whose N-EVENT-REPORT did not come
    within ``STORAGE_COMMITMENT_TIMEOUT_SECONDS``.  Returns how many rows it found."""
    now = now or timezone.now()
    due = Transfer.objects.filter(
        status__in=[tr.SCHEDULED, tr.RETRYING], next_attempt_at__lte=now - dt.timedelta(seconds=grace_seconds)
    ).values_list("pk", flat=True)
    stale = Transfer.objects.filter(leases.expired("lease_expires_at", now), status=tr.IN_PROGRESS) \
        .values_list("pk", flat=True)
    timed_out = Transfer.objects.filter(
        status=tr.COMMITTING,
        commitment_requested_at__lt=now - dt.timedelta(seconds=settings.STORAGE_COMMITMENT_TIMEOUT_SECONDS),
    ).values_list("pk", flat=True)
    ids = sorted(set(due) | set(stale) | set(timed_out))
    publish_each(ids, lambda pk: schedule.publish(pk), log=log, event="sweep could not queue transfer",
                 key="transfer_id")
    return len(ids)
