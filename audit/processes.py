"""Application start and stop on the audit trail (DICOM PS3.15 A.5.3.1 Application Activity).

Each of the engine's processes records its own start (EventTypeCode 110120 Application Start)
and stop (110121 Application Stop), action E: ``run_mllp``, ``run_dicom``, the Celery worker and
beat (Celery's signals, :mod:`audit.tasks`) and gunicorn's master (its hooks in
``gunicorn.conf.py`` run ``manage.py record_application_activity``, so that the master never
imports Django: its workers must import the code afresh on a reload).  The active participant
is the process (actor kind system); the detail names the host and process id.

A record that cannot be written (the database is down) is logged without failing the start or
stop: a process must be able to stop when the database is gone.
"""

from __future__ import annotations

import logging
import os
import socket

from django.db import DatabaseError, connection

from audit import trail
from project.auditing import events

log = logging.getLogger("audit.processes")

PROCESSES = ("web", "mllp", "dicom", "worker", "beat")


def application_activity(process: str, *, started: bool, pid: int | None = None, close: bool = True) -> bool:
    """Record that ``process`` started (``started``) or stopped; False if it could not be written.
    ``close`` closes this thread's database connection afterwards (a parent about to fork, or a
    process about to exit, keeps none open)."""
    try:
        trail.record(
            events.APPLICATION_ACTIVITY, action=events.EXECUTE,
            event_type=events.APPLICATION_START if started else events.APPLICATION_STOP,
            actor=f"pacs {process}", actor_kind=events.SYSTEM,
            detail={"process": process, "host": socket.gethostname(), "pid": pid or os.getpid()},
        )
        return True
    except DatabaseError as exc:
        log.warning("application activity not recorded on the audit trail",
                    extra={"application": process, "started": started, "error": str(exc)[:200]})
        return False
    finally:
        if close:
            connection.close()
