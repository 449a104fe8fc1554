"""The audit trail's API: ``record`` (now, in the caller's transaction) and ``record_soon``
(reads, written by an in-process writer thread).  Every other app calls these two, here or
through ``project.auditing.recording`` (the domain, which does not import this app): the audit app
registers this module as that recorder when Django starts (``audit.apps``).

A record is an audit message of DICOM PS3.15 A.5.1: EventID (``event_id``, a
:mod:`project.auditing.events` code), EventActionCode (``action``), EventOutcomeIndicator
(``outcome``), EventTypeCode (``event_type``), the active participant (``actor`` of ``actor_kind``, from
``source_address``, to ``destination``) and the participant objects (``patients``, ``objects``).
No patient data goes to the log: what goes wrong here is logged with record ids and counts only.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from audit.models import AuditPatient, AuditRecord
from project.auditing import events
from project.text import no_nul

logger = logging.getLogger(__name__)

# The writer's batches: at most this many records, gathered for at most this long, per transaction.
BATCH_SIZE = 500
BATCH_SECONDS = 0.1
# Retry of a failed batch: doubling from the first delay up to the last.
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0


@dataclass(slots=True)
class _Entry:
    """A checked record not yet written: the values of its columns, and the patients it names.
    The model instance is built only where the ORM writes it (:func:`_insert`): the PostgreSQL
    statement takes the values as they are."""

    occurred_at: datetime
    event_id: str
    event_type: str
    action: str
    outcome: int
    actor: str
    actor_kind: str
    source_address: str
    destination: str
    objects: list
    detail: dict
    patients: list[tuple[str, str]]
    record: AuditRecord | None = None

    def model(self) -> AuditRecord:
        if self.record is None:
            self.record = AuditRecord(
                occurred_at=self.occurred_at, event_id=self.event_id, event_type=self.event_type,
                action=self.action, outcome=self.outcome, actor=self.actor, actor_kind=self.actor_kind,
                source_address=self.source_address, destination=self.destination, objects=self.objects,
                detail=self.detail)
        return self.record


def _entry(event_id, *, action, actor, actor_kind, outcome=0, event_type="", source_address="", destination="",
           patients=(), objects=(), detail=None, occurred_at=None) -> _Entry:
    """Check the arguments (a ValueError names the bad one) and build the unwritten record."""
    event_value = events.code_value(event_id, events.EVENT_IDS, "event_id")
    type_value = events.code_value(event_type, events.EVENT_TYPES, "event_type") if event_type else ""
    if action not in events.ACTIONS:
        raise ValueError(f"action {action!r} is not one of {sorted(events.ACTIONS)}")
    if outcome not in events.OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {sorted(events.OUTCOMES)}")
    if actor_kind not in events.ACTOR_KINDS:
        raise ValueError(f"actor_kind {actor_kind!r} is not one of {list(events.ACTOR_KINDS)}")
    if not actor:
        raise ValueError("actor is required (user name, AE title, sending application, process)")
    if occurred_at is None:
        occurred_at = timezone.now()
    elif timezone.is_naive(occurred_at):
        raise ValueError("occurred_at must be timezone-aware")
    named: dict[tuple[str, str], None] = {}  # in the order given, each once
    for patient_id, issuer in patients:
        if not patient_id:
            raise ValueError("a patient needs a patient_id")
        named[(str(patient_id), str(issuer or ""))] = None
    pairs = list(named)
    participant_objects = [{"type": "patient", "id": pid, "issuer": issuer} for pid, issuer in pairs]
    for obj in objects:
        if not isinstance(obj, dict) or not obj.get("type") or obj.get("id") in (None, ""):
            raise ValueError("each participant object is a dict with a type and an id")
        participant_objects.append({**obj, "id": str(obj["id"])})
    if detail is not None and not isinstance(detail, dict):
        raise ValueError("detail must be a dict")
    return _Entry(occurred_at, event_value, type_value, action, outcome, no_nul(str(actor)[:255]), actor_kind,
                  no_nul(str(source_address or "")[:255]), no_nul(str(destination or "")[:255]),
                  no_nul(participant_objects), no_nul(detail or {}),
                  [(no_nul(pid), no_nul(issuer)) for pid, issuer in pairs])


def _insert(entries: list[_Entry]) -> None:
    """Insert the records and their patient rows on the current connection (inside its transaction)."""
    with transaction.atomic():
        AuditRecord.records.bulk_create([e.model() for e in entries])
        AuditPatient.objects.bulk_create([
            AuditPatient(record=e.record, patient_id=pid[:64], issuer=issuer[:64])
            for e in entries for pid, issuer in e.patients
        ])


def prepare(event_id, **kwargs) -> _Entry:
    """Check the arguments of :func:`record` and build the record without writing it, for
    :func:`record_prepared` (a caller that gathers the records of one transaction)."""
    return _entry(event_id, **kwargs)


# One statement for the records of a transaction and their patient rows (PostgreSQL): each record
# is a plain VALUES row whose id comes back (RETURNING) to its patient rows' SELECT.  Built once per
# number of records and prepared once per connection; it costs the HL7 intake half of what one
# statement over arrays (unnest into a materialized CTE, ids drawn by nextval) did.
_COLUMNS = ("occurred_at, event_id, event_type, action, outcome, actor, actor_kind, source_address, destination, "
            "objects, detail, prev_hash, record_hash")
_PG_STATEMENTS: dict[int, str] = {}


def _pg_statement(count: int) -> str:
    statement = _PG_STATEMENTS.get(count)
    if statement is None:
        records = ",\n".join(
            f"r{n} AS (INSERT INTO audit_auditrecord ({_COLUMNS}) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, '', '') RETURNING id)"
            for n in range(count))
        patients = "\nUNION ALL\n".join(
            f"SELECT r{n}.id, p.patient_id, p.issuer FROM r{n}, unnest(%s::text[], %s::text[]) AS p(patient_id, issuer)"
            for n in range(count))
        statement = f"WITH {records}\nINSERT INTO audit_auditpatient (record_id, patient_id, issuer)\n{patients}"
        _PG_STATEMENTS[count] = statement
    return statement


def record_prepared(entries: list[_Entry], *, cursor=None) -> None:
    """Write prepared records now, inside the caller's transaction: on PostgreSQL in one prepared
    statement (the HL7 intake's hot path: one round trip per message, whatever it changed).

    ``cursor``: a cursor factory on the same connection (the intake passes one that prepares the
    statement once per connection)."""
    if not entries or not settings.AUDIT_ENABLED:
        return
    if connection.vendor != "postgresql":
        _insert(entries)
        return
    params: list = []
    for r in entries:
        params += [r.occurred_at, r.event_id, r.event_type, r.action, r.outcome, r.actor, r.actor_kind,
                   r.source_address, r.destination, json.dumps(r.objects), json.dumps(r.detail)]
    for entry in entries:
        params += [[pid[:64] for pid, _ in entry.patients], [issuer[:64] for _, issuer in entry.patients]]
    with (cursor or connection.cursor)() as c:
        c.execute(_pg_statement(len(entries)), params)


# The writer thread's batches (PostgreSQL): any number of records and their patient rows in one
# statement; the ids are drawn from the table's sequence first, so that each patient row can name
# its record.  The rows travel as two JSON documents (one parameter each, parsed by the server):
# a page of the reading worklist or an MWL answer names tens to hundreds of patients, and arrays of
# JSON text would be escaped element by element on the client.
_PG_BATCH = """
WITH v AS (
  SELECT nextval(pg_get_serial_sequence('audit_auditrecord', 'id')) AS id, t.*
  FROM jsonb_to_recordset(%s::jsonb) AS t(n int, occurred_at timestamptz, event_id text, event_type text,
                                          action text, outcome int, actor text, actor_kind text,
                                          source_address text, destination text, objects jsonb, detail jsonb)
), r AS (
  INSERT INTO audit_auditrecord (id, occurred_at, event_id, event_type, action, outcome, actor, actor_kind,
                                 source_address, destination, objects, detail, prev_hash, record_hash)
  SELECT id, occurred_at, event_id, event_type, action, outcome, actor, actor_kind, source_address, destination,
         objects, detail, '', '' FROM v
  RETURNING id
)
INSERT INTO audit_auditpatient (record_id, patient_id, issuer)
SELECT v.id, p.patient_id, p.issuer
FROM jsonb_to_recordset(%s::jsonb) AS p(n int, patient_id text, issuer text) JOIN v ON v.n = p.n
"""


def _insert_batch(entries: list[_Entry]) -> None:
    """The writer's batch, in one transaction: one statement on PostgreSQL, the ORM elsewhere."""
    if connection.vendor != "postgresql":
        _insert(entries)
        return
    records = [{"n": n, "occurred_at": e.occurred_at.isoformat(), "event_id": e.event_id, "event_type": e.event_type,
                "action": e.action, "outcome": e.outcome, "actor": e.actor, "actor_kind": e.actor_kind,
                "source_address": e.source_address, "destination": e.destination, "objects": e.objects,
                "detail": e.detail} for n, e in enumerate(entries, start=1)]
    patients = [{"n": n, "patient_id": pid[:64], "issuer": issuer[:64]}
                for n, e in enumerate(entries, start=1) for pid, issuer in e.patients]
    with transaction.atomic(), connection.cursor() as c:
        c.execute(_PG_BATCH, [json.dumps(records), json.dumps(patients)])


def write(event_id, **kwargs) -> AuditRecord:
    """:func:`record` regardless of AUDIT_ENABLED (the chain's own records: a purge's anchor)."""
    entry = _entry(event_id, **kwargs)
    _insert([entry])
    return entry.record


def record(event_id, *, action: str, actor: str, actor_kind: str, outcome: int = 0, event_type="",
           source_address: str = "", destination: str = "", patients: Iterable[tuple[str, str]] = (),
           objects: Iterable[dict] = (), detail: dict | None = None,
           occurred_at: datetime | None = None) -> AuditRecord | None:
    """Write an audit record now, on the current connection: inside the caller's transaction, so
    that a change and its record commit or roll back together.  For changes (C, U, D) and
    anything that must not be lost with the process.  Returns the record (None with AUDIT_ENABLED
    off).

    ``patients``: (patient_id, issuer) pairs, also added to ``objects`` as type "patient" and
    indexed (:class:`audit.models.AuditPatient`).  Bad arguments raise ValueError and write nothing.
    """
    entry = _entry(event_id, action=action, actor=actor, actor_kind=actor_kind, outcome=outcome,
                   event_type=event_type, source_address=source_address, destination=destination,
                   patients=patients, objects=objects, detail=detail, occurred_at=occurred_at)
    if not settings.AUDIT_ENABLED:
        return None
    _insert([entry])
    return entry.record


def record_soon(event_id, *, action: str, actor: str, actor_kind: str, outcome: int = 0, event_type="",
                source_address: str = "", destination: str = "", patients: Iterable[tuple[str, str]] = (),
                objects: Iterable[dict] = (), detail: dict | None = None,
                occurred_at: datetime | None = None) -> None:
    """Hand an audit record to the writer thread (same arguments as :func:`record`): for reads
    (a page viewed, a query answered), off the request's critical path.  The time is taken now.

    Nothing is dropped: when AUDIT_QUEUE_SIZE records already wait, the caller writes this one
    itself (in its own transaction, or in the caller's if one is open).  :func:`flush` waits until
    everything handed over is committed.
    """
    entry = _entry(event_id, action=action, actor=actor, actor_kind=actor_kind, outcome=outcome,
                   event_type=event_type, source_address=source_address, destination=destination,
                   patients=patients, objects=objects, detail=detail, occurred_at=occurred_at)
    if not settings.AUDIT_ENABLED:
        return
    if not _writer().submit(entry):
        _insert([entry])


def flush(timeout: float | None = 30.0) -> bool:
    """Wait until every record handed to :func:`record_soon` in this process is committed; False
    if that took longer than ``timeout`` seconds (the records stay queued)."""
    writer = _WRITER
    if writer is None or writer.pid != os.getpid():
        return True
    return writer.flush(timeout)


def stop(timeout: float | None = 30.0) -> bool:
    """Write everything queued, then end this process's writer thread and close its database
    connection (at process exit; tests).  A later :func:`record_soon` starts a new writer."""
    global _WRITER
    with _WRITER_LOCK:
        writer, _WRITER = _WRITER, None
    if writer is None or writer.pid != os.getpid():
        return True
    return writer.stop(timeout)


class _Writer:
    """The in-process writer: a bounded buffer and one daemon thread that inserts batches of up
    to BATCH_SIZE records gathered for up to BATCH_SECONDS, each batch one committed transaction
    (PostgreSQL synchronous_commit=on: durable).  A database error keeps the batch and retries it
    with a doubling delay; the thread never gives up on a record."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.capacity = settings.AUDIT_QUEUE_SIZE
        self._cond = threading.Condition()
        self._buffer: deque[_Entry] = deque()
        self._in_flight = 0
        self.failures = 0  # failed batch attempts since the start (tests and metrics read it)
        self.written = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def submit(self, entry: _Entry) -> bool:
        with self._cond:
            if len(self._buffer) >= settings.AUDIT_QUEUE_SIZE:
                return False
            self._buffer.append(entry)
            self._cond.notify_all()
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._buffer) + self._in_flight

    def flush(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._buffer and not self._in_flight, timeout)

    def stop(self, timeout: float | None) -> bool:
        """Write what is queued, then end the thread and close its database connection."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _take(self) -> list[_Entry] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._buffer or self._stopping)
            if not self._buffer:
                return None
            deadline = time.monotonic() + BATCH_SECONDS
            while len(self._buffer) < BATCH_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    break
            batch = [self._buffer.popleft() for _ in range(min(BATCH_SIZE, len(self._buffer)))]
            self._in_flight = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                connection.close()
                return
            delay = RETRY_FIRST_SECONDS
            while True:
                try:
                    close_old_connections()
                    _insert_batch(batch)
                    break
                except Exception:  # noqa: BLE001 - any failure: keep the batch, retry after a pause
                    self.failures += 1
                    logger.warning("audit writer: batch of %d records not written, retrying in %.2f s",
                                   len(batch), delay, exc_info=True)
                    try:
                        connection.close()
                    except Exception:  # noqa: BLE001 - a dead connection may fail to close too
                        pass
                    time.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
            with self._cond:
                self.written += len(batch)
                self._in_flight = 0
                self._cond.notify_all()


_WRITER: _Writer | None = None
_WRITER_LOCK = threading.Lock()


def _writer() -> _Writer:
    """The writer of this process, started on first use: gunicorn and Celery's prefork pool fork
    after import, and a thread does not survive a fork, so a child starts its own (with an empty
    buffer: what the parent had queued is the parent's to write)."""
    global _WRITER
    writer = _WRITER
    if writer is not None and writer.pid == os.getpid():
        return writer
    with _WRITER_LOCK:
        if _WRITER is None or _WRITER.pid != os.getpid():
            _WRITER = _Writer()
        return _WRITER


def _forget_after_fork() -> None:
    """In a forked child: no writer yet, and a lock no thread of the parent can still hold."""
    global _WRITER, _WRITER_LOCK
    _WRITER = None
    _WRITER_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(stop)
