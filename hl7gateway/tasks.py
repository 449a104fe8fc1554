"""Celery tasks of the HL7 gateway: ORU^R01 delivery and its sweep (thin: the rules are in
``hl7gateway.outbox``).

Tasks take row IDs, are acknowledged late (settings: ``CELERY_TASK_ACKS_LATE``,
``CELERY_TASK_REJECT_ON_WORKER_LOST``) and are idempotent: running ``deliver_oru`` twice
for a row sends it at most once per lease, and never after it was settled.  Names are
explicit and stable (they are what the broker and the beat schedule store).
"""

from __future__ import annotations

from celery import shared_task

from hl7gateway.outbox import delivery, publish, sweep


@shared_task(name=publish.TASK_NAME, acks_late=True, ignore_result=True)
def deliver_oru(message_id: int) -> str:
    """Send one outbound row, whatever its kind (claim, send over MLLP, wait for the ACK, record)."""
    return delivery.deliver(message_id)


@shared_task(name=publish.DRAIN_TASK_NAME, acks_late=True, ignore_result=True)
def drain_destination(destination_id: int) -> int:
    """Send the due ORU^R01 rows of one destination in batches (queued by ``publish.wake``)."""
    return delivery.drain(destination_id)


@shared_task(name="hl7gateway.sweep_outbound", ignore_result=True)
def sweep_outbound() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE): re-queue due rows whose task never ran or whose worker died."""
    return sweep.sweep()
