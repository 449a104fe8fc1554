"""Celery tasks of the reading worklist (thin: the rules are in ``worklist.services``)."""

from __future__ import annotations

from celery import shared_task

from worklist import services


@shared_task(name="worklist.expire_idle_claims", ignore_result=True)
def expire_idle_claims() -> int:
    """Periodic (CELERY_BEAT_SCHEDULE): close claims idle longer than READING_CLAIM_TIMEOUT_MINUTES.

    The list and the claim service already ignore an idle claim; this closes the rows so that
    the claim history shows when they expired.  Idempotent.
    """
    return services.expire_idle_claims()
