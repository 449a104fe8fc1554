"""The ORM reader and writer of patient and order plans (SQLite, and PostgreSQL with the fast
path off).  Same plans, same rows and audit records as ``ris.services.writers.postgres``."""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from ris.commands import OrderCommand, PatientData, PatientIdentity, VisitData
from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep, Visit
from ris.services import identifiers, plans
from ris.services.writers.base import Conflict, lock_identity

# --- Reading ----------------------------------------------------------------------------------


def find_patient(identity: PatientIdentity) -> Patient | None:
    """The patient holding PID-3.1 under PID-3.4 (the survivor when it was merged)."""
    ident = (PatientIdentifier.objects.select_related("patient")
             .filter(id_number=identity.id_number, assigning_authority=identity.assigning_authority).first())
    if ident is None:
        return None
    patient = ident.patient
    seen = set()
    while patient.merged_into_id and patient.pk not in seen:
        seen.add(patient.pk)
        patient = Patient.objects.get(pk=patient.merged_into_id)
    return patient


def known_identifiers(data: PatientData) -> frozenset[tuple[str, str]]:
    """Which of the PID-3 repetitions after the first some patient holds already."""
    extra = data.identifiers[1:]
    if not extra:
        return frozenset()
    query = Q()
    for ident in extra:
        query |= Q(id_number=ident.id_number, assigning_authority=ident.assigning_authority)
    return frozenset(PatientIdentifier.objects.filter(query).values_list("id_number", "assigning_authority"))


def read_patient(data: PatientData, visit: VisitData | None) -> plans.PatientSeen:
    patient = find_patient(data.primary)
    if patient is None:
        return plans.PatientSeen(known_identifiers=known_identifiers(data))
    seen_visit = None
    if visit is not None:
        row = Visit.objects.filter(patient=patient, visit_number=visit.visit_number).first()
        if row is not None:
            seen_visit = plans.VisitSeen(row.pk, **{name: getattr(row, name) for name in plans.VISIT_FIELDS})
    return plans.PatientSeen(patient.pk, **{name: getattr(patient, name) for name in plans.PATIENT_FIELDS},
                             visit=seen_visit, known_identifiers=known_identifiers(data))


def order_exists(cmd: OrderCommand) -> bool:
    """An order with the placer number (ORC-2.1 + ORC-2.2) or the filler number (ORC-3.1)."""
    if cmd.placer_order_number and Order.objects.filter(placer_namespace=cmd.placer_namespace,
                                                        placer_order_number=cmd.placer_order_number).exists():
        return True
    return bool(cmd.filler_order_number) and Order.objects.filter(
        filler_order_number=cmd.filler_order_number).exists()


def read_procedure_keys(procedures) -> dict:
    """The sent accession numbers and Study Instance UIDs already used, and the sequence values
    for the accession numbers to assign (``plans.procedure_plans``' keyword arguments)."""
    accessions = [p.accession_number for p in procedures if p.accession_number]
    uids = [p.study_instance_uid for p in procedures if p.study_instance_uid]
    return {
        "used_accessions": frozenset(RequestedProcedure.objects.filter(accession_number__in=accessions)
                                     .values_list("accession_number", flat=True)) if accessions else frozenset(),
        "used_uids": frozenset(RequestedProcedure.objects.filter(study_instance_uid__in=uids)
                               .values_list("study_instance_uid", flat=True)) if uids else frozenset(),
        "numbers": [identifiers.next_accession_sequence_value()
                    for _ in range(plans.numbers_needed(procedures))],
    }


def read_new_order(cmd: OrderCommand) -> plans.OrderSeen:
    if order_exists(cmd):
        return plans.OrderSeen(plans.PatientSeen(), order_exists=True)
    return plans.OrderSeen(read_patient(cmd.patient, cmd.visit), **read_procedure_keys(cmd.procedures))


# --- Writing ----------------------------------------------------------------------------------


def _patient_rows(plan: plans.PatientPlan) -> int:
    if plan.create:
        lock_identity(plan.primary)
        if PatientIdentifier.objects.filter(id_number=plan.primary.id_number,
                                            assigning_authority=plan.primary.assigning_authority).exists():
            raise Conflict(f"patient {plan.primary} was registered meanwhile")
        pk = Patient.objects.create(**plan.values).pk
        PatientIdentifier.objects.create(
            patient_id=pk, id_number=plan.primary.id_number, assigning_authority=plan.primary.assigning_authority,
            identifier_type_code=plan.primary.identifier_type_code,
        )
    else:
        pk = plan.pk
        if plan.values:
            Patient.objects.filter(pk=pk).update(**plan.values, updated_at=timezone.now())
    for ident in plan.add_identifiers:
        PatientIdentifier.objects.get_or_create(
            id_number=ident.id_number, assigning_authority=ident.assigning_authority,
            defaults={"patient_id": pk, "identifier_type_code": ident.identifier_type_code},
        )
    return pk


def _visit_row(patient_pk: int, plan: plans.VisitPlan | None) -> int | None:
    if plan is None:
        return None
    if plan.pk is None:
        return Visit.objects.create(patient_id=patient_pk, visit_number=plan.visit_number, **plan.values).pk
    if plan.values:
        Visit.objects.filter(pk=plan.pk).update(**plan.values, updated_at=timezone.now())
    return plan.pk


def write_patient(plan: plans.PatientPlan, visit: plans.VisitPlan | None) -> tuple[int, int | None]:
    """The patient and its visit; returns their keys."""
    patient_pk = _patient_rows(plan)
    visit_pk = _visit_row(patient_pk, visit)
    for record in plan.audits:
        record.record()
    return patient_pk, visit_pk


def create_procedures(order_pk: int, procedures: list[plans.ProcedurePlan]) -> list[RequestedProcedure]:
    created = []
    for proc in procedures:
        rp = RequestedProcedure.objects.create(order_id=order_pk, **proc.values)
        if proc.steps:
            ScheduledProcedureStep.objects.bulk_create(
                [ScheduledProcedureStep(requested_procedure=rp, **step) for step in proc.steps])
        created.append(rp)
    return created


def write_new_order(plan: plans.OrderPlan) -> dict:
    patient_pk = _patient_rows(plan.patient)
    visit_pk = _visit_row(patient_pk, plan.visit)
    order = Order.objects.create(patient_id=patient_pk, visit_id=visit_pk, **plan.values)
    procedure_pks = [rp.pk for rp in create_procedures(order.pk, plan.procedures)]
    for record in plan.audits:
        record.record()
    return {"order": order.pk, "patient": patient_pk, "procedures": procedure_pks}
