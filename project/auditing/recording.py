"""The entry points that record an audit message (DICOM PS3.15 A.5.1), for every app; the ``audit``
app does the writing and registers itself here in its ``AppConfig.ready`` (:func:`register`).

- :func:`record`: now, on the current connection, inside the caller's transaction, so that a change
  and its record commit or roll back together (changes: actions C, U, D).
- :func:`record_soon`: handed to the recorder's writer thread, off the caller's critical path (reads).
- :func:`prepare` and :func:`record_prepared`: check records now and write those of one transaction
  together before it commits (the HL7 intake: one statement per message).

The arguments are those of ``audit.trail.record``.  With no recorder registered (the ``audit`` app
not installed, or a record made before Django has started) every entry point raises
ImproperlyConfigured: a change of patient data is never left unrecorded without an error, and
raised inside the change's transaction, the change rolls back with it.
"""

from __future__ import annotations

from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured


class Recorder(Protocol):
    """What the audit trail provides (``audit.trail``)."""

    def record(self, event_id, **kwargs) -> Any: ...

    def record_soon(self, event_id, **kwargs) -> None: ...

    def prepare(self, event_id, **kwargs) -> Any: ...

    def record_prepared(self, entries: list, *, cursor=None) -> None: ...


_recorder: Recorder | None = None


def register(recorder: Recorder) -> None:
    """Make ``recorder`` write every record from now on (the ``audit`` app, at start)."""
    global _recorder
    _recorder = recorder


def registered() -> Recorder | None:
    return _recorder


def _current() -> Recorder:
    recorder = _recorder
    if recorder is None:
        raise ImproperlyConfigured(
            "no audit recorder is registered: the audit app (audit.apps.AuditConfig) must be in "
            "INSTALLED_APPS and Django set up before patient data is read or changed"
        )
    return recorder


def record(event_id, **kwargs) -> Any:
    """Write a record now, in the caller's transaction; the record (None with AUDIT_ENABLED off)."""
    return _current().record(event_id, **kwargs)


def record_soon(event_id, **kwargs) -> None:
    """Hand a record to the writer thread (reads); nothing is dropped when its buffer is full."""
    _current().record_soon(event_id, **kwargs)


def prepare(event_id, **kwargs) -> Any:
    """Check a record's arguments (ValueError names the bad one) and build it without writing it."""
    return _current().prepare(event_id, **kwargs)


def record_prepared(entries: list, *, cursor=None) -> None:
    """Write prepared records now, inside the caller's transaction; ``cursor`` a cursor factory on
    the same connection."""
    _current().record_prepared(entries, cursor=cursor)
