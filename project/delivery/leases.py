"""Leases on queue rows: a worker takes a row until a point in time; after it the row is free.

A lease is a nullable timestamp column (``Transfer.lease_expires_at``,
``OutboundMessage.leased_until``).  A worker takes a row by writing ``now + seconds`` under the
row's lock, renews it while it makes progress, and releases it (``None``) in the same write
that records the outcome.  A worker that dies leaves a lease that runs out: the row is free again and the sweep
or the next task takes it, so nothing is lost and nothing is sent twice at the same time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q, QuerySet


def until(now: datetime, seconds: float) -> datetime:
    """The end of a lease taken (or renewed) at ``now`` for ``seconds``."""
    return now + timedelta(seconds=seconds)


def held(leased_until: datetime | None, now: datetime) -> bool:
    """Whether a lease is still running (someone holds the row)."""
    return leased_until is not None and leased_until > now


def free(field: str, now: datetime) -> Q:
    """Rows nobody holds: never leased, released, or whose lease ran out."""
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__lte": now})


def expired(field: str, now: datetime) -> Q:
    """Rows whose lease ran out (taken once, never released: the worker died)."""
    return Q(**{f"{field}__lte": now})


def renew(rows: QuerySet, field: str, now: datetime, seconds: float) -> int:
    """Extend the lease of ``rows`` (a worker still making progress).  Returns the rows updated."""
    return rows.update(**{field: until(now, seconds)})

