"""Celery tasks of the monitoring app: the periodic alarm check (CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task

from monitoring import services


@shared_task(name="monitoring.evaluate_alarms", ignore_result=True)
def evaluate_alarms() -> dict:
    return services.evaluate()
