"""Synthetic worklist data for the MWL / MPPS tests (no real patient data)."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings

from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep, Visit

_seq = itertools.count(1)


def local(y, m, d, hh=0, mm=0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=ZoneInfo(settings.TIME_ZONE))


def make_patient(name="DOE^JANE", patient_id=None, issuer="HOSP", **fields) -> Patient:
    n = next(_seq)
    patient = Patient.objects.create(patient_name=name, **fields)
    PatientIdentifier.objects.create(patient=patient, id_number=patient_id or f"PID{n:05d}", assigning_authority=issuer)
    return patient


def make_step(patient=None, *, accession=None, modality="CT", start=None, station="CT1", status="SCHEDULED",
              sps_id=None, rp_fields=None, order_fields=None, **sps_fields) -> ScheduledProcedureStep:
    n = next(_seq)
    patient = patient or make_patient()
    visit = Visit.objects.create(patient=patient, visit_number=f"V{n:05d}", assigned_location="WARD^1")
    order = Order.objects.create(
        patient=patient, visit=visit, placer_order_number=f"PL{n:05d}", filler_order_number=f"FI{n:05d}",
        referring_physician_name="REF^DOC", ordering_provider="ORD^DOC", **(order_fields or {}),
    )
    rp = RequestedProcedure.objects.create(
        order=order, requested_procedure_id=f"RP{n:05d}", requested_procedure_description="CT HEAD",
        procedure_code_value="CTHD", procedure_code_scheme="LOCAL", procedure_code_meaning="CT head",
        study_instance_uid=f"2.25.{1000 + n}", accession_number=accession or f"ACC{n:05d}", **(rp_fields or {}),
    )
    return ScheduledProcedureStep.objects.create(
        requested_procedure=rp, scheduled_procedure_step_id=sps_id or f"SPS{n:05d}", modality=modality,
        scheduled_station_ae_title=station, scheduled_start=start or local(2026, 11, 26, 9, 0), status=status,
        scheduled_procedure_step_description="head plain", protocol_code_value="P1", protocol_code_scheme="LOCAL",
        protocol_code_meaning="protocol one", **sps_fields,
    )
