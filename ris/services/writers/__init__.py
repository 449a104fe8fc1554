"""Readers and writers of the plans of ``ris.services.plans``, one module per database kind.

``postgres``: the hot path of the HL7 intake on PostgreSQL -- one lookup statement reads what a
plan needs, one INSERT chain writes a new order, all prepared through ``ris.services.pg``.
``orm``: Django's ORM, for SQLite (the embedded default) and for PostgreSQL when
``SQL_FAST_PATH`` is off (the tests run both).  Both take the same plan; neither decides.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from django.db import connection

from ris.services.writers import orm, postgres
from ris.services.writers.base import Conflict, lock_identity

__all__ = ["SQL_FAST_PATH", "Conflict", "current", "decide_and_write", "lock_identity", "orm", "postgres"]

# The PostgreSQL statements on PostgreSQL; tests switch them off to run the ORM writer as well.
SQL_FAST_PATH = True


def current() -> ModuleType:
    """The reader and writer for the default connection."""
    return postgres if SQL_FAST_PATH and connection.vendor == "postgresql" else orm


def decide_and_write(read: Callable, decide: Callable, write: Callable) -> tuple:
    """``decide(read())`` then ``write`` the plan: (plan, what the writer returns).

    When another connection registered the plan's new patient in between (``Conflict``, raised
    before anything was written) the database is read and the plan decided once more."""
    try:
        plan = decide(read())
        return plan, write(plan)
    except Conflict:
        plan = decide(read())
        return plan, write(plan)
