"""Figures of every interface, read from the database: one function per figure.

The alarms (``monitoring.services``), the metrics (``monitoring.metrics``) and the
operator's console read the same functions, so a number means the same everywhere.
Interfaces and their keys:

- inbound HL7 per sender: ``"MSH-3^MSH-4"`` (``InboundMessage``; errors = AE/AR answered);
  messages the sender policy refused are not the sender's traffic (anyone can write any MSH-3)
  and count apart, per source address (``InboundRefusal``, ``inbound_refusals``);
- outbound HL7 per destination: the destination name (``OutboundMessage``/``OutboundAttempt``;
  errors = attempts that did not end in AA; queue = PENDING and FAILED rows);
- DICOM per calling AE title (``monitoring.DicomOperation``, counted by the DIMSE handlers;
  errors = failure statuses);
- VNA routing per destination name (``Transfer``; errors = FAILED transfers; queue = open ones);
- DICOM associations refused per source address (``pacs.DicomRefusal``, counted by the
  association policy);
- the audit trail's export per Audit Record Repository, ``host:port`` (``audit.exports``: the
  cursor, the records after it and the age of the oldest);
- hand-offs left dangling in the department, one list per check, each item with its age and
  what to open: a declared modality silent while steps are scheduled for it (per AE title), a
  storage commitment request unanswered (per VNA destination), a STAT study unread (per
  modality), a final report whose ORU^R01 a destination has not acknowledged (per destination).

Every function takes ``now`` (default: ``timezone.now()``) so that tests can move time.
Nothing here returns a patient name.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from django.db.models import Count, Exists, Max, Min, OuterRef, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from audit import exports as audit_exports
from audit.models import AuditExport, AuditRecord
from hl7gateway.models import InboundMessage, InboundRefusal
from hl7gateway.models import outbound as ob
from hl7gateway.models.outbound import FAILED as ORU_FAILED
from hl7gateway.models.outbound import PENDING as ORU_PENDING
from hl7gateway.models.outbound import OutboundAttempt, OutboundDestination, OutboundMessage
from monitoring.models import Alarm, DicomOperation
from pacs.models import DicomNode, DicomRefusal, Study
from pacs.models import transfers as tr
from pacs.models.transfers import FAILED as TRANSFER_FAILED
from pacs.models.transfers import OPEN as TRANSFER_OPEN
from pacs.models.transfers import Transfer, VnaDestination
from ris import states
from ris.models import ScheduledProcedureStep, StatusChange
from ris.models.reports import KIND_FINAL, ReportVersion
from worklist.models import ReadingItem

HOURS = 24
HL7_ERROR_ACKS = ("AE", "AR", "CE", "CR")
# DIMSE statuses that are not failures (PS3.7 C): success, pending, cancel, warnings.
_DICOM_OK = Q(status__in=[0x0000, 0xFF00, 0xFF01, 0xFE00, 0x0107, 0x0116]) | Q(status__gte=0xB000, status__lte=0xBFFF)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or timezone.now()


def _hour_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def hour_buckets(now: dt.datetime | None = None) -> list[dt.datetime]:
    """The starts (UTC) of the last 24 hours, oldest first; the last one holds ``now``."""
    last = _hour_start(_now(now))
    return [last - dt.timedelta(hours=HOURS - 1 - i) for i in range(HOURS)]


def _series(rows, key_field: str, now: dt.datetime, value: str = "n") -> dict[str, list[int]]:
    """{key: [count per hour, oldest first]} from rows of (key, hour, n)."""
    buckets = hour_buckets(now)
    index = {b: i for i, b in enumerate(buckets)}
    out: dict[str, list[int]] = defaultdict(lambda: [0] * HOURS)
    for row in rows:
        i = index.get(_hour_start(row["hour"]))
        if i is not None:
            out[row[key_field]][i] += row[value] or 0
    return out


def _age_seconds(since: dt.datetime | None, now: dt.datetime) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


# --- inbound HL7, per sender ---------------------------------------------------------------

def admitted_inbound():
    """Inbound messages of the declared or admitted senders (not the ones refused by the policy)."""
    return InboundMessage.objects.exclude(status=InboundMessage.STATUS_REFUSED)


def sender_key(sending_application: str, sending_facility: str) -> str:
    return f"{sending_application}^{sending_facility}"


def _split_sender(key: str) -> tuple[str, str]:
    app, _, facility = key.partition("^")
    return app, facility


def inbound_last_message_at(key: str) -> dt.datetime | None:
    """Time of the last message received from the sender ``APP^FACILITY``."""
    app, facility = _split_sender(key)
    return (admitted_inbound().filter(sending_application=app, sending_facility=facility)
            .aggregate(last=Max("received_at"))["last"])


def inbound_senders() -> list[str]:
    """Every sender key ever seen."""
    rows = admitted_inbound().values_list("sending_application", "sending_facility").distinct()
    return sorted(sender_key(a, f) for a, f in rows)


def inbound_error_counts(key: str, since: dt.datetime) -> tuple[int, int]:
    """(errors, total) of messages from the sender since ``since``; errors = AE/AR answered."""
    app, facility = _split_sender(key)
    agg = admitted_inbound().filter(sending_application=app, sending_facility=facility,
                             received_at__gte=since).aggregate(
        total=Count("id"), errors=Count("id", filter=Q(ack_code__in=HL7_ERROR_ACKS)))
    return agg["errors"], agg["total"]


def inbound_interfaces(now: dt.datetime | None = None) -> list[dict]:
    """Per sender: last message time, messages per hour (24 h), ACK codes and errors (24 h).

    Inbound HL7 has no queue (a message is applied before its ACK), so depth and age are 0/None.
    """
    now = _now(now)
    since = hour_buckets(now)[0]
    base = admitted_inbound().filter(received_at__gte=since)
    hourly = (base.annotate(hour=TruncHour("received_at", tzinfo=dt.UTC))
              .values("sending_application", "sending_facility", "hour").annotate(n=Count("id")))
    series = _series(({"key": sender_key(r["sending_application"], r["sending_facility"]), "hour": r["hour"],
                       "n": r["n"]} for r in hourly), "key", now)
    acks: dict[str, dict[str, int]] = defaultdict(dict)
    for r in base.values("sending_application", "sending_facility", "ack_code").annotate(n=Count("id")):
        acks[sender_key(r["sending_application"], r["sending_facility"])][r["ack_code"] or "-"] = r["n"]
    last = {sender_key(r["sending_application"], r["sending_facility"]): r["last"] for r in
            admitted_inbound().values("sending_application", "sending_facility").annotate(last=Max("received_at"))}
    out = []
    for key in sorted(last):
        codes = acks.get(key, {})
        out.append({
            "kind": "hl7_in", "key": key, "last_message_at": last[key],
            "per_hour": series.get(key, [0] * HOURS), "ack_codes": codes,
            "errors_24h": sum(n for code, n in codes.items() if code in HL7_ERROR_ACKS),
            "queue_depth": 0, "oldest_age_seconds": None,
        })
    return out


def inbound_refused_total() -> int:
    """Inbound messages refused by the sender policy, all addresses, ever (counted per hour)."""
    return InboundRefusal.objects.aggregate(n=Sum("refused_count"))["n"] or 0


def inbound_refusals(since: dt.datetime, address: str = "") -> dict[str, dict]:
    """Per source address: inbound messages refused by the sender policy in the hours that had
    one since ``since`` (counted per hour by hl7gateway), with the last sender, type and reason."""
    rows = InboundRefusal.objects.filter(last_at__gte=since)
    if address:
        rows = rows.filter(source_address=address)
    out: dict[str, dict] = {}
    for row in rows.order_by("last_at"):
        entry = out.setdefault(row.source_address, {"count": 0})
        entry.update(count=entry["count"] + row.refused_count, last_at=row.last_at,
                     sender=sender_key(row.last_sending_application, row.last_sending_facility),
                     message_type=row.last_message_type, reason=row.last_reason)
    return out


# --- outbound HL7, per destination ---------------------------------------------------------

def outbound_backlog(name: str, now: dt.datetime | None = None) -> tuple[int, float | None]:
    """(undelivered messages, age in seconds of the oldest) for a destination; PENDING and FAILED."""
    now = _now(now)
    agg = OutboundMessage.objects.filter(destination__name=name, status__in=[ORU_PENDING, ORU_FAILED]).aggregate(
        n=Count("id"), oldest=Min("created_at"))
    return agg["n"], _age_seconds(agg["oldest"], now)


def outbound_error_counts(name: str, since: dt.datetime) -> tuple[int, int]:
    """(attempts not answered AA, attempts) for a destination since ``since``."""
    agg = OutboundAttempt.objects.filter(message__destination__name=name, started_at__gte=since).aggregate(
        total=Count("id"), errors=Count("id", filter=~Q(outcome="AA")))
    return agg["errors"], agg["total"]


def outbound_destinations() -> list[str]:
    return list(OutboundDestination.objects.order_by("name").values_list("name", flat=True))


def outbound_interfaces(now: dt.datetime | None = None) -> list[dict]:
    """Per destination: last delivery, attempts per hour and their outcomes (24 h), backlog and its age."""
    now = _now(now)
    since = hour_buckets(now)[0]
    attempts = OutboundAttempt.objects.filter(started_at__gte=since)
    hourly = (attempts.annotate(hour=TruncHour("started_at", tzinfo=dt.UTC))
              .values("message__destination__name", "hour").annotate(n=Count("id")))
    series = _series(hourly, "message__destination__name", now)
    outcomes: dict[str, dict[str, int]] = defaultdict(dict)
    for r in attempts.values("message__destination__name", "outcome").annotate(n=Count("id")):
        outcomes[r["message__destination__name"]][r["outcome"] or "-"] = r["n"]
    backlog = {r["destination__name"]: r for r in
               OutboundMessage.objects.filter(status__in=[ORU_PENDING, ORU_FAILED])
               .values("destination__name").annotate(n=Count("id"), oldest=Min("created_at"),
                                                     failed=Count("id", filter=Q(status=ORU_FAILED)))}
    delivered = {r["destination__name"]: r["last"] for r in
                 OutboundMessage.objects.exclude(delivered_at=None).values("destination__name")
                 .annotate(last=Max("delivered_at"))}
    out = []
    for dest in OutboundDestination.objects.order_by("name"):
        codes = outcomes.get(dest.name, {})
        b = backlog.get(dest.name, {"n": 0, "oldest": None, "failed": 0})
        out.append({
            "kind": "hl7_out", "key": dest.name, "enabled": dest.enabled,
            "last_message_at": delivered.get(dest.name), "per_hour": series.get(dest.name, [0] * HOURS),
            "ack_codes": codes, "errors_24h": sum(n for code, n in codes.items() if code != "AA"),
            "queue_depth": b["n"], "failed": b["failed"], "oldest_age_seconds": _age_seconds(b["oldest"], now),
        })
    return out


def failed_deliveries(limit: int = 100) -> list[dict]:
    """Outbound messages in FAILED with their reason (no patient name)."""
    rows = (OutboundMessage.objects.filter(status=ORU_FAILED).select_related("destination")
            .order_by("created_at")[:limit])
    return [{"id": m.pk, "destination": m.destination.name, "message_control_id": m.message_control_id,
             "accession_number": m.accession_number, "created_at": m.created_at, "attempts": m.attempt_count,
             "reason": f"{m.last_outcome}: {m.last_error}".strip(": ")} for m in rows]


# --- DICOM, per calling AE -----------------------------------------------------------------

def dicom_error_counts(calling_ae_title: str, since: dt.datetime) -> tuple[int, int]:
    """(operations answered with a failure status, operations) of a calling AE since ``since``'s hour."""
    agg = DicomOperation.objects.filter(calling_ae_title=calling_ae_title, hour__gte=_hour_start(since)).aggregate(
        total=Sum("count"), errors=Sum("count", filter=~_DICOM_OK))
    return agg["errors"] or 0, agg["total"] or 0


def dicom_calling_aes() -> list[str]:
    return sorted(set(DicomOperation.objects.values_list("calling_ae_title", flat=True)))


def dicom_interfaces(now: dt.datetime | None = None) -> list[dict]:
    """Per calling AE: last operation, operations per hour, by operation and status, failures (24 h)."""
    now = _now(now)
    since = hour_buckets(now)[0]
    rows = list(DicomOperation.objects.filter(hour__gte=since).values(
        "calling_ae_title", "hour", "operation", "status", "count", "last_at"))
    series = _series(rows, "calling_ae_title", now, value="count")
    ops: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    errors: dict[str, int] = defaultdict(int)
    for r in rows:
        ops[r["calling_ae_title"]][f"{r['operation']} 0x{r['status']:04X}"] += r["count"]
    for r in (DicomOperation.objects.filter(hour__gte=since).exclude(_DICOM_OK)
              .values("calling_ae_title").annotate(n=Sum("count"))):
        errors[r["calling_ae_title"]] = r["n"]
    last = {r["calling_ae_title"]: r["last"] for r in
            DicomOperation.objects.values("calling_ae_title").annotate(last=Max("last_at"))}
    return [{"kind": "dicom", "key": ae, "last_message_at": last[ae], "per_hour": series.get(ae, [0] * HOURS),
             "operations": dict(ops.get(ae, {})), "errors_24h": errors.get(ae, 0),
             "queue_depth": 0, "oldest_age_seconds": None} for ae in sorted(last)]


def dicom_operation_totals() -> list[dict]:
    """Every (calling AE, operation, status) with its total count (for /metrics)."""
    return list(DicomOperation.objects.values("calling_ae_title", "operation", "status")
                .annotate(n=Sum("count")).order_by("calling_ae_title", "operation", "status"))


def dicom_refusals(since: dt.datetime, address: str = "") -> dict[str, dict]:
    """Per source address with a refusal at or after ``since``: refusals counted in the hours
    since ``since``'s hour, the last time, reason and calling AE title."""
    rows = DicomRefusal.objects.filter(hour__gte=_hour_start(since)).order_by("last_at")
    if address:
        rows = rows.filter(address=address)
    out: dict[str, dict] = {}
    for r in rows:
        seen = out.setdefault(r.address, {"count": 0})
        seen.update(count=seen["count"] + r.count, last_at=r.last_at, reason=r.reason,
                    calling_ae_title=r.calling_ae_title)
    return {a: v for a, v in out.items() if v["last_at"] >= since}


def dicom_refusal_totals() -> list[dict]:
    """Every (source address, reason) with its total count (for /metrics)."""
    return list(DicomRefusal.objects.values("address", "reason").annotate(n=Sum("count")).order_by("address", "reason"))


# --- VNA routing, per destination ----------------------------------------------------------

def vna_backlog(name: str, now: dt.datetime | None = None) -> tuple[int, float | None]:
    now = _now(now)
    agg = Transfer.objects.filter(destination__name=name, status__in=TRANSFER_OPEN).aggregate(
        n=Count("id"), oldest=Min("created_at"))
    return agg["n"], _age_seconds(agg["oldest"], now)


def vna_interfaces(now: dt.datetime | None = None) -> list[dict]:
    """Per VNA destination: last committed transfer, transfers finished per hour, failures (24 h),
    open transfers and the age of the oldest."""
    now = _now(now)
    since = hour_buckets(now)[0]
    finished = Transfer.objects.filter(finished_at__gte=since)
    series = _series(finished.annotate(hour=TruncHour("finished_at", tzinfo=dt.UTC))
                     .values("destination__name", "hour").annotate(n=Count("id")), "destination__name", now)
    failures = {r["destination__name"]: r["n"] for r in
                finished.filter(status=TRANSFER_FAILED).values("destination__name").annotate(n=Count("id"))}
    backlog = {r["destination__name"]: r for r in Transfer.objects.filter(status__in=TRANSFER_OPEN)
               .values("destination__name").annotate(n=Count("id"), oldest=Min("created_at"))}
    last = {r["destination__name"]: r["last"] for r in
            Transfer.objects.filter(status="COMMITTED").values("destination__name").annotate(last=Max("finished_at"))}
    out = []
    for dest in VnaDestination.objects.order_by("name"):
        b = backlog.get(dest.name, {"n": 0, "oldest": None})
        out.append({"kind": "vna", "key": dest.name, "enabled": dest.enabled,
                    "last_message_at": last.get(dest.name), "per_hour": series.get(dest.name, [0] * HOURS),
                    "errors_24h": failures.get(dest.name, 0), "queue_depth": b["n"],
                    "oldest_age_seconds": _age_seconds(b["oldest"], now)})
    return out


def failed_transfers(destination: str = "", limit: int = 100) -> list[dict]:
    """VNA transfers in FAILED with their reason, oldest first (optionally of one destination)."""
    qs = Transfer.objects.filter(status=TRANSFER_FAILED).select_related("destination", "study")
    if destination:
        qs = qs.filter(destination__name=destination)
    return [{"id": t.pk, "destination": t.destination.name, "study_id": t.study_id,
             "accession_number": t.study.accession_number, "failed_at": t.finished_at or t.updated_at,
             "attempts": t.attempts, "reason": t.reason} for t in qs.order_by("updated_at")[:limit]]


# --- the audit trail's export, per Audit Record Repository ----------------------------------

def audit_repositories() -> list[str]:
    return [row.name for row in audit_exports.repositories()]


def audit_backlog(name: str, now: dt.datetime | None = None) -> tuple[int, float | None]:
    """(records not yet at the repository, age in seconds of the oldest); (0, None) for a
    repository never exported to."""
    row = AuditExport.objects.filter(name=name).first()
    if row is None:
        return 0, None
    pending = audit_exports.backlog(row.last_seq)
    return pending.records, pending.age_seconds(_now(now))


def audit_interfaces(now: dt.datetime | None = None) -> list[dict]:
    """Per repository: last send, records exported per hour (by the time of their event, 24 h),
    the backlog and its age, and why the export fails, if it does."""
    now = _now(now)
    since = hour_buckets(now)[0]
    out = []
    for row in audit_exports.repositories():
        hourly = (AuditRecord.records.filter(seq__lte=row.last_seq, occurred_at__gte=since)
                  .annotate(hour=TruncHour("occurred_at", tzinfo=dt.UTC)).values("hour").annotate(n=Count("id")))
        series = _series([{**r, "repository": row.name} for r in hourly], "repository", now)
        pending = audit_exports.backlog(row.last_seq)
        detail = f"cursor at seq {row.last_seq}"
        if row.failing_since:
            detail += f"; failing since {timezone.localtime(row.failing_since):%Y-%m-%d %H:%M:%S}: {row.last_error}"
        out.append({"kind": "audit", "key": row.name, "last_message_at": row.last_sent_at,
                    "per_hour": series.get(row.name, [0] * HOURS), "errors_24h": 0,
                    "queue_depth": pending.records, "oldest_age_seconds": pending.age_seconds(now),
                    "failing_since": row.failing_since, "detail": detail})
    return out


# --- unmatched studies ---------------------------------------------------------------------

def unmatched_summary(now: dt.datetime | None = None) -> tuple[int, float | None]:
    """(unmatched studies, age in seconds of the oldest) in one aggregate (for /metrics)."""
    agg = Study.objects.filter(requested_procedure__isnull=True, purged_at__isnull=True).aggregate(
        n=Count("id"), oldest=Min("first_received_at"))
    return agg["n"], _age_seconds(agg["oldest"], _now(now))


def unmatched_studies(now: dt.datetime | None = None, *, calling_ae_title: str = "", limit: int = 200) -> list[dict]:
    """Studies without an order, oldest first, with their age in seconds (no patient name)."""
    now = _now(now)
    qs = Study.objects.filter(requested_procedure__isnull=True, purged_at__isnull=True)
    if calling_ae_title:
        qs = qs.filter(calling_ae_title=calling_ae_title)
    return [{"id": s.pk, "calling_ae_title": s.calling_ae_title, "accession_number": s.accession_number,
             "status": s.status, "first_received_at": s.first_received_at,
             "age_seconds": _age_seconds(s.first_received_at, now)}
            for s in qs.order_by("first_received_at")[:limit]]


# --- hand-offs left dangling ----------------------------------------------------------------

#: What a modality sends (PS3.4 B, K, F): images, MPPS, worklist queries.  A C-ECHO is not work.
MODALITY_OPERATIONS = (DicomOperation.C_STORE, DicomOperation.MWL_FIND, DicomOperation.MPPS_N_CREATE,
                       DicomOperation.MPPS_N_SET)
#: Steps not yet performed: still on the Modality Worklist (PS3.4 K.6, (0040,0020)).
STEP_WAITING = (states.SPS_SCHEDULED, states.SPS_ARRIVED, states.SPS_READY)
#: How far back a modality's scheduled hours reach: steps due before this are not its day any more.
SCHEDULE_LOOKBACK = dt.timedelta(hours=24)


def silent_modalities(now: dt.datetime | None = None, *, limit_minutes: int, ae_title: str = "") -> list[dict]:
    """Declared modalities silent during their scheduled hours, one item per AE title.

    A declared node (enabled, not a storage commitment SCP) whose station (its MWL station AE
    title, else its AE title; ScheduledStationAETitle (0040,0001)) has a step still waiting that
    was due more than ``limit_minutes`` ago (within the last 24 hours), and from which no
    C-STORE, MPPS or MWL C-FIND has come since before that step was due.  ``age_seconds``: since
    the first such step was due."""
    now = _now(now)
    nodes = DicomNode.objects.filter(enabled=True, allow_storage_commitment=False)
    if ae_title:
        nodes = nodes.filter(ae_title=ae_title)
    nodes = list(nodes.order_by("ae_title"))
    if not nodes:
        return []
    last = dict(DicomOperation.objects.filter(calling_ae_title__in=[n.ae_title for n in nodes],
                                              operation__in=MODALITY_OPERATIONS)
                .values("calling_ae_title").annotate(last=Max("last_at")).values_list("calling_ae_title", "last"))
    due_before = now - dt.timedelta(minutes=limit_minutes)
    out = []
    for node in nodes:
        station = node.station_ae_title or node.ae_title
        heard = last.get(node.ae_title)
        since = max(heard, now - SCHEDULE_LOOKBACK) if heard else now - SCHEDULE_LOOKBACK
        steps = ScheduledProcedureStep.objects.filter(scheduled_station_ae_title=station, status__in=STEP_WAITING,
                                                      scheduled_start__gt=since, scheduled_start__lte=due_before)
        first = steps.select_related("requested_procedure").order_by("scheduled_start", "pk").first()
        if first is None:
            continue
        out.append({"key": node.ae_title, "node_id": node.pk, "station": station, "last_operation_at": heard,
                    "steps": steps.count(), "first_due_at": first.scheduled_start,
                    "accession_number": first.requested_procedure.accession_number,
                    "age_seconds": _age_seconds(first.scheduled_start, now)})
    return out


def _asking_since(changes: list) -> dt.datetime | None:
    """When the transfer last began asking for storage commitment: its first move to COMMITTING
    after its last send failure or reschedule (a re-request after a timeout does not restart it)."""
    since = None
    for change in changes:
        if change.to_status == tr.COMMITTING and since is None:
            since = change.at
        elif change.to_status in (tr.RETRYING, tr.SCHEDULED):
            since = None
    return since


def unanswered_commitments(now: dt.datetime | None = None, *, limit_minutes: int, destination: str = "") -> list[dict]:
    """Storage commitment requests (PS3.4 J.3.2 N-ACTION) no N-EVENT-REPORT has answered for
    more than ``limit_minutes``: transfers COMMITTING, asking since (re-requests included) longer
    than that; oldest first."""
    now = _now(now)
    qs = Transfer.objects.filter(status=tr.COMMITTING).select_related("destination", "study")
    if destination:
        qs = qs.filter(destination__name=destination)
    rows = list(qs.annotate(waiting=Count("items", filter=Q(items__status=tr.ITEM_SENT))))
    trail: dict[int, list] = defaultdict(list)
    for change in StatusChange.objects.filter(entity="transfer", object_id__in=[t.pk for t in rows]).order_by("at", "pk"):
        trail[change.object_id].append(change)
    out = []
    for t in rows:
        since = _asking_since(trail[t.pk]) or t.commitment_requested_at
        age = _age_seconds(since, now)
        if age is None or age <= limit_minutes * 60:
            continue
        out.append({"key": t.destination.name, "transfer_id": t.pk, "study_id": t.study_id,
                    "accession_number": t.study.accession_number, "asking_since": since,
                    "requested_at": t.commitment_requested_at, "instances": t.waiting, "attempts": t.attempts,
                    "age_seconds": age})
    return sorted(out, key=lambda item: -item["age_seconds"])


def unread_stat_studies(now: dt.datetime | None = None, *, limit_minutes: int, modality: str = "",
                        limit: int = 200) -> list[dict]:
    """STAT studies (RequestedProcedurePriority (0040,1003) STAT, from ORC-7.6 / OBR-27.6 / TQ1-9)
    on the reading worklist for more than ``limit_minutes`` without a final report; longest
    waiting first.  Cancelled orders are left out."""
    now = _now(now)
    qs = (ReadingItem.objects.filter(is_read=False, priority_rank=states.PRIORITY_RANK[states.PRIORITY_STAT],
                                     ready_at__lte=now - dt.timedelta(minutes=limit_minutes))
          .exclude(requested_procedure__status=states.RP_CANCELED))
    if modality:
        qs = qs.filter(modality=modality)
    return [{"key": r.modality, "requested_procedure_id": r.requested_procedure_id,
             "accession_number": r.accession_number, "ready_at": r.ready_at, "report_status": r.report_status,
             "age_seconds": _age_seconds(r.ready_at, now)} for r in qs.order_by("ready_at", "id")[:limit]]


def undelivered_final_reports(now: dt.datetime | None = None, *, limit_minutes: int, destination: str = "",
                              limit: int = 200) -> list[dict]:
    """Final reports (OBR-25 F) signed more than ``limit_minutes`` ago whose ORU^R01 an enabled
    destination that takes results has not acknowledged (no row DELIVERED, nor CANCELED by an
    operator), per destination, oldest first; reports signed before the destination existed are
    not its.  ``message_id`` is None when no ORU^R01 was queued for it at all."""
    now = _now(now)
    due_before = now - dt.timedelta(minutes=limit_minutes)
    dests = OutboundDestination.objects.filter(enabled=True, sends_results=True)
    if destination:
        dests = dests.filter(name=destination)
    out = []
    for dest in dests.order_by("name"):
        settled = OutboundMessage.objects.filter(kind=ob.ORU, destination=dest, report_version=OuterRef("pk"),
                                                 status__in=ob.SETTLED)
        versions = list(ReportVersion.objects.filter(kind=KIND_FINAL, signed_at__lte=due_before,
                                                     signed_at__gte=dest.created_at)
                        .exclude(Exists(settled)).select_related("report__requested_procedure")
                        .order_by("signed_at", "pk")[:limit])
        queued = {m.report_version_id: m for m in OutboundMessage.objects.filter(
            kind=ob.ORU, destination=dest, report_version__in=[v.pk for v in versions]).only(
            "id", "report_version", "status", "message_control_id")}
        for v in versions:
            m = queued.get(v.pk)
            out.append({"key": dest.name, "report_version_id": v.pk,
                        "requested_procedure_id": v.report.requested_procedure_id,
                        "accession_number": v.report.requested_procedure.accession_number, "signed_at": v.signed_at,
                        "message_id": m.pk if m else None, "message_control_id": m.message_control_id if m else "",
                        "status": m.status if m else "never queued", "age_seconds": _age_seconds(v.signed_at, now)})
    return sorted(out, key=lambda item: -item["age_seconds"])[:limit]


# --- alarms (for the operator's console) ---------------------------------------------------

def console_alarms(now: dt.datetime | None = None, *, recent_hours: int = 72, limit: int = 100) -> dict:
    """Open alarms (oldest first) and those cleared in the last ``recent_hours`` (newest first)."""
    now = _now(now)
    base = Alarm.objects.select_related("rule")
    return {
        "open": list(base.filter(cleared_at__isnull=True).order_by("opened_at")[:limit]),
        "recent": list(base.filter(cleared_at__gte=now - dt.timedelta(hours=recent_hours))
                       .order_by("-cleared_at")[:limit]),
    }
