"""The outbound delivery operator pages (ORU^R01, HL7 v2.5.1 chapter 7; order status, IHE RAD-3;
charges, IHE RAD-35).

Per destination: queue depth, age of the oldest undelivered message, failures with their
reason; per message: the bytes sent, every attempt, the status history; retry and cancel,
recorded with who did it and why.  The charges page shows the DFT^P03 rows per order: posted
(acknowledged), pending and failed charges and credits, with the same retry.  Administrators only.  The views translate requests
into ``hl7gateway.outbox`` calls; the rules live there.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Max, OuterRef, Q, Subquery
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.models.outbound import CHARGE, DELIVERED, FAILED, PENDING
from hl7gateway.outbox import actions, queries
from hl7gateway.outbox.queue import blocking_message
from hl7gateway.outbox.rules import ENTITY
from project.access import ADMINISTRATOR, roles
from project.auditing import web as web_audit
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
    if target == "charges":
        return HttpResponseRedirect(reverse("interfaces:charges"))
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


#: The charges page's filter: what billing has (acknowledged), what is on its way, what failed.
CHARGE_FILTERS = {"posted": [DELIVERED], "pending": [PENDING], "failed": [FAILED]}


@roles(ADMINISTRATOR)
@require_GET
def charges(request):
    """Charges posted to billing (DFT^P03, IHE RAD-35), per order: each charge and credit per
    destination with its FT1-6, FT1-2 and delivery status; a failed one can be retried (the
    outbox's retry, same MSH-10 and FT1-2)."""
    state = request.GET.get("state", "")
    q = request.GET.get("q", "").strip()
    rows = OutboundMessage.objects.filter(kind=CHARGE)
    if q:
        rows = rows.filter(accession_number=q)
    if state in CHARGE_FILTERS:
        # An order is listed when one of its charges is in that state; all its charges are shown.
        rows = OutboundMessage.objects.filter(
            kind=CHARGE, requested_procedure_id__in=rows.filter(status__in=CHARGE_FILTERS[state])
            .values("requested_procedure_id"))
    orders = rows.values("requested_procedure_id").annotate(last=Max("id")).order_by("-last")
    page = Paginator(orders, PAGE_SIZE).get_page(request.GET.get("page"))
    ids = [o["requested_procedure_id"] for o in page.object_list]
    shown = list(OutboundMessage.objects.filter(kind=CHARGE, requested_procedure_id__in=ids)
                 .select_related("destination", "requested_procedure").defer("payload", "ack")
                 .order_by("id"))
    by_order: dict[int, list[OutboundMessage]] = {i: [] for i in ids}
    for m in shown:
        by_order[m.requested_procedure_id].append(m)
    groups = [{"procedure": ms[0].requested_procedure, "accession": ms[0].accession_number,
               "patient": ms[0].patient_id_text, "messages": ms} for ms in by_order.values() if ms]
    totals = {r["status"]: r["n"] for r in OutboundMessage.objects.filter(kind=CHARGE).values("status")
              .annotate(n=Count("id"))}
    # Query (PS3.15 A.5.3.10): the orders listed carry PID-3; the patients they name, and the filter.
    web_audit.query(request, patients=[p for m in shown for p in ris_auditing.patients_of(m)],
                   criteria={"state": state, "q": q, "page": request.GET.get("page", "")}, shown=len(shown))
    return render(request, "hl7gateway/charges.html", {
        "groups": groups,
        "page": page,
        "totals": {"posted": totals.get(DELIVERED, 0), "pending": totals.get(PENDING, 0),
                   "failed": totals.get(FAILED, 0)},
        "filters": {"state": state, "q": q},
        "states": list(CHARGE_FILTERS),
    })
