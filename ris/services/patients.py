"""Patients: register, update demographics, merge (IHE RAD-1, RAD-12; shared reference section 3).

Called by the HL7 adapter (ADT, and the PID of every order) with ``ris.commands`` values,
inside the caller's transaction.
"""

from __future__ import annotations

from django.db import connection
from django.db.models import ForeignKey

from audit import events
from ris import auditing
from ris.commands import MergePatients, PatientData, PatientIdentity, RegisterPatient, UpdatePatient, VisitData
from ris.errors import UnknownKey
from ris.models import Order, Patient, PatientIdentifier, PatientMerge, Visit
from ris.signals import patient_changed
from ris.states import SPS_FINAL, SPS_STATUSES


def _lock_identity(identity: PatientIdentity) -> None:
    """Serialise concurrent first registrations of one identifier (PostgreSQL advisory lock,
    released at commit): two orders for a new patient on two connections create one patient."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                           [f"patient:{identity.assigning_authority}:{identity.id_number}"])


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


def _apply_demographics(patient: Patient, data: PatientData) -> list[str]:
    changed = []
    for name in ("patient_name", "patient_birth_date", "patient_sex"):
        value = getattr(data, name)
        if value not in ("", None) and getattr(patient, name) != value:
            setattr(patient, name, value)
            changed.append(name)
    return changed


def _add_identifiers(patient: Patient, data: PatientData) -> None:
    for ident in data.identifiers[1:]:
        PatientIdentifier.objects.get_or_create(
            id_number=ident.id_number, assigning_authority=ident.assigning_authority,
            defaults={"patient": patient, "identifier_type_code": ident.identifier_type_code},
        )


def update_demographics(patient: Patient, data: PatientData) -> list[str]:
    """Copy the non-empty demographics of ``data`` that differ onto ``patient`` and save them.

    Audited as Patient Record U (PS3.15 A.5.3.14) with the changed field names and their old and
    new values, the patient named by the identifier the message used (PID-3)."""
    before = {name: getattr(patient, name) for name in ("patient_name", "patient_birth_date", "patient_sex")}
    changed = _apply_demographics(patient, data)
    if changed:
        patient.save(update_fields=[*changed, "updated_at"])
        auditing.change(events.PATIENT_RECORD, events.UPDATE, patients=[auditing.identity(data.primary)],
                        detail={"changed": auditing.changes(before, {n: getattr(patient, n) for n in changed})})
    return changed


def _audit_created(data: PatientData) -> None:
    """Patient Record C (PS3.15 A.5.3.14): a patient registered, named by its PID-3 identifiers."""
    auditing.change(events.PATIENT_RECORD, events.CREATE,
                    patients=[auditing.identity(i) for i in data.identifiers])


_PG_CREATE = """
WITH found AS (
  SELECT patient_id FROM ris_patientidentifier WHERE id_number = %(id_number)s AND assigning_authority = %(authority)s
), p AS (
  INSERT INTO ris_patient (patient_name, patient_birth_date, patient_sex, merged_into_id, patient_weight,
                           medical_alerts, allergies, pregnancy_status, created_at, updated_at)
  SELECT %(name)s::varchar, %(birth_date)s::date, %(sex)s::varchar, NULL, NULL, '', '', NULL,
         %(now)s::timestamptz, %(now)s::timestamptz
  WHERE NOT EXISTS (SELECT 1 FROM found)
  RETURNING id
), i AS (
  INSERT INTO ris_patientidentifier (patient_id, id_number, assigning_authority, identifier_type_code)
  SELECT id, %(id_number)s::varchar, %(authority)s::varchar, %(type_code)s::varchar FROM p
)
SELECT (SELECT id FROM p)
"""


def create_patient_pg(data: PatientData) -> int | None:
    """PostgreSQL: register a patient whose primary identifier was not found (one identifier).

    Takes the identifier's advisory lock, then in one statement creates the patient and its
    identifier unless another connection registered it meanwhile: returns the new patient's
    key, or None when it exists now (the caller then goes through ``upsert_patient``).
    """
    from django.utils import timezone

    from ris.services import pg

    _lock_identity(data.primary)
    with pg.cursor() as cursor:
        cursor.execute(_PG_CREATE, {
            "id_number": data.primary.id_number, "authority": data.primary.assigning_authority,
            "type_code": data.primary.identifier_type_code, "name": data.patient_name,
            "birth_date": data.patient_birth_date, "sex": data.patient_sex, "now": timezone.now(),
        })
        created = cursor.fetchone()[0]
    if created is not None:
        _audit_created(data)
    return created


def upsert_patient(data: PatientData) -> tuple[Patient, bool]:
    """Find the patient by the primary PID-3 (creating it), update non-empty demographics.

    Returns (patient, created).
    """
    patient = find_patient(data.primary)
    if patient is None:
        # First sight of this identifier: serialise with other connections registering it, then
        # look again (identifiers are never deleted, so a patient found above needs no lock).
        _lock_identity(data.primary)
        patient = find_patient(data.primary)
    created = patient is None
    if created:
        patient = Patient.objects.create(patient_name=data.patient_name, patient_birth_date=data.patient_birth_date,
                                         patient_sex=data.patient_sex)
        PatientIdentifier.objects.create(
            patient=patient, id_number=data.primary.id_number, assigning_authority=data.primary.assigning_authority,
            identifier_type_code=data.primary.identifier_type_code,
        )
        _audit_created(data)
    else:
        update_demographics(patient, data)
    if len(data.identifiers) > 1:
        _add_identifiers(patient, data)
    return patient, created


def upsert_visit(patient: Patient, data: VisitData | None) -> Visit | None:
    """PV1: the visit (PV1-19, else PID-18) of the patient, created or updated."""
    if data is None:
        return None
    # The caller holds the patient's advisory lock (upsert_patient): no concurrent insert of this
    # visit, so a plain SELECT then INSERT is safe (and cheaper than get_or_create's savepoint).
    visit = Visit.objects.filter(patient=patient, visit_number=data.visit_number).first()
    if visit is None:
        visit = Visit.objects.create(
            patient=patient, visit_number=data.visit_number, patient_class=data.patient_class,
            assigned_location=data.assigned_location, referring_physician_name=data.referring_physician_name,
            admit_datetime=data.admit_datetime,
        )
    else:
        update_visit(visit, data)
    return visit


def update_visit(visit: Visit, data: VisitData) -> list[str]:
    """Copy the non-empty PV1 fields of ``data`` that differ onto ``visit`` and save them."""
    changed = []
    for name in ("patient_class", "assigned_location", "referring_physician_name", "admit_datetime"):
        value = getattr(data, name)
        if value not in ("", None) and getattr(visit, name) != value:
            setattr(visit, name, value)
            changed.append(name)
    if changed:
        visit.save(update_fields=[*changed, "updated_at"])
    return changed


def register_patient(cmd: RegisterPatient) -> dict:
    """A01/A04/A05: create the patient, or update it when already known."""
    patient, created = upsert_patient(cmd.patient)
    visit = upsert_visit(patient, cmd.visit)
    return {"patient": patient.pk, "created": created, "visit": visit.pk if visit else None}


def update_patient(cmd: UpdatePatient) -> dict:
    """A08: update the demographics of the patient and of its open orders.

    The MWL reads name, birth date and sex through the order's patient, so they follow at once;
    the visit's referring physician (PV1-8) is copied onto the open orders of that visit.  An
    unknown patient is registered (senders send A08 for patients we never saw).
    """
    patient, created = upsert_patient(cmd.patient)
    visit = upsert_visit(patient, cmd.visit)
    open_statuses = [s for s in SPS_STATUSES if s not in SPS_FINAL]
    open_orders = Order.objects.filter(patient=patient, procedures__steps__status__in=open_statuses).distinct()
    touched = []
    if visit is not None and cmd.visit.referring_physician_name:
        for order in open_orders.filter(visit=visit):
            if order.referring_physician_name != cmd.visit.referring_physician_name:
                order.referring_physician_name = cmd.visit.referring_physician_name
                order.save(update_fields=["referring_physician_name", "updated_at"])
                touched.append(order.pk)
    patient_changed.send(sender=Patient, patient_id=patient.pk)
    return {"patient": patient.pk, "created": created, "visit": visit.pk if visit else None,
            "open_orders": [o.pk for o in open_orders], "orders_updated": touched}


def merge_patients(cmd: MergePatients) -> dict:
    """A40: move everything of the retired patient (MRG-1) to the survivor (PID-3), record it.

    Every row pointing at the retired patient moves -- orders (and with them their procedures
    and steps), visits, identifiers, and rows of later apps (studies, reports) -- and the
    ``PatientMerge`` lists them by model and primary key so the merge can be shown and undone.
    """
    _lock_identity(cmd.retired)
    retired = find_patient(cmd.retired)
    if retired is None:
        raise UnknownKey(f"patient {cmd.retired} (MRG-1) is unknown", location="MRG^1^1")
    survivor, _ = upsert_patient(cmd.survivor)
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
    patient_changed.send(sender=Patient, patient_id=survivor.pk)
    return {"survivor": survivor.pk, "retired": retired.pk, "merge": merge.pk, "moved": moved}
