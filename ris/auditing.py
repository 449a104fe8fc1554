"""Who changed which patient's data: the audit records of the domain's changes (DICOM PS3.15
A.5.3.13 Order Record, A.5.3.14 Patient Record, A.5.3.15 Procedure Record; IHE ATNA).

The services call :func:`change`; who acted is not a parameter of every service but the context
the adapter sets with ``project.auditing.actors.acting`` (the web middleware sets the user and
the client address; the HL7 intake MSH-3^MSH-4 with the message control ID; the MPPS service the
calling AE title).  Without one the actor is the engine itself (actor kind "system").

A change's record is written in the caller's transaction (``project.auditing.recording.record``,
which the ``audit`` app's trail carries out), so that it commits or rolls back with the change.
Inside :func:`collecting` (the HL7 intake) the records are gathered instead and written by
:func:`write_collected` in one statement before the commit: one round trip per message, whatever
the message changed.

Patients are named by identifier and issuer (PID-3.1 / PID-3.4 = PatientID / IssuerOfPatientID),
never by name; demographics appear only as the before and after of a change of them, in the
audit table (that record IS the audit of that change), never in a log.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.conf import settings

from project.auditing import events, recording
from project.auditing.actors import current_actor
from ris.models import PatientIdentifier
from ris.services import pg

_pending: ContextVar[list | None] = ContextVar("ris_audit_pending", default=None)


@contextmanager
def collecting() -> Iterator[list]:
    """Gather the records of :func:`change` instead of writing each at once; the caller writes
    them with :func:`write_collected` inside the same transaction."""
    token = _pending.set([])
    try:
        yield _pending.get()
    finally:
        _pending.reset(token)


def write_collected() -> None:
    pending = _pending.get()
    if pending:
        recording.record_prepared(pending, cursor=pg.cursor)
        pending.clear()


def change(event_id, action: str, *, patients: Iterable[tuple[str, str]] = (), objects: Iterable[dict] = (),
           detail: dict | None = None, actor: str = "") -> None:
    """Record a change (action C, U or D) of patient data, in the caller's transaction.

    ``actor``: who the caller knows acted (a user name, an AE title) when no context says it.
    """
    if not settings.AUDIT_ENABLED:
        return
    who = current_actor(actor)
    kwargs = dict(action=action, actor=who.name, actor_kind=who.kind, source_address=who.source_address,
                  patients=[p for p in patients if p and p[0]], objects=list(objects),
                  detail={**who.detail, **(detail or {})})
    pending = _pending.get()
    if pending is not None:
        pending.append(recording.prepare(event_id, **kwargs))
    else:
        recording.record(event_id, **kwargs)


# --- Naming what a record is about ---------------------------------------------------------------

def identity(identity_) -> tuple[str, str]:
    """(patient_id, issuer) of a ``ris.commands.PatientIdentity`` or a ``PatientIdentifier``."""
    issuer = getattr(identity_, "assigning_authority", "")
    return (identity_.id_number, issuer)


def patient_ids(patient_or_pk) -> list[tuple[str, str]]:
    """Every identifier of a patient (PID-3 repetitions): the patient as the trail names it."""
    pk = getattr(patient_or_pk, "pk", patient_or_pk)
    if pk is None:
        return []
    return list(PatientIdentifier.objects.filter(patient_id=pk).order_by("pk")
                .values_list("id_number", "assigning_authority"))


def order_objects(order=None, accessions: Iterable[str] = (), *, placer: str = "", namespace: str = "",
                  filler: str = "") -> list[dict]:
    """Participant objects of an order: its placer / filler number (ORC-2 / ORC-3) and the
    accession numbers (OBR-18 = AccessionNumber (0008,0050)) of its procedures."""
    if order is not None:
        placer, namespace, filler = order.placer_order_number, order.placer_namespace, order.filler_order_number
    result = []
    if placer:
        result.append({"type": "order", "id": placer, "issuer": namespace, "detail": "placer order number"})
    if filler:
        result.append({"type": "order", "id": filler, "detail": "filler order number"})
    if order is not None and not placer and not filler:
        result.append({"type": "order", "id": str(order.pk), "detail": "order key"})
    result += [{"type": "accession", "id": a} for a in accessions if a]
    return result


def jsonable(value):
    """A field value as it goes into ``detail`` (dates and decimals as text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "pk"):
        return value.pk
    return str(value)


def changes(before: dict, after: dict) -> dict:
    """{field: {"old": ..., "new": ...}} for every field whose value differs."""
    return {name: {"old": jsonable(before.get(name)), "new": jsonable(after.get(name))}
            for name in after if before.get(name) != after.get(name)}


# --- What a model instance is about (the admin, the status changes) ------------------------------

def patients_of(obj) -> list[tuple[str, str]]:
    """The patients whose data a row of a patient-data model holds."""
    label = obj._meta.label_lower
    if label == "ris.patient":
        return patient_ids(obj)
    if label == "ris.patientidentifier":
        return [(obj.id_number, obj.assigning_authority)]
    if label in ("ris.order", "ris.visit"):
        return patient_ids(obj.patient_id)
    if label == "ris.requestedprocedure":
        return patient_ids(obj.order.patient_id)
    if label in ("ris.scheduledprocedurestep", "worklist.readingclaim", "ris.report", "pacs.studylink"):
        rp = obj.requested_procedure
        found = patient_ids(rp.order.patient_id)
        return found + patients_of(obj.study) if label == "pacs.studylink" else found
    if label == "ris.reportversion":
        return patients_of(obj.report)
    if label == "ris.patientmerge":
        return patient_ids(obj.survivor_id) + [(obj.retired_patient_id, obj.retired_issuer_of_patient_id)]
    if label == "ris.statuschange":
        target = status_change_target(obj)
        return patients_of(target) if target is not None else []
    if label == "pacs.study":
        return [(obj.patient_id, obj.issuer_of_patient_id)] if obj.patient_id else []
    if label in ("pacs.instance", "pacs.transfer"):
        return patients_of(obj.study)
    if label == "pacs.performedprocedurestep":
        return [(obj.patient_id, "")] if obj.patient_id else []
    if label == "hl7gateway.inboundmessage":
        return [(obj.patient_id, "")] if obj.patient_id else []
    if label == "hl7gateway.outboundmessage":
        pid = obj.patient_id_text.split("^")
        return [(pid[0], pid[3] if len(pid) > 3 else "")] if pid and pid[0] else []
    return []


def status_change_target(change_row):
    """The row a ``StatusChange`` is about (None when it is gone or of another kind)."""
    from django.apps import apps

    label = {"sps": "ris.ScheduledProcedureStep", "requested_procedure": "ris.RequestedProcedure",
             "order": "ris.Order", "report": "ris.Report", "study": "pacs.Study", "transfer": "pacs.Transfer",
             "oru_outbound": "hl7gateway.OutboundMessage"}.get(change_row.entity)
    model = apps.get_model(label) if label else None
    return model.objects.filter(pk=change_row.object_id).first() if model else None


def objects_of(obj) -> list[dict]:
    """The participant objects of a row: study UID, accession number, order number, message."""
    label = obj._meta.label_lower
    if label == "ris.order":
        return order_objects(obj)
    if label == "ris.requestedprocedure":
        return [{"type": "accession", "id": obj.accession_number},
                {"type": "study", "id": obj.study_instance_uid}]
    if label == "pacs.study":
        found = [{"type": "study", "id": obj.study_instance_uid}]
        return found + ([{"type": "accession", "id": obj.accession_number}] if obj.accession_number else [])
    if label in ("ris.scheduledprocedurestep", "worklist.readingclaim", "ris.report", "pacs.studylink"):
        return objects_of(obj.requested_procedure)
    if label in ("pacs.instance", "pacs.transfer"):
        return objects_of(obj.study)
    return [{"type": label, "id": str(obj.pk)}]


# PS3.15 A.5.3: which message definition a row of each model is audited under.
EVENT_OF_MODEL = {
    "ris.patient": events.PATIENT_RECORD, "ris.patientidentifier": events.PATIENT_RECORD,
    "ris.patientmerge": events.PATIENT_RECORD, "ris.visit": events.PATIENT_RECORD,
    "ris.order": events.ORDER_RECORD, "ris.requestedprocedure": events.ORDER_RECORD,
    "ris.scheduledprocedurestep": events.PROCEDURE_RECORD, "ris.statuschange": events.PROCEDURE_RECORD,
    "ris.report": events.PROCEDURE_RECORD, "ris.reportversion": events.PROCEDURE_RECORD,
    "worklist.readingclaim": events.PROCEDURE_RECORD, "pacs.performedprocedurestep": events.PROCEDURE_RECORD,
    "pacs.study": events.INSTANCES_ACCESSED, "pacs.instance": events.INSTANCES_ACCESSED,
    "pacs.studylink": events.ORDER_RECORD, "pacs.transfer": events.INSTANCES_ACCESSED,
    # A stored HL7 message shown is the order (or the report, for the ORU sent) it carries.
    "hl7gateway.inboundmessage": events.ORDER_RECORD, "hl7gateway.outboundmessage": events.PROCEDURE_RECORD,
}
