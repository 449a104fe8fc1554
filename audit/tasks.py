"""Celery tasks of the audit trail (thin: the rules are in :mod:`audit.chain`)."""

from __future__ import annotations

import atexit

from celery import shared_task, signals
from django.conf import settings

from audit import chain, trail
from audit.processes import application_activity
from project.auditing import events


@shared_task(name="audit.seal", ignore_result=True)
def seal() -> int:
    """Periodic (AUDIT_SEAL_SECONDS): chain the records written since the last pass.  Idempotent;
    concurrent runs wait for each other (chain.seal's lock)."""
    total = 0
    while (sealed := chain.seal()) > 0:
        total += sealed
    return total


@shared_task(name="audit.verify", ignore_result=True)
def verify() -> int:
    """Periodic (AUDIT_VERIFY_SECONDS): verify the whole chain and keep the result for the audit
    page (which must not recompute the chain on every view); returns the breaks found."""
    return chain.check().break_count


@shared_task(name="audit.purge", acks_late=True, ignore_result=True)
def purge() -> int:
    """Daily: delete records older than AUDIT_RETENTION_DAYS (0: none), leaving an anchor record."""
    before = chain.retention_cutoff(settings.AUDIT_RETENTION_DAYS)
    if before is None:
        return 0
    chain.seal()
    return chain.purge(before, actor="audit.purge", actor_kind=events.SYSTEM)


@signals.worker_process_shutdown.connect
def _flush_audit_records(**kwargs) -> None:
    """A prefork child may leave without running atexit: write what its record_soon calls queued."""
    trail.stop()


@signals.worker_ready.connect
def _worker_started(**kwargs) -> None:
    """The worker's main process is ready (its pool forked): Application Start (PS3.15 A.5.3.1)."""
    application_activity("worker", started=True)


@signals.worker_shutdown.connect
def _worker_stopped(**kwargs) -> None:
    """The worker's main process is stopping: Application Stop."""
    application_activity("worker", started=False)


@signals.beat_init.connect
def _beat_started(**kwargs) -> None:
    """Beat started: Application Start; its stop is recorded at exit (Celery has no beat shutdown
    signal, and beat runs no tasks itself)."""
    application_activity("beat", started=True)
    atexit.register(application_activity, "beat", started=False)
