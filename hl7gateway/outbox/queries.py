"""What the operator sees of the outbox: per destination, the queue depth, the age of the
oldest undelivered message, failures and the last delivery (the interfaces page, monitoring)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from hl7gateway.models.outbound import DELIVERED, FAILED, PENDING, OutboundDestination, OutboundMessage


@dataclass
class DestinationSummary:
    destination: OutboundDestination
    pending: int
    failed: int
    delivered: int
    oldest_undelivered_at: datetime | None
    last_delivered_at: datetime | None

    @property
    def queue_depth(self) -> int:
        return self.pending + self.failed

    @property
    def oldest_age_seconds(self) -> float | None:
        if self.oldest_undelivered_at is None:
            return None
        return (timezone.now() - self.oldest_undelivered_at).total_seconds()


def destination_summaries() -> list[DestinationSummary]:
    """Per destination: queue depth, the oldest undelivered message, failures (one query)."""
    rows = OutboundDestination.objects.annotate(
        n_pending=Count("messages", filter=Q(messages__status=PENDING)),
        n_failed=Count("messages", filter=Q(messages__status=FAILED)),
        n_delivered=Count("messages", filter=Q(messages__status=DELIVERED)),
        oldest=Min("messages__created_at", filter=Q(messages__status__in=[PENDING, FAILED])),
    ).order_by("name")
    last = dict(
        OutboundMessage.objects.filter(status=DELIVERED).values("destination_id")
        .annotate(last=Max("delivered_at")).values_list("destination_id", "last")
    )
    return [
        DestinationSummary(d, d.n_pending, d.n_failed, d.n_delivered, d.oldest, last.get(d.pk)) for d in rows
    ]
