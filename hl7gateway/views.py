"""The outbound delivery operator page (ORU^R01, HL7 v2.5.1 chapter 7).

Per destination: queue depth, age of the oldest undelivered message, failures with their
reason; per message: the bytes sent, every attempt, the status history; retry and cancel,
recorded with who did it and why.  Administrators only.  The views translate requests
into ``hl7gateway.outbox`` calls; the rules live there.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import OuterRef, Q, Subquery
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit import web as web_audit
from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.models.outbound import FAILED, PENDING
from hl7gateway.outbox import actions, queries
from hl7gateway.outbox.queue import blocking_message
from hl7gateway.outbox.rules import ENTITY
from project.access import ADMINISTRATOR, roles
from ris import auditing as ris_auditing
from ris.errors import DomainError
from ris.services.transitions import history

PAGE_SIZE = 50
PROBLEMS_SHOWN = 200


def age(seconds: float | None) -> str:
    """A short human duration: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return ""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _with_blocker(qs):
    earliest_blocker = (
        OutboundMessage.objects.filter(
            destination_id=OuterRef("destination_id"), patient_id=OuterRef("patient_id"), id__lt=OuterRef("id"),
            status__in=[PENDING, FAILED],
        )
        .order_by("id")
        .values("message_control_id")[:1]
    )
    return qs.annotate(blocked_by=Subquery(earliest_blocker))


@roles(ADMINISTRATOR)
@require_GET
def outbound(request):
    """Summary per destination, the messages that need attention, and a filtered list of all."""
    summaries = queries.destination_summaries()
    for s in summaries:
        s.oldest_age = age(s.oldest_age_seconds)
    # Failed; pending after a failed attempt; pending and held behind an undelivered message.
    problems = (
        _with_blocker(OutboundMessage.objects.select_related("destination").defer("payload", "ack")
                      .filter(status__in=[FAILED, PENDING]))
        .filter(Q(status=FAILED) | ~Q(last_outcome__in=["", "SENDING"]) | Q(blocked_by__isnull=False))
        .order_by("status", "id")
    )[:PROBLEMS_SHOWN]
    status = request.GET.get("status", "")
    destination = request.GET.get("destination", "")
    q = request.GET.get("q", "").strip()
    rows = _with_blocker(OutboundMessage.objects.select_related("destination").defer("payload", "ack"))
    if status in {s for s, _ in OutboundMessage.STATUS_CHOICES}:
        rows = rows.filter(status=status)
    if destination.isdigit():
        rows = rows.filter(destination_id=int(destination))
    if q:
        rows = rows.filter(message_control_id=q) | rows.filter(accession_number=q)
    page = Paginator(rows.order_by("-id"), PAGE_SIZE).get_page(request.GET.get("page"))
    problems = list(problems)
    shown = problems + list(page.object_list)
    # Query (PS3.15 A.5.3.10): the messages listed carry PID-3; the patients they name, and the filter.
    web_audit.query(request, patients=[p for m in shown for p in ris_auditing.patients_of(m)],
                   criteria={"status": status, "destination": destination, "q": q,
                             "page": request.GET.get("page", "")}, shown=len(shown))
    now = timezone.now()
    return render(
        request,
        "hl7gateway/outbound.html",
        {
            "summaries": summaries,
            "problems": problems,
            "page": page,
            "now": now,
            "destinations": OutboundDestination.objects.order_by("name"),
            "statuses": [s for s, _ in OutboundMessage.STATUS_CHOICES],
            "filters": {"status": status, "destination": destination, "q": q},
        },
    )


@roles(ADMINISTRATOR)
@require_GET
def outbound_detail(request, message_id: int):
    """One message: what was sent (the exact bytes), every attempt and ACK, actions, history."""
    message = get_object_or_404(OutboundMessage.objects.select_related("destination", "report_version"),
                                pk=message_id)
    # The ORU's bytes are the report with the patient's PID: Procedure Record R (PS3.15 A.5.3.15).
    web_audit.read(request, ris_auditing.EVENT_OF_MODEL["hl7gateway.outboundmessage"],
                  patients=ris_auditing.patients_of(message),
                  objects=[{"type": "accession", "id": message.accession_number},
                           {"type": "message", "id": message.message_control_id or str(message.pk)}])
    return render(
        request,
        "hl7gateway/outbound_detail.html",
        {
            "message": message,
            "segments": message.text.split("\r"),
            "attempts": message.attempts.order_by("number"),
            "actions": message.actions.all(),
            "history": history(ENTITY, message.pk),
            "blocked_by": blocking_message(message) if message.status == PENDING else None,
            "leased": bool(message.leased_until and message.leased_until > timezone.now()),
        },
    )


def _act(request, message_id: int, action) -> HttpResponseRedirect:
    reason = request.POST.get("reason", "").strip()
    try:
        row = action(message_id, request.user, reason)
    except DomainError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{row.message_control_id}: now {row.status.lower()}.")
    target = request.POST.get("next", "")
    if target != "list":
        return HttpResponseRedirect(reverse("interfaces:outbound_detail", args=[message_id]))
    return HttpResponseRedirect(reverse("interfaces:outbound"))


@roles(ADMINISTRATOR)
@require_POST
def outbound_retry(request, message_id: int):
    """Send a failed message again (same MSH-10); recorded with the user and the reason."""
    return _act(request, message_id, actions.retry)


@roles(ADMINISTRATOR)
@require_POST
def outbound_cancel(request, message_id: int):
    """Give up a pending or failed message; recorded with the user and the reason."""
    return _act(request, message_id, actions.cancel)
