"""Imaging pages: the reconciliation queue, the VNA transfers page and the prior fetches page.

Thin: each view parses the request, calls ``pacs.services.order_matching`` or
``pacs.services.routing`` with plain values and renders.  Every view declares its roles.
"""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from pacs.models import Prior, StoreConflict, Study, Transfer
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services import order_matching, resends
from pacs.services import priors as prior_service
from pacs.services.routing import actions as transfer_actions
from project.access import ADMINISTRATOR, TECHNOLOGIST, has_role, roles
from project.auditing import events
from project.auditing import web as web_audit
from ris import auditing as ris_auditing
from ris.errors import DomainError
from ris.models import PatientIdentifier, RequestedProcedure

RECONCILERS = (ADMINISTRATOR, TECHNOLOGIST)


def _actor(request) -> str:
    return request.user.get_username()


@roles(*RECONCILERS)
@require_GET
def reconciliation(request):
    """Unmatched studies (waiting for a person), matched ones whose demographics disagree, and
    resends of stored instances with other content (STORE_OVERWRITE_POLICY)."""
    # A prior fetched from the VNA (pacs.services.priors) is archived already and needs no order.
    fetched_priors = Prior.objects.filter(source__isnull=False).values("study_instance_uid")
    unmatched = (Study.objects.filter(requested_procedure__isnull=True)
                 .exclude(status=im.ARCHIVED, study_instance_uid__in=fetched_priors).annotate(n=Count("instances")))
    flagged = (
        Study.objects.filter(requested_procedure__isnull=False).exclude(demographics_mismatch=[])
        .select_related("requested_procedure").annotate(n=Count("instances"))
    )
    unmatched = list(unmatched.order_by("-last_received_at")[:200])
    flagged = list(flagged.order_by("-last_received_at")[:200])
    conflicts = list(StoreConflict.objects.select_related("study")[:200])
    studies = unmatched + flagged + [c.study for c in conflicts if c.study is not None]
    web_audit.query(request, patients=[p for s in studies for p in ris_auditing.patients_of(s)],
                   criteria={"list": "reconciliation"}, shown=len(studies))
    return render(request, "imaging/reconciliation.html", {
        "unmatched": unmatched, "flagged": flagged, "conflicts": conflicts,
    })


@roles(*RECONCILERS)
@require_GET
def reconcile_study(request, study_id: int):
    study = get_object_or_404(Study, pk=study_id)
    candidates = RequestedProcedure.objects.none()
    patients = []
    if study.patient_id:
        ids = PatientIdentifier.objects.filter(id_number=study.patient_id).select_related("patient")
        patients = [i.patient for i in ids]
        candidates = RequestedProcedure.objects.filter(order__patient__in=patients).select_related("order__patient")
    query = request.GET.get("q", "").strip()
    if query:
        candidates = RequestedProcedure.objects.filter(
            Q(accession_number=query) | Q(order__patient__identifiers__id_number=query)
        ).select_related("order__patient").distinct()
        patients = list({i.patient for i in PatientIdentifier.objects.filter(id_number=query).select_related("patient")})
    candidates = list(candidates.order_by("-created_at")[:50])
    # DICOM Instances Accessed R (PS3.15 A.5.3.6): the study's header data, with the candidate
    # orders and patients shown beside it (each named), and the search when one was asked.
    shown = ris_auditing.patients_of(study) + [p for patient in patients for p in ris_auditing.patient_ids(patient)]
    shown += [p for rp in candidates for p in ris_auditing.patient_ids(rp.order.patient_id)]
    web_audit.read(request, events.INSTANCES_ACCESSED, patients=shown,
                  objects=ris_auditing.objects_of(study) + [{"type": "accession", "id": rp.accession_number}
                                                            for rp in candidates],
                  detail={"q": query} if query else None)
    return render(request, "imaging/reconcile_study.html", {
        "study": study, "candidates": candidates, "patients": patients, "q": query,
        "links": study.links.all(),
        "conflicts": StoreConflict.objects.filter(resends.of_study(study.pk)).distinct(),
    })


@roles(*RECONCILERS)
@require_POST
def link_study(request, study_id: int):
    try:
        rp_id = int(request.POST.get("requested_procedure_id", ""))
        order_matching.link_study(study_id, rp_id, actor=_actor(request), note=request.POST.get("note", ""))
    except (ValueError, DomainError) as exc:
        messages.error(request, f"Not linked: {exc}")
        return redirect("imaging:reconcile_study", study_id=study_id)
    messages.success(request, "Study linked to the order.")
    return redirect("imaging:reconciliation")


@roles(*RECONCILERS)
@require_POST
def new_order_for_study(request, study_id: int):
    try:
        patient_pk = int(request.POST.get("patient", ""))
        link = order_matching.link_study_to_new_order(
            study_id, patient_pk, actor=_actor(request), description=request.POST.get("description", ""),
            note=request.POST.get("note", ""),
        )
    except (ValueError, DomainError) as exc:
        messages.error(request, f"No order created: {exc}")
        return redirect("imaging:reconcile_study", study_id=study_id)
    messages.success(request, f"New order created (accession {link.requested_procedure.accession_number}).")
    return redirect("imaging:reconciliation")


def _age(since, now) -> str:
    seconds = int((now - since).total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


LIST_LIMIT = 500  # rows an operator list shows, newest first


def _status_list(request, queryset, statuses, *, name: str, patients_of) -> dict:
    """An operator list of rows with a status: filtered by ``?status=`` when it is one of
    ``statuses`` (else every row), newest first, at most ``LIST_LIMIT``, each with its age; the
    query recorded on the audit trail with the patients shown (``patients_of(row)``); and the
    count of every status for the filter links.  The template context: rows, status, states."""
    status = request.GET.get("status", "")
    rows = queryset.order_by("-created_at")
    if status in statuses:
        rows = rows.filter(status=status)
    now = timezone.now()
    rows = list(rows[:LIST_LIMIT])
    for row in rows:
        row.age = _age(row.created_at, now)
    web_audit.query(request, patients=[p for row in rows for p in patients_of(row)],
                    criteria={"list": name, "status": status}, shown=len(rows))
    counts = dict(queryset.model.objects.values_list("status").annotate(n=Count("pk")).order_by())
    return {"rows": rows, "status": status, "states": [(s, counts.get(s, 0)) for s in statuses]}


@roles(ADMINISTRATOR, TECHNOLOGIST)
@require_GET
def transfers(request):
    """Transfers by state with reason, attempts and age; retry and cancel for administrators."""
    listed = _status_list(request, Transfer.objects.select_related("study", "destination"), tr.STATUSES,
                          name="transfers", patients_of=lambda row: ris_auditing.patients_of(row.study))
    return render(request, "imaging/transfers.html", {
        **listed,
        "can_act": has_role(request.user, ADMINISTRATOR),
        "retryable": {tr.FAILED, tr.RETRYING, tr.CANCELED, tr.SCHEDULED},
        "cancelable": tr.OPEN | {tr.FAILED},
    })


@roles(ADMINISTRATOR, TECHNOLOGIST)
@require_GET
def priors(request):
    """Studies fetched from the VNA, by state, with source, attempts, age, reason: the priors of new
    orders and the recalls of studies purged after archiving that a client asked for."""
    listed = _status_list(
        request, Prior.objects.select_related("requested_procedure__order", "source"), pr.STATUSES, name="priors",
        patients_of=lambda row: (ris_auditing.patients_of(row.requested_procedure) if row.requested_procedure_id
                                 else [(row.patient_id, row.issuer_of_patient_id)] if row.patient_id else []))
    held = prior_service.instances_held_of({row.study_instance_uid for row in listed["rows"]})
    for row in listed["rows"]:
        row.held = held.get(row.study_instance_uid, 0)  # beside the VNA's count: a prior held in part shows
    return render(request, "imaging/priors.html", listed)


def _act_on_transfer(request, transfer_id: int, action, done: str):
    """An operator's action on a transfer (``pacs.services.routing.actions``), recorded with the
    user; the refusal of a transfer in the wrong state is shown, not raised.  Back to the list."""
    get_object_or_404(Transfer, pk=transfer_id)
    try:
        action(transfer_id, actor=_actor(request))
        messages.success(request, f"Transfer {transfer_id} {done}.")
    except DomainError as exc:
        messages.error(request, str(exc))
    return redirect("imaging:transfers")


@roles(ADMINISTRATOR)
@require_POST
def retry_transfer(request, transfer_id: int):
    return _act_on_transfer(request, transfer_id, transfer_actions.retry, "queued again")


@roles(ADMINISTRATOR)
@require_POST
def cancel_transfer(request, transfer_id: int):
    return _act_on_transfer(request, transfer_id, transfer_actions.cancel, "canceled")

