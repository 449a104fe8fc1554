"""Celery task of the export (thin: the steps are in :mod:`audit_export.run`)."""

from __future__ import annotations

from celery import shared_task

from . import run


@shared_task(name="audit_export.export", ignore_result=True)
def export() -> dict:
    """Periodic (AUDIT_EXPORT_SECONDS): seal and send what is after the cursor.  Nothing without
    AUDIT_REPOSITORY_URL.  Concurrent runs do no harm: the second finds the cursor locked and
    leaves (``busy``)."""
    sender = run.configured_sender()
    if sender is None:
        return {}
    outcome = run.export_pending(sender)
    return {"repository": outcome.repository, "sent": outcome.sent, "cursor": outcome.cursor,
            "pending": outcome.pending, "busy": outcome.busy}
