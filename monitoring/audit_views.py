"""The audit page (/audit/): search the audit trail, one record, "who saw this patient", CSV export.

For privacy officers and administrators only (``project.access``).  The queries are
``audit.search``'s; the page lives here rather than in the audit app because the audit app
imports nothing of ours, and the role gate is ``project.access``.  Patients are shown as the trail
names them (ID and issuer), without demographics.

Using the page is itself on the trail (DICOM PS3.15 A.5.3.2 Audit Log Used, action R): each
search, record, "who saw" list and export writes a record with what was asked, through
``record_soon`` (a read, off the request's path).  The chain's state comes from the last
verification kept by the periodic ``audit.verify`` (``audit.chain.check``): verifying the whole
chain on every view would cost a scan of the whole trail.
"""

from __future__ import annotations

import csv
import datetime as dt

from django.conf import settings
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit import chain, trail
from audit.models import AuditPatient, AuditRecord
from audit.search import (
    CSV_COLUMNS,
    WHO_SAW_DEFAULT_DAYS,
    Criteria,
    CriteriaError,
    csv_row,
    event_meaning,
    search,
    who_saw,
)
from project.access import ADMINISTRATOR, PRIVACY_OFFICER, roles
from project.auditing import events
from project.https import client_address

PAGE_SIZE = 50
AUDITORS = (PRIVACY_OFFICER, ADMINISTRATOR)


def _audit_use(request, view: str, patients=(), **detail) -> None:
    """The page's own use, on the trail: who looked at the audit log, from where, asking what, and
    the patients whose identifiers the answer showed (a look at a patient's audit history is a
    look at the patient: it is listed under "who saw" too)."""
    trail.record_soon(events.AUDIT_LOG_USED, action=events.READ, actor=request.user.get_username(),
                      actor_kind=events.USER, source_address=client_address(request), patients=patients,
                      detail={"view": view, **detail})


def _patients_of(records) -> list[tuple[str, str]]:
    return list(dict.fromkeys((str(o.get("id")), str(o.get("issuer") or "")) for r in records for o in r.objects or ()
                              if isinstance(o, dict) and o.get("type") == "patient" and o.get("id")))


def _page_number(request) -> int:
    try:
        return max(1, int(request.GET.get("page", "1")))
    except ValueError:
        return 1


def _chain_status() -> dict:
    """The last verification kept, the records still waiting for the sealer, the retention and
    the last purge (its anchor record)."""
    return {
        "check": chain.last_check(),
        "unsealed": AuditRecord.records.filter(seq__isnull=True).count(),
        "retention_days": settings.AUDIT_RETENTION_DAYS,
        "last_purge": (AuditRecord.records.filter(event_id=events.AUDIT_LOG_USED.value, action=events.DELETE)
                       .order_by("-id").first()),
    }


def _row(record: AuditRecord) -> dict:
    return {
        "record": record,
        "event": event_meaning(record.event_id, record.event_type),
        "action": events.ACTIONS.get(record.action, record.action),
        "outcome": events.OUTCOMES.get(record.outcome, record.outcome),
        "patients": [o for o in record.objects or () if isinstance(o, dict) and o.get("type") == "patient"],
        "objects": [o for o in record.objects or () if isinstance(o, dict) and o.get("type") != "patient"],
    }


def _form_context(request) -> dict:
    return {"event_choices": sorted(events.EVENT_IDS.items()), "outcome_choices": sorted(events.OUTCOMES.items()),
            "query": request.GET}


@roles(*AUDITORS)
@require_GET
def search_page(request):
    """Search by patient, actor, AE title, event, outcome and period; newest first, PAGE_SIZE a
    page (no total count: counting a large trail on every page would be the slow part)."""
    context = {**_form_context(request), **_chain_status(), "rows": [], "error": ""}
    try:
        criteria = Criteria.from_query(request.GET)
    except CriteriaError as exc:
        context["error"] = str(exc)
        return render(request, "audit/search.html", context, status=400)
    page = _page_number(request)
    start = (page - 1) * PAGE_SIZE
    records = list(search(criteria)[start:start + PAGE_SIZE + 1])
    _audit_use(request, "search", patients=_patients_of(records[:PAGE_SIZE]), criteria=criteria.as_detail(),
               page=page)
    query = request.GET.copy()
    query.pop("page", None)
    context.update({
        "criteria": criteria, "rows": [_row(r) for r in records[:PAGE_SIZE]], "page": page,
        "has_next": len(records) > PAGE_SIZE, "has_previous": page > 1, "query_string": query.urlencode(),
    })
    return render(request, "audit/search.html", context)


@roles(*AUDITORS)
@require_GET
def record_page(request, record_id: int):
    """One record: participants, objects, detail, its place in the chain, sealed or not."""
    record = AuditRecord.records.filter(pk=record_id).first()
    if record is None:
        raise Http404("no such audit record")
    _audit_use(request, "record", patients=_patients_of([record]), record_id=record_id)
    return render(request, "audit/record.html", {"row": _row(record), "record": record})


def _period(request) -> tuple[dt.datetime, dt.datetime, dict]:
    """The "who saw" period: date_from / date_to (local days, both included), else the last
    WHO_SAW_DEFAULT_DAYS days."""
    criteria = Criteria.from_query({k: request.GET.get(k, "") for k in ("date_from", "date_to")})
    today = timezone.localdate()
    first = criteria.date_from or today - dt.timedelta(days=WHO_SAW_DEFAULT_DAYS)
    last = criteria.date_to or today
    if first > last:
        raise CriteriaError("date_from: after date_to")
    start = timezone.make_aware(dt.datetime.combine(first, dt.time.min))
    end = timezone.make_aware(dt.datetime.combine(last + dt.timedelta(days=1), dt.time.min)) - dt.timedelta(
        microseconds=1)
    return start, end, {"date_from": first, "date_to": last}


@roles(*AUDITORS)
@require_GET
def who_saw_page(request):
    """For one patient (ID and, optionally, issuer) over a period: every actor who read, changed
    or sent the patient's data, with when, from where and what."""
    patient_id = request.GET.get("patient_id", "").strip()
    issuer = request.GET.get("issuer", "").strip()
    context = {"patient_id": patient_id, "issuer": issuer, "sightings": [], "error": "", "searched": False}
    try:
        start, end, shown = _period(request)
    except CriteriaError as exc:
        context["error"] = str(exc)
        return render(request, "audit/who_saw.html", context, status=400)
    context.update(shown)
    if patient_id:
        sightings = who_saw(patient_id, issuer, start=start, end=end)
        _audit_use(request, "who_saw", patients=[(patient_id, issuer)], criteria={"patient_id": patient_id, "issuer": issuer,
                                                 "date_from": shown["date_from"].isoformat(),
                                                 "date_to": shown["date_to"].isoformat()})
        actors = sorted({(s.actor_kind, s.actor) for s in sightings})
        context.update({"sightings": sightings, "actors": actors, "searched": True})
    return render(request, "audit/who_saw.html", context)


class _Echo:
    """A file-like object whose write returns the line (csv.writer into a streaming response)."""

    def write(self, value):
        return value


@roles(*AUDITORS)
@require_GET
def export_csv(request):
    """The search's records as CSV (UTF-8, newest first, every page), streamed."""
    try:
        criteria = Criteria.from_query(request.GET)
    except CriteriaError as exc:
        context = {**_form_context(request), **_chain_status(), "rows": [], "error": str(exc)}
        return render(request, "audit/search.html", context, status=400)
    # Every patient the file names, recorded before the first line leaves: the export is a look
    # at each of them (listed under "who saw" for each).
    named = list(AuditPatient.objects.filter(record__in=search(criteria).values("pk"))
                 .values_list("patient_id", "issuer").distinct())
    _audit_use(request, "export", patients=named, criteria=criteria.as_detail(), patients_named=len(named))
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(CSV_COLUMNS)
        for record in search(criteria).iterator(chunk_size=2000):
            yield writer.writerow(csv_row(record))

    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    return response
