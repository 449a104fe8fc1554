"""Test data for the ORU outbox: invented patients, orders and signed reports (no real patient data).

Reports are signed through the real domain service ``ris.services.reports.sign`` so that the
outbox sees exactly what the browser and the dictation API produce.
"""

from __future__ import annotations

import datetime as dt
import itertools

from django.contrib.auth.models import Group, User
from django.utils import timezone

from hl7gateway.models import OutboundDestination
from project.access import RADIOLOGIST
from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep, Visit
from ris.services.reports import sign

_seq = itertools.count(1)


def radiologist(username: str = "", *, first_name: str = "Gregory", last_name: str = "Hausmann") -> User:
    username = username or f"rad{next(_seq)}"
    user = User.objects.create_user(username, password="pw-For-Tests-1", first_name=first_name, last_name=last_name)
    user.groups.add(Group.objects.get_or_create(name=RADIOLOGIST)[0])
    return user


def patient(*, name: str = "TESTPERSON^ANNA^MARIA", mrn: str = "", issuer: str = "HOSP") -> Patient:
    n = next(_seq)
    p = Patient.objects.create(patient_name=name, patient_birth_date=dt.date(1961, 3, 14), patient_sex="F")
    PatientIdentifier.objects.create(patient=p, id_number=mrn or f"MRN{n:06d}", assigning_authority=issuer,
                                     identifier_type_code="MR")
    return p


def study(*, for_patient: Patient | None = None, code: str = "CTCHEST", meaning: str = "CT CHEST W/O CONTRAST",
          scheme: str = "LOCAL", modality: str = "CT", placer_namespace: str = "EHR") -> RequestedProcedure:
    n = next(_seq)
    p = for_patient or patient()
    visit = Visit.objects.create(patient=p, visit_number=f"VN{n:06d}", patient_class="O",
                                 referring_physician_name="REFERRER^ROSA")
    order = Order.objects.create(patient=p, visit=visit, placer_order_number=f"PL{n:06d}",
                                 placer_namespace=placer_namespace, filler_order_number=f"FL{n:06d}",
                                 ordering_provider="ORDERING^OTTO")
    rp = RequestedProcedure.objects.create(
        order=order, requested_procedure_id=f"RP{n}", requested_procedure_description=meaning,
        procedure_code_value=code, procedure_code_meaning=meaning, procedure_code_scheme=scheme,
        study_instance_uid=f"2.25.{n}{int(timezone.now().timestamp() * 1000)}", accession_number=f"ACC{n:08d}",
    )
    ScheduledProcedureStep.objects.create(
        requested_procedure=rp, scheduled_procedure_step_id=f"SPS{n}", modality=modality,
        scheduled_start=timezone.now().replace(microsecond=0) - dt.timedelta(hours=1), status="COMPLETED",
    )
    return rp


def destination(name: str, port: int, *, host: str = "127.0.0.1", **fields) -> OutboundDestination:
    return OutboundDestination.objects.create(name=name, host=host, port=port, **fields)


def sign_report(rp: RequestedProcedure, user: User, kind: str = "FINAL", **kwargs):
    """Sign through the domain service (it calls hl7gateway.enqueue.enqueue_oru in its transaction)."""
    if kind == "ADDENDUM":
        kwargs.setdefault("addendum", "Addendum text.")
    else:
        kwargs.setdefault("findings", "No focal consolidation.\nNo pleural effusion.")
        kwargs.setdefault("impression", "Normal chest CT.")
    return sign(rp.pk, user, kind, **kwargs)
