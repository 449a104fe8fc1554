"""One accession's journey: every hand-off it went through, in time order.

``collect(accession)`` reads the rows that touch one accession number (one requested
procedure, the transactions of IHE Radiology Scheduled Workflow: order (RAD-2/RAD-4) -> MWL
(RAD-5) -> MPPS (RAD-6/RAD-7) -> images (RAD-8) -> matching -> completion -> VNA (RAD-10) ->
reading -> report -> ORU (RAD-128), and every other outbound message of its procedure: order
status to the placer (RAD-3), charges to billing (RAD-35)); ``timeline(rows, now=..., ...)`` turns them into a list
of ``Step`` -- a pure function over plain rows, so the rules that mark a step *overdue* are
tested without a database:

- images received (last instance) longer than ``JOURNEY_VNA_OVERDUE_MINUTES`` ago and the
  study not committed by the VNA (no transfer at all, or none committed yet);
- an outbound row (any kind) queued longer than ``JOURNEY_ORU_ACK_OVERDUE_MINUTES`` ago and
  never acknowledged (AA) by its destination (billing, the EHR ...);
- a final report signed and no ORU queued for an enabled destination that takes results.

The view (``monitoring.views.journey``) only reads the query string and renders the list.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Q

from hl7gateway.models import InboundMessage
from hl7gateway.models.outbound import OutboundAction, OutboundAttempt, OutboundDestination, OutboundMessage
from monitoring.records import WorklistQueryResult
from pacs.models.images import Study, StudyLink
from pacs.models.mpps import PerformedProcedureStep
from pacs.models.transfers import Transfer
from ris.models import RequestedProcedure, StatusChange
from ris.models.reports import ReportVersion
from worklist.models import ReadingClaim

# Outcome of a step: done, failed, waiting (not yet happened / in progress).
OK = "ok"
FAILED = "failed"
WAITING = "waiting"


@dataclass
class Step:
    at: dt.datetime | None
    kind: str  # order, status, mwl, mpps, images, match, complete, vna, claim, report, oru, order-status, charge, replay
    label: str
    peer: str = ""
    outcome: str = ""
    state: str = OK
    overdue: bool = False
    overdue_reason: str = ""
    # Where it sorts when it differs from ``at``: a row written in the same transaction as the
    # hand-off that caused it may carry an earlier timestamp than that hand-off's own row.
    sort_at: dt.datetime | None = None


@dataclass
class Rows:
    """Everything read for one accession (model instances or plain objects with the same attributes)."""

    accession: str
    procedure: object | None = None
    inbound: list = field(default_factory=list)
    status_changes: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    mwl_results: list = field(default_factory=list)
    mpps: list = field(default_factory=list)
    studies: list = field(default_factory=list)
    study_links: list = field(default_factory=list)
    transfers: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    report_versions: list = field(default_factory=list)
    outbound: list = field(default_factory=list)
    outbound_attempts: list = field(default_factory=list)
    outbound_actions: list = field(default_factory=list)
    enabled_destinations: list = field(default_factory=list)


def thresholds() -> dict:
    return {
        "vna_overdue": dt.timedelta(minutes=settings.JOURNEY_VNA_OVERDUE_MINUTES),
        "oru_ack_overdue": dt.timedelta(minutes=settings.JOURNEY_ORU_ACK_OVERDUE_MINUTES),
    }


def _minutes(delta: dt.timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} min"


def _outbound_label(o) -> tuple[str, str]:
    """(step kind, what was queued) of an outbox row: every kind the outbox carries -- the ORU^R01
    (HL7 v2.5.1 chapter 7, with OBR-25), the order status message to the placer (IHE RAD-3,
    with ORC-5; ORC-1 SN for an order the department created, with the placer number its answer
    assigned) and the charge posted to billing (IHE RAD-35, DFT^P03 with its kind and FT1-6)."""
    if o.kind == "STATUS" and o.order_control == "SN":
        assigned = f", ORC-2 {o.placer_order_number} assigned" if o.placer_order_number else ""
        return "order-status", f"{o.message_type} (ORC-1 SN, new filler order{assigned})"
    if o.kind == "STATUS":
        return "order-status", f"{o.message_type} (ORC-5 {o.order_status})"
    if o.kind == "CHARGE":
        return "charge", f"{o.message_type} ({o.charge_kind} {o.transaction_type})"
    return "oru", f"{o.message_type} ({o.result_status})"


def timeline(rows: Rows, *, now: dt.datetime, vna_overdue: dt.timedelta, oru_ack_overdue: dt.timedelta) -> list[Step]:
    """The steps of one accession, earliest first (steps without a time -- still expected -- last)."""
    out: list[Step] = []
    for m in rows.inbound:
        ok = m.status == "APPLIED"
        label = f"{m.message_type or 'HL7 message'} received"
        if m.replay_of_id:
            label += f" (replay of message {m.replay_of_id})"
        out.append(Step(m.received_at, "order", label,
                        peer=f"{m.sending_application}^{m.sending_facility}".strip("^") or m.peer,
                        outcome=f"{m.status}, ACK {m.ack_code or '-'} (MSH-10 {m.message_control_id})"
                        + (f": {m.error_text}" if m.error_text else ""),
                        state=OK if ok else FAILED))
    for sc in rows.status_changes:
        out.append(Step(sc.at, "status",
                        f"{sc.entity.replace('_', ' ')} {sc.from_status or '(none)'} -> {sc.to_status}",
                        peer=sc.actor, outcome=sc.cause))
    # The steps are created while their order message is applied, before its row is stored.
    first_order = min((m.received_at for m in rows.inbound if m.status == "APPLIED"), default=None)
    for sps in rows.steps:
        where = sps.scheduled_station_ae_title or sps.modality
        out.append(Step(sps.created_at, "scheduled",
                        f"step {sps.scheduled_procedure_step_id} scheduled ({sps.modality})",
                        peer=where, outcome=f"for {sps.scheduled_start:%Y-%m-%d %H:%M}",
                        sort_at=max(sps.created_at, first_order) if first_order else None))
    for r in rows.mwl_results:
        again = r.last_returned_at != r.first_returned_at
        out.append(Step(r.first_returned_at, "mwl",
                        f"MWL item returned (step {r.scheduled_step.scheduled_procedure_step_id})",
                        peer=r.calling_ae_title, outcome="C-FIND pending response sent"
                        + (f"; again until {r.last_returned_at:%Y-%m-%d %H:%M:%S}" if again else "")))
    for p in rows.mpps:
        out.append(Step(p.created_at, "mpps", "MPPS N-CREATE: in progress", peer=p.calling_ae_title,
                        outcome=f"station {p.performed_station_ae_title or '-'}"))
        if p.status != "IN PROGRESS":  # the time the final N-SET was received
            out.append(Step(p.updated_at, "mpps", f"MPPS N-SET: {p.status.lower()}", peer=p.calling_ae_title,
                            outcome=p.status, state=OK if p.status == "COMPLETED" else FAILED))
    transfers_by_study: dict[int, list] = {}
    for t in rows.transfers:
        transfers_by_study.setdefault(t.study_id, []).append(t)
    links_by_study: dict[int, list] = {}
    for link in rows.study_links:
        links_by_study.setdefault(link.study_id, []).append(link)
    for s in rows.studies:
        count = getattr(s, "instance_count", None)
        out.append(Step(s.first_received_at, "images", "instances received (first)", peer=s.calling_ae_title,
                        outcome=f"{count} instance(s), last at {s.last_received_at:%H:%M:%S}"
                        if count is not None else ""))
        links = links_by_study.get(s.pk, [])
        for link in links:
            out.append(Step(link.at, "match", "reconciled by a person", peer=link.actor,
                            outcome=("new order created" if link.created_order else "linked to the order")
                            + (f": {link.note}" if link.note else "")))
        if s.requested_procedure_id and s.match_method not in ("manual", "new_order"):
            out.append(Step(s.first_received_at, "match", "matched to the order", peer="order matching",
                            outcome=f"by {s.get_match_method_display()}"))
        elif not s.requested_procedure_id:
            out.append(Step(None, "match", "not matched to an order", peer="reconciliation",
                            outcome="waiting on the reconciliation page", state=WAITING))
        if s.completed_at:
            out.append(Step(s.completed_at, "complete", "study complete", peer="completion", outcome=s.status))
        study_transfers = transfers_by_study.get(s.pk, [])
        for t in study_transfers:
            dest = getattr(t.destination, "name", str(t.destination_id))
            out.append(Step(t.created_at, "vna", f"transfer to VNA {dest} queued (batch {t.batch})",
                            peer=dest, outcome=t.status, state=WAITING if t.status not in ("COMMITTED", "FAILED",
                                                                                           "CANCELED") else OK))
            if t.status == "COMMITTED":
                out.append(Step(t.finished_at or t.updated_at, "vna", f"committed by VNA {dest}", peer=dest,
                                outcome="storage commitment: every instance committed"))
            elif t.status in ("FAILED", "CANCELED"):
                out.append(Step(t.finished_at or t.updated_at, "vna", f"transfer to VNA {dest} {t.status.lower()}",
                                peer=dest, outcome=t.reason, state=FAILED))
        committed = any(t.status == "COMMITTED" for t in study_transfers) or bool(s.archived_at)
        waited = now - s.last_received_at
        if not committed and waited > vna_overdue:
            what = "nothing queued for the VNA" if not study_transfers else "not committed by the VNA"
            out.append(Step(None, "vna", "VNA archive", peer="routing", outcome=what, state=WAITING, overdue=True,
                            overdue_reason=f"images arrived {_minutes(waited)} ago and {what} "
                                           f"(threshold {_minutes(vna_overdue)})"))
    for c in rows.claims:
        user = getattr(c.user, "username", "")
        out.append(Step(c.claimed_at, "claim", "claimed for reading", peer=user,
                        outcome="active" if c.released_at is None else f"released ({c.release_reason.lower()})"))
    final_signed = None
    for v in rows.report_versions:
        if v.signed_at is None:
            continue
        signer = getattr(v.signed_by, "username", "") or v.signer_name
        out.append(Step(v.signed_at, "report", f"report version {v.version_number} signed ({v.kind.lower()})",
                        peer=signer, outcome=f"OBR-25 {v.result_status}"))
        if v.result_status in ("F", "C"):
            final_signed = v
    attempts_by_message: dict[int, list] = {}
    for a in rows.outbound_attempts:
        attempts_by_message.setdefault(a.message_id, []).append(a)
    for o in rows.outbound:
        dest = getattr(o.destination, "name", str(o.destination_id))
        kind, what = _outbound_label(o)
        out.append(Step(o.created_at, kind, f"{what} queued for {dest}", peer=dest,
                        outcome=f"MSH-10 {o.message_control_id}"))
        attempts = attempts_by_message.get(o.pk, [])
        for a in attempts:
            out.append(Step(a.finished_at or a.started_at, kind, f"{o.message_type} attempt {a.number} to {dest}",
                            peer=dest, outcome=f"{a.outcome}" + (f": {a.detail}" if a.detail else ""),
                            state=OK if a.outcome == "AA" else FAILED))
        for act in (a for a in rows.outbound_actions if a.message_id == o.pk):
            out.append(Step(act.at, kind, f"{o.message_type} to {dest}: operator {act.action.lower()}",
                            peer=act.username, outcome=act.reason or "(no reason given)"))
        if o.status == "DELIVERED":
            last = max([o.delivered_at] + [a.finished_at or a.started_at for a in attempts])
            out.append(Step(o.delivered_at, kind, f"{o.message_type} acknowledged by {dest}", peer=dest,
                            outcome="AA", sort_at=last))
        elif o.status == "CANCELED":
            out.append(Step(o.updated_at, kind, f"{o.message_type} to {dest} canceled", peer=dest,
                            outcome=o.last_error, state=FAILED))
        else:
            waited = now - o.created_at
            late = waited > oru_ack_overdue
            out.append(Step(None, kind, f"{o.message_type} acknowledgement from {dest}", peer=dest,
                            outcome=f"{o.status.lower()}" + (f": {o.last_error}" if o.last_error else ""),
                            state=FAILED if o.status == "FAILED" else WAITING, overdue=late,
                            overdue_reason=f"queued {_minutes(waited)} ago, never acknowledged "
                                           f"(threshold {_minutes(oru_ack_overdue)})" if late else ""))
    if final_signed is not None:
        sent_to = {o.destination_id for o in rows.outbound if o.report_version_id == final_signed.pk}
        for dest in rows.enabled_destinations:
            if dest.pk not in sent_to and now - final_signed.signed_at > oru_ack_overdue:
                out.append(Step(None, "oru", f"ORU^R01 to {dest.name}", peer=dest.name, outcome="never queued",
                                state=WAITING, overdue=True,
                                overdue_reason=f"final report signed {_minutes(now - final_signed.signed_at)} ago "
                                               f"and no ORU queued for {dest.name}"))
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return sorted(out, key=lambda s: s.sort_at or s.at or far)  # stable: the order written above breaks ties


# --- reading the rows (the only part that touches the database) ---------------------------------


def _contains_accession(field_value: str, accession: str) -> bool:
    return accession in field_value.split()


def collect(accession: str) -> Rows:
    """Read every row that touches ``accession`` (one requested procedure)."""
    rows = Rows(accession=accession)
    rows.inbound = [m for m in InboundMessage.objects.filter(accession_numbers__contains=accession)
                    .defer("raw", "ack").order_by("received_at", "pk")
                    if _contains_accession(m.accession_numbers, accession)]
    rp = RequestedProcedure.objects.filter(accession_number=accession).select_related("order").first()
    rows.procedure = rp
    sps_ids: list[int] = []
    if rp is not None:
        rows.steps = list(rp.steps.order_by("created_at", "pk"))
        sps_ids = [s.pk for s in rows.steps]
    mpps = PerformedProcedureStep.objects.filter(accession_number=accession)
    if sps_ids:
        mpps = mpps | PerformedProcedureStep.objects.filter(scheduled_step_id__in=sps_ids)
    rows.mpps = list(mpps.distinct().order_by("created_at"))
    studies = Study.objects.filter(accession_number=accession)
    if rp is not None:
        studies = studies | Study.objects.filter(requested_procedure=rp)
    rows.studies = list(studies.distinct().annotate(instance_count=Count("instances")).order_by("first_received_at"))
    study_ids = [s.pk for s in rows.studies]
    rows.study_links = list(StudyLink.objects.filter(study_id__in=study_ids).order_by("at"))
    rows.transfers = list(Transfer.objects.filter(study_id__in=study_ids).select_related("destination")
                          .order_by("created_at", "pk"))
    report_version_ids: list[int] = []
    report_ids: list[int] = []
    if rp is not None:
        rows.claims = list(ReadingClaim.objects.filter(requested_procedure=rp).select_related("user")
                           .order_by("claimed_at"))
        rows.report_versions = list(ReportVersion.objects.filter(report__requested_procedure=rp)
                                    .select_related("signed_by").order_by("version_number"))
        report_version_ids = [v.pk for v in rows.report_versions]
        report_ids = list({v.report_id for v in rows.report_versions})
    # Every outbound kind of this accession: the ORU^R01 of its report versions, and the order
    # status and charge messages of its requested procedure (IHE RAD-3, RAD-35).
    outbound = Q(report_version_id__in=report_version_ids)
    if rp is not None:
        outbound |= Q(requested_procedure=rp)
    rows.outbound = list(OutboundMessage.objects.filter(outbound)
                         .select_related("destination").defer("payload", "ack").order_by("created_at", "pk"))
    rows.outbound_attempts = list(OutboundAttempt.objects.filter(message_id__in=[o.pk for o in rows.outbound])
                                  .defer("ack").order_by("message_id", "number"))
    rows.outbound_actions = list(OutboundAction.objects.filter(message_id__in=[o.pk for o in rows.outbound])
                                 .order_by("at", "pk"))
    # Only destinations that take results can miss a final report's ORU^R01.
    rows.enabled_destinations = list(OutboundDestination.objects.filter(enabled=True, sends_results=True))
    rows.mwl_results = _mwl_results(sps_ids)
    # The status trail of every entity of this accession (ris.services.transitions).
    wanted = {
        "requested_procedure": [rp.pk] if rp else [],
        "placer_status": [rp.pk] if rp else [],
        "sps": sps_ids,
        "mpps": [p.pk for p in rows.mpps],
        "study": study_ids,
        "transfer": [t.pk for t in rows.transfers],
        "report": report_ids,
        "oru_outbound": [o.pk for o in rows.outbound],
    }
    q = Q(pk__in=[])
    for entity, ids in wanted.items():
        if ids:
            q |= Q(entity=entity, object_id__in=ids)
    # MPPS, transfer and ORU changes are told by their own steps above; keep the order and study trail.
    rows.status_changes = [sc for sc in StatusChange.objects.filter(q).order_by("at", "pk")
                           if sc.entity in ("requested_procedure", "placer_status", "sps", "study", "report")]
    return rows


def _mwl_results(sps_ids: list[int]) -> list:
    if not sps_ids:
        return []
    return list(WorklistQueryResult.objects.filter(scheduled_step_id__in=sps_ids).select_related("scheduled_step")
                .order_by("first_returned_at", "pk"))


def accessions_of_patient(patient_id: str) -> list[str]:
    """Accession numbers of a patient (PID-3.1 / PatientID), newest order first."""
    return list(RequestedProcedure.objects.filter(order__patient__identifiers__id_number=patient_id)
                .order_by("-created_at").values_list("accession_number", flat=True).distinct()[:50])
