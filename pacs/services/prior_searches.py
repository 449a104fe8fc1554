"""The search for a new order's priors survives a broker that is down: a ``PriorSearch`` row is
written in the order's transaction (persist before acknowledge: the order's HL7 ACK follows the
commit), the task ``pacs.find_priors`` is queued once the order commits, and the row is marked
finished in the transaction that records the chosen priors.  A row still unfinished after its
``next_attempt_at`` and a grace period (the broker was down, the message was lost, the worker
died) is queued again by ``sweep`` (the periodic imaging sweep).  Searching twice does no harm:
a prior is recorded once per (procedure, study)."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pacs.models.priors import PriorSearch
from project.celery import app
from project.delivery.sweep import publish_each

log = logging.getLogger("pacs.priors")

FIND_TASK = "pacs.find_priors"


def publish(requested_procedure_id: int) -> None:
    app.send_task(FIND_TASK, args=(requested_procedure_id,))


def queue(requested_procedure_ids: list[int]) -> None:
    """In the order's transaction: record the searches, queue them once it commits."""
    ids = list(requested_procedure_ids)
    now = timezone.now()
    PriorSearch.objects.bulk_create(
        [PriorSearch(requested_procedure_id=pk, next_attempt_at=now) for pk in ids], ignore_conflicts=True
    )
    transaction.on_commit(
        lambda: publish_each(
            ids,
            publish,
            log=log,
            event="could not queue the search for priors; the sweep will",
            key="requested_procedure_id",
        )
    )


def finished(requested_procedure_id: int) -> None:
    """In the transaction that records the chosen priors."""
    PriorSearch.objects.filter(requested_procedure_id=requested_procedure_id, finished_at__isnull=True).update(
        finished_at=timezone.now()
    )


def postpone(requested_procedure_id: int, seconds: float) -> None:
    """A retry of the search is queued ``seconds`` ahead: the sweep leaves it alone until then."""
    PriorSearch.objects.filter(requested_procedure_id=requested_procedure_id, finished_at__isnull=True).update(
        next_attempt_at=timezone.now() + dt.timedelta(seconds=seconds)
    )


def sweep(*, now: dt.datetime | None = None, grace_seconds: float = 30.0) -> int:
    """Queue again the searches not finished within a grace period after they were due, each at
    most ``TRANSFER_MAX_ATTEMPTS`` times (a search that fails every time is left for the
    operator, not queued for ever).  Returns how many were queued."""
    now = now or timezone.now()
    due = list(
        PriorSearch.objects.filter(
            finished_at__isnull=True,
            requeued__lt=settings.TRANSFER_MAX_ATTEMPTS,
            next_attempt_at__lte=now - dt.timedelta(seconds=grace_seconds),
        )
        .order_by("next_attempt_at")
        .values_list("requested_procedure_id", flat=True)[:1000]
    )
    published = publish_each(
        due, publish, log=log, event="sweep could not queue the search for priors", key="requested_procedure_id"
    )
    if published:
        PriorSearch.objects.filter(requested_procedure_id__in=due[:published]).update(
            next_attempt_at=now, requeued=F("requeued") + 1
        )
    return published
