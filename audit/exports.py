"""Where the export to each Audit Record Repository stands: its cursor and its backlog.

Read by the exporter (``audit_export.run``), the monitoring console, the alarm and /metrics, so
that "backlog" means the same everywhere: the records not yet exported (``seq`` after the
cursor, and those the sealer has not reached yet, which get a later ``seq``) and the age of the
oldest of them by ``occurred_at``.  Counts and times only: nothing here reads record content.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count, Min, Q
from django.utils import timezone

from audit.models import AuditExport, AuditRecord


@dataclass(frozen=True)
class Backlog:
    records: int
    oldest_at: dt.datetime | None

    def age_seconds(self, now: dt.datetime | None = None) -> float | None:
        if self.oldest_at is None:
            return None
        return max(((now or timezone.now()) - self.oldest_at).total_seconds(), 0.0)


def backlog(last_seq: int) -> Backlog:
    """The records after ``last_seq`` (sealed or not yet sealed) and the time of the oldest."""
    agg = AuditRecord.records.filter(Q(seq__gt=last_seq) | Q(seq__isnull=True)).aggregate(
        n=Count("id"), oldest=Min("occurred_at"))
    return Backlog(agg["n"], agg["oldest"])


def repositories() -> list[AuditExport]:
    """Every repository the trail has been exported to (one cursor each), by name."""
    return list(AuditExport.objects.order_by("name"))


def lowest_cursor() -> int | None:
    """The lowest cursor of all repositories (None: no export): the retention purge keeps every
    record after it, so that no record leaves the trail before it reached each repository."""
    return AuditExport.objects.aggregate(low=Min("last_seq"))["low"]
