"""Test data for the reading worklist: invented patients and studies (no real patient data)."""

from __future__ import annotations

import datetime as dt
import itertools

from django.contrib.auth.models import Group, User
from django.utils import timezone

from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep
from worklist.services import mark_ready_for_reading

_seq = itertools.count(1)


def user(username: str, *roles: str, first_name: str = "", last_name: str = "", password: str = "pw-For-Tests-1"):
    u = User.objects.create_user(username, password=password, first_name=first_name, last_name=last_name)
    for role in roles:
        u.groups.add(Group.objects.get_or_create(name=role)[0])
    return u


def study(*, priority: str = "ROUTINE", modality: str = "CT", patient_name: str | None = None,
          description: str = "CT HEAD W/O CONTRAST", code: str = "CTHEAD", ready: bool = True,
          ready_at: dt.datetime | None = None) -> RequestedProcedure:
    n = next(_seq)
    patient = Patient.objects.create(patient_name=patient_name or f"TEST^PATIENT{n}")
    PatientIdentifier.objects.create(patient=patient, id_number=f"MRN{n:06d}", assigning_authority="HOSP")
    order = Order.objects.create(patient=patient, placer_order_number=f"PL{n:06d}", filler_order_number=f"FL{n:06d}")
    rp = RequestedProcedure.objects.create(
        order=order, requested_procedure_id=f"RP{n}", requested_procedure_description=description,
        procedure_code_value=code, requested_procedure_priority=priority,
        study_instance_uid=f"1.2.826.0.1.3680043.10.543.{n}.{timezone.now().timestamp():.0f}",
        accession_number=f"T{n:08d}",
    )
    ScheduledProcedureStep.objects.create(
        requested_procedure=rp, scheduled_procedure_step_id=f"SPS{n}", modality=modality,
        scheduled_start=timezone.now(),
    )
    if ready:
        mark_ready_for_reading(rp.pk, ready_at=ready_at)
    return rp
