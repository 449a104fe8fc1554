"""Test data, invented (no real patient data): users, patients with their identifiers, and the
chain an order makes (visit, order, requested procedure, scheduled procedure step), reports
signed through the domain service, outbound HL7 destinations, alarm rules.

One builder writes each kind of row (``user``, ``patient``, ``procedure``); the flavours below
only choose its values, as each kind of test needs them:

- ``make_patient``, ``make_step``: the MWL and imaging tests (a visit, codes and a protocol on
  every step, so that a universal C-FIND query has every return key to answer);
- ``reading.study``: a study on the radiologists' reading worklist (ready for reading unless
  ``ready=False``);
- ``oru.study``, ``oru.patient``, ``oru.sign_report``: a performed study and its signed reports,
  for the ORU^R01 outbox (the PID, PV1 and OBR fields the messages carry are all filled).

Identifiers come from one counter, so rows of different flavours never collide in a test.
"""

from __future__ import annotations

import datetime as dt
import itertools
from datetime import datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.utils import timezone
from pydicom.uid import generate_uid

from hl7gateway.models import InboundMessage, OutboundDestination
from monitoring.models import AlarmRule
from pacs import storage
from pacs.models import Instance, Series, Study, Transfer, TransferItem, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from project.access import RADIOLOGIST
from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep, Visit
from ris.services.reports import sign
from ris.services.transitions import transition
from worklist.services import mark_ready_for_reading

PASSWORD = "pw-For-Tests-1"

_seq = itertools.count(1)


def _next() -> int:
    return next(_seq)


def local(y, m, d, hh=0, mm=0) -> datetime:
    """A wall-clock time in the engine's TIME_ZONE (scheduled steps are local times, PS3.4 K.6)."""
    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo(settings.TIME_ZONE))


# ------------------------------------------------------------------------------------------ users
def user(username: str = "", *roles: str, first_name: str = "", last_name: str = "", password: str = PASSWORD) -> User:
    """A user with a password, in the groups named by ``roles`` (project.access)."""
    u = User.objects.create_user(username or f"user{_next()}", password=password, first_name=first_name,
                                 last_name=last_name)
    for role in roles:
        u.groups.add(Group.objects.get_or_create(name=role)[0])
    return u


def radiologist(username: str = "", *, first_name: str = "Gregory", last_name: str = "Hausmann") -> User:
    return user(username or f"rad{_next()}", RADIOLOGIST, first_name=first_name, last_name=last_name)


# --------------------------------------------------------------------------------------- patients
def patient(name: str = "DOE^JANE", patient_id: str | None = None, issuer: str = "HOSP", *,
            identifier_type_code: str = "", **fields) -> Patient:
    """A patient and one identifier (PID-3: ID, assigning authority, type code)."""
    n = _next()
    p = Patient.objects.create(patient_name=name, **fields)
    PatientIdentifier.objects.create(patient=p, id_number=patient_id or f"PID{n:05d}", assigning_authority=issuer,
                                     identifier_type_code=identifier_type_code)
    return p


make_patient = patient


def procedure(for_patient: Patient, *, visit: dict | None, order: dict, requested: dict, step: dict
              ) -> ScheduledProcedureStep:
    """The chain of one order: visit (unless ``visit`` is None), order, requested procedure and
    its scheduled procedure step, with the fields given for each."""
    v = Visit.objects.create(patient=for_patient, **visit) if visit is not None else None
    o = Order.objects.create(patient=for_patient, visit=v, **order)
    rp = RequestedProcedure.objects.create(order=o, **requested)
    return ScheduledProcedureStep.objects.create(requested_procedure=rp, **step)


# ----------------------------------------------------------------------- MWL and imaging flavour
def make_step(patient=None, *, accession=None, modality="CT", start=None, station="CT1", status="SCHEDULED",
              sps_id=None, rp_fields=None, order_fields=None, **sps_fields) -> ScheduledProcedureStep:
    """A scheduled step with every field an MWL answer returns (PS3.4 Table K.6-1)."""
    n = _next()
    return procedure(
        patient or make_patient(),
        visit={"visit_number": f"V{n:05d}", "assigned_location": "WARD^1"},
        order={"placer_order_number": f"PL{n:05d}", "filler_order_number": f"FI{n:05d}",
               "referring_physician_name": "REF^DOC", "ordering_provider": "ORD^DOC", **(order_fields or {})},
        requested={"requested_procedure_id": f"RP{n:05d}", "requested_procedure_description": "CT HEAD",
                   "procedure_code_value": "CTHD", "procedure_code_scheme": "LOCAL",
                   "procedure_code_meaning": "CT head", "study_instance_uid": f"2.25.{1000 + n}",
                   "accession_number": accession or f"ACC{n:05d}", **(rp_fields or {})},
        step={"scheduled_procedure_step_id": sps_id or f"SPS{n:05d}", "modality": modality,
              "scheduled_station_ae_title": station, "scheduled_start": start or local(2026, 11, 26, 9, 0),
              "status": status, "scheduled_procedure_step_description": "head plain", "protocol_code_value": "P1",
              "protocol_code_scheme": "LOCAL", "protocol_code_meaning": "protocol one", **sps_fields},
    )


# ------------------------------------------------------------------------ reading worklist flavour
def reading_study(*, priority: str = "ROUTINE", modality: str = "CT", patient_name: str | None = None,
                  description: str = "CT HEAD W/O CONTRAST", code: str = "CTHEAD", ready: bool = True,
                  ready_at: dt.datetime | None = None) -> RequestedProcedure:
    """A requested procedure on the reading worklist (ready for reading unless ``ready=False``)."""
    n = _next()
    step = procedure(
        patient(patient_name or f"TEST^PATIENT{n}", f"MRN{n:06d}", "HOSP"),
        visit=None,
        order={"placer_order_number": f"PL{n:06d}", "filler_order_number": f"FL{n:06d}"},
        requested={"requested_procedure_id": f"RP{n}", "requested_procedure_description": description,
                   "procedure_code_value": code, "requested_procedure_priority": priority,
                   "study_instance_uid": f"1.2.826.0.1.3680043.10.543.{n}.{timezone.now().timestamp():.0f}",
                   "accession_number": f"T{n:08d}"},
        step={"scheduled_procedure_step_id": f"SPS{n}", "modality": modality, "scheduled_start": timezone.now()},
    )
    if ready:
        mark_ready_for_reading(step.requested_procedure_id, ready_at=ready_at)
    return step.requested_procedure


reading = SimpleNamespace(user=user, study=reading_study)


# ------------------------------------------------------------------------------ ORU outbox flavour
def oru_patient(*, name: str = "TESTPERSON^ANNA^MARIA", mrn: str = "", issuer: str = "HOSP") -> Patient:
    """A patient with what PID of an ORU^R01 carries (HL7 v2.5.1 section 3.4.2): birth date, sex, MR number."""
    return patient(name, mrn or f"MRN{_next():06d}", issuer, identifier_type_code="MR",
                   patient_birth_date=dt.date(1961, 3, 14), patient_sex="F")


def oru_study(*, for_patient: Patient | None = None, code: str = "CTCHEST", meaning: str = "CT CHEST W/O CONTRAST",
              scheme: str = "LOCAL", modality: str = "CT", placer_namespace: str = "EHR") -> RequestedProcedure:
    """A performed (COMPLETED) study with the visit, order numbers and providers an ORU^R01's
    PV1, ORC and OBR carry."""
    n = _next()
    step = procedure(
        for_patient or oru_patient(),
        visit={"visit_number": f"VN{n:06d}", "patient_class": "O", "referring_physician_name": "REFERRER^ROSA"},
        order={"placer_order_number": f"PL{n:06d}", "placer_namespace": placer_namespace,
               "filler_order_number": f"FL{n:06d}", "ordering_provider": "ORDERING^OTTO"},
        requested={"requested_procedure_id": f"RP{n}", "requested_procedure_description": meaning,
                   "procedure_code_value": code, "procedure_code_meaning": meaning, "procedure_code_scheme": scheme,
                   "study_instance_uid": f"2.25.{n}{int(timezone.now().timestamp() * 1000)}",
                   "accession_number": f"ACC{n:08d}"},
        step={"scheduled_procedure_step_id": f"SPS{n}", "modality": modality,
              "scheduled_start": timezone.now().replace(microsecond=0) - dt.timedelta(hours=1),
              "status": "COMPLETED"},
    )
    return step.requested_procedure


def destination(name: str, port: int, *, host: str = "127.0.0.1", **fields) -> OutboundDestination:
    """An outbound HL7 destination (the ORU receivers: EHR, billing)."""
    return OutboundDestination.objects.create(name=name, host=host, port=port, **fields)


def sign_report(rp: RequestedProcedure, by: User, kind: str = "FINAL", **kwargs):
    """Sign through the domain service ``ris.services.reports.sign``, as the browser and the
    dictation API do (the outbox sees the same rows: its receiver enqueues the ORU^R01 in the
    signing transaction)."""
    if kind == "ADDENDUM":
        kwargs.setdefault("addendum", "Addendum text.")
    else:
        kwargs.setdefault("findings", "No focal consolidation.\nNo pleural effusion.")
        kwargs.setdefault("impression", "Normal chest CT.")
    return sign(rp.pk, by, kind, **kwargs)


oru = SimpleNamespace(radiologist=radiologist, patient=oru_patient, study=oru_study, destination=destination,
                      sign_report=sign_report)


# -------------------------------------------------------------------------------------- imaging
def committing_transfer(*, instances: int = 3, ae_title: str = "VNA", host: str = "127.0.0.1") -> Transfer:
    """A complete study sent to a VNA and waiting for its storage commitment (PS3.4 J.3): every
    item sent, the N-ACTION's Transaction UID recorded, the transfer COMMITTING.  Its files are
    placeholders in STORAGE_DIR (request the ``store_dir`` fixture)."""
    study = Study.objects.create(study_instance_uid=generate_uid(), last_received_at=timezone.now(),
                                 status=im.RECEIVING, batch=1)
    transition(study, im.COMPLETE, entity="study", cause="test", actor="test")
    series = Series.objects.create(study=study, series_instance_uid=generate_uid())
    destination = VnaDestination.objects.create(name=ae_title.lower(), ae_title=ae_title, host=host, port=1)
    t = Transfer.objects.create(study=study, destination=destination, batch=1, next_attempt_at=timezone.now())
    for _ in range(instances):
        uid = generate_uid()
        rel = storage.relative_path(study.study_instance_uid, series.series_instance_uid, uid)
        path = storage.absolute_path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x00" * 128 + b"DICM")
        instance = Instance.objects.create(study=study, series=series, sop_instance_uid=uid, sop_class_uid="1.2.3",
                                           transfer_syntax_uid="1.2.840.10008.1.2.1", path=rel, size=132, batch=1,
                                           received_at=timezone.now())
        TransferItem.objects.create(transfer=t, instance=instance, status=tr.ITEM_SENT)
    transition(t, tr.IN_PROGRESS, entity="transfer", cause="test", actor="test")
    t.transaction_uid = generate_uid()
    t.commitment_requested_at = timezone.now()
    t.attempts = 1
    t.save()
    transition(t, tr.COMMITTING, entity="transfer", cause="test", actor="test")
    return t


def vna_study(rp: RequestedProcedure, destination: VnaDestination, *, instances: int = 2, sent: bool = True,
              patient_name: str = "") -> Study:
    """The complete, matched study of ``rp`` with one transfer to ``destination``: its instances
    committed by the VNA (``sent``), or still waiting to go (not in the VNA).  Files are
    placeholders in STORAGE_DIR (request the ``store_dir`` fixture)."""
    identifier = rp.order.patient.primary_identifier
    study = Study.objects.create(
        study_instance_uid=rp.study_instance_uid, accession_number=rp.accession_number, requested_procedure=rp,
        match_method=im.MATCH_ACCESSION, patient_id=identifier.id_number,
        issuer_of_patient_id=identifier.assigning_authority, patient_name=patient_name or rp.order.patient.patient_name,
        status=im.RECEIVING, batch=1, last_received_at=timezone.now())
    transition(study, im.COMPLETE, entity="study", cause="test", actor="test")
    series = Series.objects.create(study=study, series_instance_uid=generate_uid())
    t = Transfer.objects.create(study=study, destination=destination, batch=1, next_attempt_at=timezone.now())
    for _ in range(instances):
        uid = generate_uid()
        rel = storage.relative_path(study.study_instance_uid, series.series_instance_uid, uid)
        storage.absolute_path(rel).parent.mkdir(parents=True, exist_ok=True)
        storage.absolute_path(rel).write_bytes(b"\x00" * 128 + b"DICM")
        instance = Instance.objects.create(study=study, series=series, sop_instance_uid=uid, sop_class_uid="1.2.3",
                                           transfer_syntax_uid="1.2.840.10008.1.2.1", path=rel, size=132, batch=1,
                                           received_at=timezone.now())
        TransferItem.objects.create(transfer=t, instance=instance,
                                    status=tr.ITEM_COMMITTED if sent else tr.ITEM_PENDING)
    if sent:
        for status in (tr.IN_PROGRESS, tr.COMMITTING, tr.COMMITTED):
            transition(t, status, entity="transfer", cause="test", actor="test")
    return study


def received_study(rp: RequestedProcedure, *, last_received_at: datetime | None = None) -> Study:
    """The images of ``rp`` as received and matched (RECEIVING: study completion decides when they
    are complete), without files; ``last_received_at`` backdates the last arrival (quiet period)."""
    return Study.objects.create(study_instance_uid=rp.study_instance_uid, accession_number=rp.accession_number,
                                requested_procedure=rp, match_method="accession", status=im.RECEIVING,
                                last_received_at=last_received_at or timezone.now())


# ------------------------------------------------------------------------------------- monitoring
def rule(kind: str, key: str = "", *, webhook_url: str = "", minutes: int = 30, name: str = "",
         **fields) -> AlarmRule:
    """An alarm rule notifying two addresses (and ``webhook_url`` when given)."""
    return AlarmRule.objects.create(name=name or f"{kind} {key}".strip(), kind=kind, interface_key=key,
                                    threshold_minutes=minutes, notify_emails="ops@pacs.test, it@pacs.test",
                                    webhook_url=webhook_url, **fields)



def backdate_inbound(minutes: float) -> None:
    """Every inbound HL7 message received ``minutes`` ago (an interface gone quiet since)."""
    InboundMessage.objects.update(received_at=timezone.now() - dt.timedelta(minutes=minutes))
