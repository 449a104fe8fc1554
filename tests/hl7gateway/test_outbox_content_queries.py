"""The plain values of each outbound message (hl7gateway.outbox.content) read the patient, the
visit, the order and the procedure's steps once per message: PID / PV1 from the order loaded with
its patient and visit, one query for PID-3, one for the steps (OBR-7, FT1-4, FT1-20)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from hl7gateway import charges, order_status
from hl7gateway.outbox.content import content_for_charge, content_for_report_version, content_for_status
from ris.models import ReportVersion, RequestedProcedure
from tests.factories import oru as h

pytestmark = pytest.mark.django_db


def loaded(rp) -> RequestedProcedure:
    """The procedure as the outbox reads it: with its order, patient and visit."""
    return RequestedProcedure.objects.select_related("order__patient", "order__visit").get(pk=rp.pk)


def test_order_status_reads_identifiers_and_steps_once(django_assert_num_queries):
    rp = loaded(h.study())
    step = rp.steps.get()
    with django_assert_num_queries(2):  # PID-3, the steps
        content = content_for_status(rp, order_status.STARTED, timezone.now())
    assert content.visit_number == rp.order.visit.visit_number and content.patient_class == "O"
    assert content.referring_physician.family == "REFERRER"
    assert content.observation_datetime == step.scheduled_start
    assert [s.step_id for s in content.steps] == [step.scheduled_procedure_step_id]


def test_technical_charge_reads_identifiers_and_steps_once(django_assert_num_queries):
    rp = h.study()
    step = rp.steps.get()
    step.scheduled_performing_physician_name = "PERFORMER^PAUL"
    step.save(update_fields=["scheduled_performing_physician_name"])
    rp = loaded(rp)
    with django_assert_num_queries(2):  # PID-3, the steps
        content = content_for_charge(rp, charges.TECHNICAL, charges.CHARGE, timezone.now())
    assert content.performed_by.family == "PERFORMER"
    assert content.transaction_at == step.scheduled_start
    assert content.patient_identifiers[0].id_number == rp.order.patient.identifiers.get().id_number


def test_report_reads_identifiers_steps_and_addenda_once(django_assert_num_queries):
    rp = h.study()
    signed = h.sign_report(rp, h.radiologist())
    version = ReportVersion.objects.select_related(
        "report__requested_procedure__order__patient", "report__requested_procedure__order__visit", "signed_by",
    ).get(pk=signed.pk)
    with django_assert_num_queries(3):  # PID-3, the steps, the addenda
        content = content_for_report_version(version)
    assert content.visit_number == rp.order.visit.visit_number
    assert content.observation_datetime == rp.steps.get().scheduled_start
    assert content.text_lines[0] == "FINDINGS:"
