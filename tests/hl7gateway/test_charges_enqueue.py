"""Charge posting to billing (IHE RAD-35, DFT^P03): the technical charge with the exam complete,
the professional charge with the final report, each once per procedure and destination; the
credit (FT1-6 CD) once when the order is cancelled after a charge; the setting per procedure
code; nothing for destinations without ``sends_charges``; nothing left by a change that rolled
back.  Through the services that make the changes (study completion, signing, HL7 intake)."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import IntegrityError, transaction
from django.utils import timezone

from hl7gateway.intake import handle_payload
from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import actions, destinations, enqueue
from pacs.models import Study
from pacs.services import completion
from ris.models import RequestedProcedure
from ris.services.transitions import transition
from tests.factories import oru as h
from tests.factories import received_study
from tests.support.hl7 import ack_fields, fixture

pytestmark = pytest.mark.django_db


class Boom(Exception):
    pass


@pytest.fixture
def dests():
    """billing takes charges (and results); the EHR takes results and order status, no charges."""
    return {
        "billing": h.destination("billing", 2576, sends_charges=True),
        "ehr": h.destination("ehr", 2577, sends_order_status=True),
    }


def charge_rows(**filters) -> list[OutboundMessage]:
    return list(OutboundMessage.objects.filter(kind="CHARGE", **filters).select_related("destination")
                .order_by("id"))


def ft1(row: OutboundMessage) -> hl7.Segment:
    return hl7.parse(bytes(row.payload).decode()).segment("FT1")


def complete_by_quiet_period(rp) -> None:
    received_study(rp, last_received_at=timezone.now() - dt.timedelta(hours=1))
    assert completion.sweep_quiet_studies() == 1


def test_exam_complete_posts_the_technical_charge_once_to_billing_only(dests):
    rp = h.study()
    complete_by_quiet_period(rp)
    (row,) = charge_rows()
    assert (row.destination.name, row.charge_kind, row.transaction_type, row.message_type) == (
        "billing", "technical", "CG", "DFT^P03")
    assert row.requested_procedure_id == rp.pk and row.patient_id == rp.order.patient_id
    msg = hl7.parse(bytes(row.payload).decode())
    assert str(msg.segment("MSH")[9]) == "DFT^P03^DFT_P03" and str(msg.segment("PV1")[19]) == rp.order.visit.visit_number
    seg = ft1(row)
    assert (str(seg[6]), str(seg[7][0][0]), str(seg[10])) == ("CG", rp.procedure_code_value, "1")
    assert str(seg[2]) == row.transaction_id == f"T{rp.pk:011d}"
    assert str(seg[21]) == "^ORDERING^OTTO"
    # The same event again (a late instance re-opens and re-completes the study), or a second call: nothing more.
    study = Study.objects.get(requested_procedure=rp)
    transition(study, "RECEIVING", entity="study", cause="late instance", actor="test")
    assert completion.sweep_quiet_studies() == 1
    assert enqueue.enqueue_charge(rp.pk, "technical") == 0
    assert len(charge_rows()) == 1


def test_final_report_posts_the_professional_charge_with_the_reading_radiologist(dests):
    rp, user = h.study(), h.radiologist("rad.reader", first_name="Rita", last_name="Reader")
    h.sign_report(rp, user, "PRELIMINARY")
    assert charge_rows() == []  # a preliminary report is not the reading billed
    h.sign_report(rp, user, "FINAL")
    h.sign_report(rp, user, "ADDENDUM")  # a corrected result, not a second reading
    (row,) = charge_rows()
    assert (row.destination.name, row.charge_kind, row.transaction_type) == ("billing", "professional", "CG")
    seg = ft1(row)
    assert str(seg[20][0][0]) == "rad.reader" and str(seg[2]) == f"P{rp.pk:011d}"


def test_the_setting_per_procedure_code_chooses_the_charges(dests, settings):
    settings.CHARGE_POSTING_BY_CODE = "CTHEAD=technical;XRCHEST=professional;MRKNEE=none"
    user = h.radiologist()
    by_code = {code: h.study(code=code) for code in ("CTHEAD", "XRCHEST", "MRKNEE", "USLIVER")}
    for rp in by_code.values():
        complete_by_quiet_period(rp)
        h.sign_report(rp, user, "FINAL")
    got = {(r.requested_procedure_id, r.charge_kind) for r in charge_rows()}
    assert got == {(by_code["CTHEAD"].pk, "technical"), (by_code["XRCHEST"].pk, "professional"),
                   (by_code["USLIVER"].pk, "technical"), (by_code["USLIVER"].pk, "professional")}


def test_no_charge_for_destinations_without_the_flag():
    h.destination("billing", 2576)  # results only, as every destination was before charges existed
    h.destination("ehr", 2577, sends_order_status=True)
    rp = h.study()
    complete_by_quiet_period(rp)
    h.sign_report(rp, h.radiologist(), "FINAL")
    assert charge_rows() == []
    assert OutboundMessage.objects.filter(kind="STATUS").count() == 2  # the rest goes on as before


def test_a_cancelled_order_is_credited_once_after_its_charge(dests):
    assert ack_fields(handle_payload(fixture("epic_orm_o01_nw.hl7")))["msa_1"] == "AA"
    rp = RequestedProcedure.objects.get(steps__scheduled_procedure_step_id="SPS100001")
    complete_by_quiet_period(rp)
    (charge,) = charge_rows()
    assert ack_fields(handle_payload(fixture("epic_orm_o01_ca.hl7")))["msa_1"] == "AA"
    assert RequestedProcedure.objects.get(pk=rp.pk).status == "CANCELED"
    charge_row, credit = charge_rows()
    assert charge_row.pk == charge.pk
    assert (credit.charge_kind, credit.transaction_type, credit.destination.name) == ("technical", "CD", "billing")
    assert str(ft1(credit)[6]) == "CD" and str(ft1(credit)[2]) == str(ft1(charge)[2]) == charge.transaction_id
    assert str(ft1(credit)[4]) == str(ft1(charge)[4])  # the date of the service it reverses
    assert enqueue.enqueue_credits(rp.pk) == 0  # once
    # A cancelled order posts no new charge (its report, were it signed, is billed by nobody).
    assert enqueue.enqueue_charge(rp.pk, "professional") == 0
    assert len(charge_rows()) == 2


def test_no_credit_without_a_posted_charge(dests):
    assert ack_fields(handle_payload(fixture("epic_orm_o01_nw.hl7")))["msa_1"] == "AA"
    rp = RequestedProcedure.objects.get(steps__scheduled_procedure_step_id="SPS100001")
    complete_by_quiet_period(rp)
    (charge,) = charge_rows()
    actions.cancel(charge.pk, h.radiologist("operator"), "posted by hand in billing")
    assert ack_fields(handle_payload(fixture("epic_orm_o01_ca.hl7")))["msa_1"] == "AA"
    assert len(charge_rows()) == 1  # the operator cancelled the charge: nothing was posted to reverse


def test_the_database_refuses_a_second_charge_row_of_the_same_kind(dests):
    rp = h.study()
    complete_by_quiet_period(rp)
    (row,) = charge_rows()
    with pytest.raises(IntegrityError), transaction.atomic():
        OutboundMessage.objects.create(
            destination=row.destination, kind="CHARGE", message_type="DFT^P03", requested_procedure=rp,
            charge_kind="technical", transaction_type="CG", patient_id=row.patient_id, hl7_version="2.5.1",
            payload=b"", next_attempt_at=timezone.now())


def test_a_rolled_back_change_leaves_no_charge_and_wakes_nobody(dests, django_capture_on_commit_callbacks):
    rp = h.study()
    received_study(rp, last_received_at=timezone.now() - dt.timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(Boom):
            with transaction.atomic():
                completion.sweep_quiet_studies()
                assert len(charge_rows()) == 1  # written inside the transaction of the change
                raise Boom
    assert charge_rows() == [] and callbacks == []


# --- destinations and settings --------------------------------------------------------------------
def test_declared_destinations_take_charges_only_when_told(settings):
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://b:2576?messages=oru,charges,ehr=mllp://e:2577"
    destinations.sync_environment_destinations()
    got = dict(OutboundDestination.objects.values_list("name", "sends_charges"))
    assert got == {"billing": True, "ehr": False}
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://b:2576,ehr=mllp://e:2577"
    destinations.sync_environment_destinations()
    assert not OutboundDestination.objects.get(name="billing").sends_charges


def test_the_system_check_names_the_bad_entry(settings):
    settings.CHARGE_POSTING_BY_CODE = "CTHEAD=technical;XRCHEST=profesional"
    with pytest.raises(SystemCheckError, match=r"hl7gateway\.E105.*XRCHEST=profesional"):
        call_command("check")
    settings.CHARGE_POSTING_BY_CODE = ""
    settings.CHARGE_POSTING = "technical,radiology"
    with pytest.raises(SystemCheckError, match=r"hl7gateway\.E105.*CHARGE_POSTING"):
        call_command("check")
