"""Celery tasks of the HL7 gateway: ORU^R01 delivery and its sweep (thin: the rules are in
``hl7gateway.outbox``).

Tasks take row IDs, are acknowledged late (settings: ``CELERY_TASK_ACKS_LATE``,
``CELERY_TASK_REJECT_ON_WORKER_LOST``) and are idempotent: running ``deliver_oru`` twice
for a row sends it at most once per lease, and never after it was settled.  Names are
explicit and stable (they are what the broker and the beat schedule store).
"""

from __future__ import annotations

from celery import shared_task, signals
from django.db import close_old_connections

from hl7gateway import outbox


@shared_task(name=outbox.TASK_NAME, acks_late=True, ignore_result=True)
def deliver_oru(message_id: int) -> str:
    """Send one outbound ORU^R01 row (claim, send over MLLP, wait for the ACK, record)."""
    return outbox.deliver(message_id)


@shared_task(name=outbox.DRAIN_TASK_NAME, acks_late=True, ignore_result=True)
def drain_destination(destination_id: int) -> int:
    """Send the due ORU^R01 rows of one destination in batches (queued by ``outbox.wake``)."""
    return outbox.drain(destination_id)


@shared_task(name="hl7gateway.sweep_outbound", ignore_result=True)
def sweep_outbound() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE): re-queue due rows whose task never ran or whose worker died."""
    return outbox.sweep()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _database_connections_like_requests(**kwargs) -> None:
    """Keep a worker's database connection across tasks, as Django does across requests: close
    it only when it is unusable (after an error) or older than CONN_MAX_AGE.  (With
    CELERY_DB_REUSE_MAX set, Celery no longer closes it after every task; this keeps a broken
    connection from outliving the task that broke it.)  Applies to every task of the worker."""
    close_old_connections()
