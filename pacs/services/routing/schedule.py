"""The routing rule: which transfers a study's batch gets, and when their tasks are queued."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pacs.models import Study, Transfer, TransferItem
from pacs.services.routing import destinations
from project.celery import app
from project.delivery import backoff
from project.delivery.sweep import publish_each

log = logging.getLogger("pacs.routing")

TASK_NAME = "pacs.send_transfer"


def schedule_batch(study: Study, batch: int, instance_ids: list[int]) -> list[Transfer]:
    """Inside the completing transaction: one transfer (+ items) per enabled destination."""
    now = timezone.now()
    created = []
    for destination in destinations.destinations():
        transfer, was_created = Transfer.objects.get_or_create(
            study=study, destination=destination, batch=batch, patient_update=0, defaults={"next_attempt_at": now}
        )
        if not was_created:
            continue
        TransferItem.objects.bulk_create([TransferItem(transfer=transfer, instance_id=i) for i in instance_ids])
        created.append(transfer)
    for transfer in created:
        enqueue_on_commit(transfer.pk)
    return created


def publish(transfer_id: int, countdown: float | None = None) -> None:
    """Queue the task of one transfer (raises when the broker refuses)."""
    app.send_task(TASK_NAME, args=(transfer_id,), countdown=countdown)


def enqueue_on_commit(transfer_id: int, countdown: float | None = None) -> None:
    """Queue the transfer's task when the current transaction commits.  A broker that is down
    loses nothing: the row is due, and the sweep publishes it later."""
    transaction.on_commit(lambda: publish_each(
        [transfer_id], lambda pk: publish(pk, countdown), log=log, event="could not queue transfer; the sweep will",
        key="transfer_id"))


def backoff_seconds(attempts: int) -> float:
    """The delay before the next attempt (``TRANSFER_RETRY_BASE_SECONDS`` doubled per attempt,
    capped by ``TRANSFER_RETRY_MAX_SECONDS``, jittered: ``project.delivery.backoff``)."""
    return backoff.backoff_seconds(attempts, base=settings.TRANSFER_RETRY_BASE_SECONDS,
                                   cap=settings.TRANSFER_RETRY_MAX_SECONDS)


def next_attempt(attempts: int, now=None) -> backoff.Retry | None:
    """After ``attempts`` attempts of a transfer or a prior fetch, the last one failed
    transiently: None once they reach ``TRANSFER_MAX_ATTEMPTS`` (give up), else when to try again
    (``backoff_seconds`` from now: ``project.delivery.backoff.next_attempt``)."""
    return backoff.next_attempt(attempts, max_attempts=settings.TRANSFER_MAX_ATTEMPTS,
                                base=settings.TRANSFER_RETRY_BASE_SECONDS, cap=settings.TRANSFER_RETRY_MAX_SECONDS,
                                now=now or timezone.now())
