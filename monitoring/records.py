"""Records for the accession journey and for replays; imported by ``monitoring.models``.

``WorklistQueryResult``: which scheduled step the Modality Worklist (PS3.4 K.4.1) returned to
which calling AE, first and last time: one row per step and AE, upserted in one statement per
query that returned items (``monitoring.receivers``, on ``pacs.signals.worklist_items_returned``),
so that "the MWL returned it to which modality" can be answered per accession.

``ReplayRecord``: an administrator reprocessed a failed inbound message or resent a failed
outbound ORU: who, when, why, and what came of it.  The original row is never changed: an
inbound replay is a new ``InboundMessage`` with ``replay_of`` set; an outbound resend goes
through ``hl7gateway.outbox.actions.retry`` (same bytes, same MSH-10), which also writes its own
``OutboundAction``.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import models
from django.utils import timezone

log = logging.getLogger("monitoring.records")


class WorklistQueryResult(models.Model):
    """A scheduled step returned by the MWL to a calling AE: first and last time (one row per pair,
    so a modality polling every minute adds no rows, only moves ``last_returned_at``)."""

    scheduled_step = models.ForeignKey("ris.ScheduledProcedureStep", on_delete=models.CASCADE, related_name="+")
    calling_ae_title = models.CharField(max_length=16, blank=True)
    first_returned_at = models.DateTimeField()
    last_returned_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scheduled_step", "calling_ae_title"], name="uniq_mwl_result_step_ae")
        ]

    def __str__(self) -> str:
        return f"MWL step {self.scheduled_step_id} -> {self.calling_ae_title}"


class ReplayRecord(models.Model):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    KIND_CHOICES = [(INBOUND, "inbound HL7 reprocessed"), (OUTBOUND, "outbound ORU resent")]

    kind = models.CharField(max_length=10, choices=KIND_CHOICES)
    inbound = models.ForeignKey("hl7gateway.InboundMessage", null=True, blank=True, on_delete=models.PROTECT,
                                related_name="+", help_text="the original (unchanged)")
    replay = models.ForeignKey("hl7gateway.InboundMessage", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="+", help_text="the new row (replay_of = the original)")
    outbound = models.ForeignKey("hl7gateway.OutboundMessage", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150, help_text="kept if the account is deleted")
    reason = models.CharField(max_length=500)
    at = models.DateTimeField(auto_now_add=True)
    outcome = models.CharField(max_length=255, blank=True, help_text="e.g. APPLIED / AA, or now pending")

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.kind} replay by {self.username} at {self.at:%Y-%m-%d %H:%M}"


def record_worklist_results(step_ids: list[int], calling_ae_title: str) -> None:
    """Upsert one ``WorklistQueryResult`` per returned step in one statement (on a DIMSE database
    thread, after a Modality Worklist C-FIND).  A failure is logged and does not fail the answer."""
    now = timezone.now()
    try:
        WorklistQueryResult.objects.bulk_create(
            [WorklistQueryResult(scheduled_step_id=pk, calling_ae_title=calling_ae_title[:16], first_returned_at=now,
                                 last_returned_at=now) for pk in sorted(set(step_ids))],
            update_conflicts=True, unique_fields=["scheduled_step", "calling_ae_title"],
            update_fields=["last_returned_at"])
    except Exception as exc:  # noqa: BLE001 - the worklist answer goes out whatever happens here
        log.warning(
            "MWL results not recorded for the journey", extra={"calling_ae_title": calling_ae_title,
                                                               "error": str(exc)[:200]})
