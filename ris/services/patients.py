"""Patients: register, update demographics, merge (IHE RAD-1, RAD-12; HL7 v2.5.1 chapter 3).

Called by the HL7 adapter (ADT, and the PID of every order) with ``ris.commands`` values,
inside the caller's transaction.  Registering or updating a patient (A01/A04/A05/A08 and the
PID/PV1 of an order) is decided by ``ris.services.plans`` and written by the writer of the
database kind (``ris.services.writers``).
"""

from __future__ import annotations

from django.db.models import ForeignKey

from project.auditing import events
from ris import auditing
from ris.commands import MergePatients, PatientData, RegisterPatient, UpdatePatient, VisitData
from ris.errors import UnknownKey
from ris.models import Order, Patient, PatientMerge, Visit
from ris.services import plans, writers
from ris.services.writers.orm import find_patient
from ris.signals import patient_changed
from ris.states import SPS_FINAL, SPS_STATUSES

__all__ = ["find_patient", "merge_patients", "register", "register_patient", "update_patient"]


def register(data: PatientData, visit: VisitData | None) -> tuple[int, bool, int | None]:
    """The patient of the primary PID-3 identifier (registered when new, its non-empty
    demographics updated, its other identifiers added) and its visit (PV1-19, else PID-18).

    Returns (patient key, created, visit key or None).
    """
    store = writers.current()
    (patient_plan, _), (patient_pk, visit_pk) = writers.decide_and_write(
        lambda: store.read_patient(data, visit),
        lambda seen: (plans.patient_plan(data, seen), plans.visit_plan(visit, seen.visit)),
        lambda planned: store.write_patient(*planned))
    return patient_pk, patient_plan.create, visit_pk


def register_patient(cmd: RegisterPatient) -> dict:
    """A01/A04/A05: create the patient, or update it when already known."""
    patient_pk, created, visit_pk = register(cmd.patient, cmd.visit)
    return {"patient": patient_pk, "created": created, "visit": visit_pk}


def update_patient(cmd: UpdatePatient) -> dict:
    """A08: update the demographics of the patient and of its open orders.

    The MWL reads name, birth date and sex through the order's patient, so they follow at once;
    the visit's referring physician (PV1-8) is copied onto the open orders of that visit.  An
    unknown patient is registered (senders send A08 for patients we never saw).
    """
    patient_pk, created, visit_pk = register(cmd.patient, cmd.visit)
    open_statuses = [s for s in SPS_STATUSES if s not in SPS_FINAL]
    open_orders = Order.objects.filter(patient_id=patient_pk, procedures__steps__status__in=open_statuses).distinct()
    touched = []
    if visit_pk is not None and cmd.visit.referring_physician_name:
        for order in open_orders.filter(visit_id=visit_pk):
            if order.referring_physician_name != cmd.visit.referring_physician_name:
                order.referring_physician_name = cmd.visit.referring_physician_name
                order.save(update_fields=["referring_physician_name", "updated_at"])
                touched.append(order.pk)
    patient_changed.send(sender=Patient, patient_id=patient_pk, event="A08", merge_id=None)
    return {"patient": patient_pk, "created": created, "visit": visit_pk,
            "open_orders": [o.pk for o in open_orders], "orders_updated": touched}


def merge_patients(cmd: MergePatients) -> dict:
    """A40: move everything of the retired patient (MRG-1) to the survivor (PID-3), record it.

    Every row pointing at the retired patient moves -- orders (and with them their procedures
    and steps), visits, identifiers, and rows of later apps (studies, reports) -- and the
    ``PatientMerge`` lists them by model and primary key so the merge can be shown and undone.
    """
    writers.lock_identity(cmd.retired)
    retired = find_patient(cmd.retired)
    if retired is None:
        raise UnknownKey(f"patient {cmd.retired} (MRG-1) is unknown", location="MRG^1^1")
    survivor = Patient.objects.get(pk=register(cmd.survivor, None)[0])
    if survivor.pk == retired.pk:
        return {"survivor": survivor.pk, "retired": retired.pk, "moved": {}, "noop": True}
    moved: dict[str, list[int]] = {}
    # Visits: a visit number the survivor already has is folded into the survivor's visit.
    survivor_visits = {v.visit_number: v for v in Visit.objects.filter(patient=survivor)}
    for visit in Visit.objects.filter(patient=retired):
        target = survivor_visits.get(visit.visit_number)
        if target is not None:
            Order.objects.filter(visit=visit).update(visit=target)
        else:
            visit.patient = survivor
            visit.save(update_fields=["patient", "updated_at"])
            moved.setdefault("ris.visit", []).append(visit.pk)
    steps = list(Order.objects.filter(patient=retired).values_list("procedures__steps__pk", flat=True))
    for rel in Patient._meta.related_objects:
        field = rel.field
        if not isinstance(field, ForeignKey) or rel.related_model in (PatientMerge, Patient, Visit):
            continue
        qs = rel.related_model._default_manager.filter(**{field.name: retired})
        pks = list(qs.values_list("pk", flat=True))
        if pks:
            qs.update(**{field.name: survivor})
            moved[rel.related_model._meta.label_lower] = pks
    moved["ris.scheduledprocedurestep"] = [pk for pk in steps if pk is not None]
    retired.merged_into = survivor
    retired.save(update_fields=["merged_into", "updated_at"])
    merge = PatientMerge.objects.create(
        survivor=survivor, retired=retired, retired_patient_id=cmd.retired.id_number,
        retired_issuer_of_patient_id=cmd.retired.assigning_authority, moved=moved, cause=cmd.cause[:255],
    )
    # Patient Record U (PS3.15 A.5.3.14) naming both: the survivor (PID-3) and the retired (MRG-1).
    auditing.change(events.PATIENT_RECORD, events.UPDATE,
                    patients=[auditing.identity(cmd.survivor.primary), auditing.identity(cmd.retired)],
                    objects=[{"type": "merge", "id": str(merge.pk)}],
                    detail={"merge": {"survivor": auditing.identity(cmd.survivor.primary),
                                      "retired": auditing.identity(cmd.retired),
                                      "moved": {label: len(pks) for label, pks in moved.items()}}})
    patient_changed.send(sender=Patient, patient_id=survivor.pk, event="A40", merge_id=merge.pk)
    return {"survivor": survivor.pk, "retired": retired.pk, "merge": merge.pk, "moved": moved}
