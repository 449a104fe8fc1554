"""Counting DIMSE operations per calling AE (``monitoring.DicomOperation``).

``record_many(counts)`` adds to the hours' counters, one upsert per (hour, calling AE,
operation, status) (INSERT ... ON CONFLICT DO UPDATE, PostgreSQL and SQLite), committed without waiting for
the disk on PostgreSQL (the counts are for the operator, not the patient record).  The DIMSE
handlers send ``pacs.signals.dicom_operation`` after deciding their answer
(``pacs.dimse.counting``) and ``monitoring.receivers`` calls ``record_quietly``: the count is
gathered in memory and written in the background (several answers per upsert under load);
counting never changes or delays an answer, and a failure to count (database down) is logged,
not raised.
"""

from __future__ import annotations

import logging
import threading

from django.db import connection, transaction
from django.utils import timezone

from monitoring.health import HEALTHCHECK_AE_TITLE
from monitoring.models import DicomOperation
from pacs.dimse import db

log = logging.getLogger("monitoring.dicom_log")


def record_many(counts: dict) -> None:
    """Add ``{(hour, calling_ae_title, operation, status): (count, last_at)}`` in one transaction."""
    table = DicomOperation._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Counters for the operator, not patient data: an asynchronous commit (this
            # transaction only) does not wait for the WAL flush, so counting costs a DIMSE
            # database thread no disk wait; a crash may lose the last fraction of a second of
            # counts, never make them inconsistent (PostgreSQL "Asynchronous Commit").
            cursor.execute("SET LOCAL synchronous_commit = off")
        for (hour, calling, operation, status), (count, last_at) in sorted(counts.items()):
            cursor.execute(
                f"INSERT INTO {table} (hour, calling_ae_title, operation, status, count, last_at) "
                "VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (hour, calling_ae_title, operation, status) "
                f"DO UPDATE SET count = {table}.count + excluded.count, last_at = excluded.last_at",
                [hour, calling, operation, status, count, last_at],
            )


# Counts not yet written.  They are written at most every COUNT_WRITE_DELAY seconds
# (pacs.dimse.db.run_soon): a stream of C-STORE or C-FIND answers becomes a few upserts a second,
# not a commit per answer competing with the answers' own database work.
_pending: dict = {}
_pending_lock = threading.Lock()
COUNT_WRITE_DELAY = 0.5


def _flush_pending() -> None:
    with _pending_lock:
        counts = dict(_pending)
        _pending.clear()
    if not counts:
        return
    try:
        record_many(counts)
    except Exception as exc:  # noqa: BLE001 - counting must never change a DICOM answer
        log.warning("dicom operations not counted", extra={"error": str(exc)[:200], "counts": len(counts)})


def record_quietly(calling_ae_title: str, operation: str, status: int) -> None:
    """Count one answer: added in memory and written by a DIMSE database thread
    (pacs.dimse.db.run_soon) within COUNT_WRITE_DELAY seconds, never waited for -- counting never delays or
    changes an answer; errors are logged only.  ``pacs.dimse.db.flush()`` waits for it."""
    if calling_ae_title == HEALTHCHECK_AE_TITLE:
        return  # the container healthcheck's C-ECHO is not an interface
    now = timezone.now()
    key = (now.replace(minute=0, second=0, microsecond=0), (calling_ae_title or "")[:16], operation[:16], int(status))
    with _pending_lock:
        count, _last = _pending.get(key, (0, now))
        _pending[key] = (count + 1, now)
    try:
        db.run_soon(_flush_pending, COUNT_WRITE_DELAY)
    except Exception as exc:  # noqa: BLE001
        log.warning("dicom operation not counted", extra={"calling_ae_title": calling_ae_title,
                                                          "operation": operation, "error": str(exc)[:200]})
