"""The operator's console, one accession's journey and replays, under /monitoring/.

Thin views: the figures come from ``monitoring.selectors`` (the same functions as the alarms
and /metrics), the journey from ``monitoring.journey``, the replays from ``monitoring.replay``.
Administrators only (``project.access``).  Charts are inline SVG drawn here, server-side.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from hl7gateway.views import age
from monitoring import journey as journey_mod
from monitoring import models as alarm_kinds
from monitoring import replay, selectors, services
from monitoring.records import ReplayRecord
from project.access import ADMINISTRATOR, roles
from project.auditing import web as web_audit
from ris import auditing as ris_auditing
from ris.errors import DomainError


def sparkline(values: list[int], *, width: int = 144, height: int = 28) -> str:
    """An inline SVG of counts per hour (oldest left): one bar per hour, its count as a tooltip."""
    n = max(len(values), 1)
    top = max(values or [0]) or 1
    bar = width / n
    parts = [f'<svg class="spark" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'aria-label="per hour, last {n} hours: {sum(values)} in all">']
    for i, v in enumerate(values):
        h = 0 if not v else max(1.5, (height - 2) * v / top)
        parts.append(format_html('<rect x="{}" y="{}" width="{}" height="{}" fill="#3b6ea5"><title>{}</title></rect>',
                                 f"{i * bar + 0.5:.1f}", f"{height - h:.1f}", f"{max(bar - 1, 1):.1f}", f"{h:.1f}",
                                 f"{v} ({n - i - 1} h ago)"))
    parts.append(f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#9aa7b5"/></svg>')
    return mark_safe("".join(parts))  # noqa: S308 - every value above is a number or escaped by format_html


# Where the console shows what an alarm of each kind is about (an anchor of the page).
ALARM_ANCHORS = {
    alarm_kinds.INBOUND_SILENCE: "iface-hl7_in", alarm_kinds.HL7_REFUSED: "iface-hl7_in",
    alarm_kinds.OUTBOUND_BACKLOG: "iface-hl7_out",
    alarm_kinds.DICOM_REFUSED: "iface-dicom", alarm_kinds.AUDIT_BACKLOG: "iface-audit",
    alarm_kinds.UNMATCHED_STUDY: "unmatched", alarm_kinds.TRANSFER_FAILED: "failed-transfers",
    alarm_kinds.MODALITY_SILENT: "modality-silent", alarm_kinds.COMMITMENT_UNANSWERED: "commitment-unanswered",
    alarm_kinds.STAT_UNREAD: "stat-unread", alarm_kinds.ORU_UNDELIVERED: "oru-undelivered",
}


def _with_age(alarms: list, now) -> list:
    for a in alarms:
        a.age = age(((a.cleared_at or now) - a.opened_at).total_seconds())
        a.anchor = ALARM_ANCHORS.get(a.rule.kind, "")
    return alarms


def dangling(now) -> dict[str, dict]:
    """The hand-offs left dangling, per check: its items (each with its age) and its limit."""
    out = {}
    for kind in alarm_kinds.SETTING_THRESHOLDS:
        items = services.dangling(kind, now, limit=200)
        for item in items:
            item["age"] = age(item["age_seconds"])
        out[kind] = {"rows": items, "limit": services.setting_threshold(kind)}
    return out


def _rows(interfaces: list[dict]) -> list[dict]:
    for row in interfaces:
        row["chart"] = sparkline(row["per_hour"])
        row["total_24h"] = sum(row["per_hour"])
        row["oldest_age"] = age(row.get("oldest_age_seconds"))
    return interfaces


@roles(ADMINISTRATOR)
def console(request):
    """Every interface: last message, per hour (24 h), errors, queue depth and oldest age; unmatched
    studies, failed transfers and deliveries, the hand-offs left dangling (silent modalities,
    unanswered storage commitments, unread STAT studies, final reports without ORU), open and
    recent alarms, each with its age and a link to what it is about."""
    now = timezone.now()
    groups = [
        ("Inbound HL7 (per sending application^facility)", "hl7_in", _rows(selectors.inbound_interfaces(now))),
        ("Outbound HL7 ORU (per destination)", "hl7_out", _rows(selectors.outbound_interfaces(now))),
        ("DICOM (per calling AE title)", "dicom", _rows(selectors.dicom_interfaces(now))),
        ("VNA routing (per destination)", "vna", _rows(selectors.vna_interfaces(now))),
        ("Audit Record Repository (audit trail export, per repository)", "audit",
         _rows(selectors.audit_interfaces(now))),
    ]
    unmatched = selectors.unmatched_studies(now)
    for s in unmatched:
        s["age"] = age(s["age_seconds"])
    alarms = selectors.console_alarms(now)
    stuck = dangling(now)
    return render(request, "monitoring/console.html", {
        "now": now, "groups": groups, "unmatched": unmatched,
        "silent_modalities": stuck[alarm_kinds.MODALITY_SILENT],
        "unanswered_commitments": stuck[alarm_kinds.COMMITMENT_UNANSWERED],
        "unread_stat": stuck[alarm_kinds.STAT_UNREAD], "undelivered_reports": stuck[alarm_kinds.ORU_UNDELIVERED],
        "failed_transfers": selectors.failed_transfers(), "failed_deliveries": selectors.failed_deliveries(),
        "open_alarms": _with_age(alarms["open"], now), "recent_alarms": _with_age(alarms["recent"], now),
        "failed_inbound_count": replay.failed_inbound_count(),
    })


@roles(ADMINISTRATOR)
def journey(request):
    """``?accession=...`` (one timeline) or ``?patient_id=...`` (a timeline per accession of the patient)."""
    accession = request.GET.get("accession", "").strip()
    patient_id = request.GET.get("patient_id", "").strip()
    now = timezone.now()
    limits = journey_mod.thresholds()
    accessions: list[str] = []
    if accession:
        accessions = [accession]
    elif patient_id:
        accessions = journey_mod.accessions_of_patient(patient_id)
    journeys = []
    for acc in accessions:
        rows = journey_mod.collect(acc)
        steps = journey_mod.timeline(rows, now=now, vna_overdue=limits["vna_overdue"],
                                     oru_ack_overdue=limits["oru_ack_overdue"])
        if rows.procedure is None and not steps:
            continue
        journeys.append({"accession": acc, "procedure": rows.procedure, "steps": steps,
                         "overdue": sum(1 for s in steps if s.overdue)})
    if accession or patient_id:
        # Query (PS3.15 A.5.3.10): what was asked and the patients whose studies were shown.
        shown = [j["procedure"] for j in journeys if j["procedure"] is not None]
        web_audit.query(request, patients=[p for rp in shown for p in ris_auditing.patients_of(rp)]
                       + ([(patient_id, "")] if patient_id and journeys else []),
                       criteria={"accession": accession, "patient_id": patient_id}, shown=len(journeys))
    return render(request, "monitoring/journey.html", {
        "accession": accession, "patient_id": patient_id, "journeys": journeys, "now": now,
        "searched": bool(accession or patient_id),
        "limit_minutes": {"vna": int(limits["vna_overdue"].total_seconds() // 60),
                          "oru": int(limits["oru_ack_overdue"].total_seconds() // 60)},
    })


@roles(ADMINISTRATOR)
def replays(request):
    """Failed inbound messages and failed ORU deliveries, each with a replay form; the record of replays."""
    failed_inbound = replay.failed_inbound()
    records = list(ReplayRecord.objects.select_related("inbound", "replay", "outbound")[:100])
    messages_shown = failed_inbound + [m for r in records for m in (r.inbound, r.replay, r.outbound) if m is not None]
    web_audit.query(request, patients=[p for m in messages_shown for p in ris_auditing.patients_of(m)],
                   criteria={"list": "replays"}, shown=len(messages_shown))
    return render(request, "monitoring/replays.html", {
        "failed_inbound": failed_inbound, "failed_deliveries": selectors.failed_deliveries(),
        "records": records,
    })


def _act(request, action, message_id: int) -> HttpResponseRedirect:
    try:
        record = action(message_id, request.user, request.POST.get("reason", ""))
    except DomainError as exc:
        messages.error(request, f"Not replayed: {exc}")
    else:
        messages.success(request, f"Replayed ({record.get_kind_display()}): {record.outcome}")
    return HttpResponseRedirect(reverse("monitoring:replays"))


@roles(ADMINISTRATOR)
@require_POST
def replay_inbound(request, message_id: int):
    """Reprocess a failed inbound message (a new row with replay_of; the original unchanged)."""
    return _act(request, replay.reprocess_inbound, message_id)


@roles(ADMINISTRATOR)
@require_POST
def replay_outbound(request, message_id: int):
    """Resend a failed ORU (the outbox's retry: same bytes, same MSH-10)."""
    return _act(request, replay.resend_outbound, message_id)
