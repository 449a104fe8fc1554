"""Celery tasks of the audit trail (thin: the rules are in :mod:`audit.chain`)."""

from __future__ import annotations

from celery import shared_task, signals
from django.conf import settings

from audit import chain, events, trail


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
