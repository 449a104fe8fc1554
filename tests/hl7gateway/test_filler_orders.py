"""Filler orders the EHR knows: an order the department creates on the reconciliation page (ORC-1
SN, HL7 v2.5.1 4.5.1.1) goes to the order placer as ORM^O01 (v2.3.1) or OMI^O23 (v2.5.1) through
the outbox; the placer's answer (ORR^O02 / ORG^O20, MSA-1 AA, ORC-1 NA) assigns the placer order
number, which is stored on the order (audited) and finds it when the EHR later names it in ORC-2.
A rejection, or an answer without ORC-2, fails the message: shown on the outbound page, counted by
the backlog alarm, resent by the operator with the same MSH-10.  Against a real MLLP sink that
answers as an EHR does; delivery is called in-process as the Celery task calls it."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone
from pydicom.uid import generate_uid

from audit.models import AuditRecord
from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage, OutboundMessage
from hl7gateway.order_status import filler_order_refusal, read_order_answer
from hl7gateway.outbox import actions, delivery
from monitoring import selectors, services
from monitoring.models import OUTBOUND_BACKLOG, Alarm
from pacs.models import Study
from project.access import ADMINISTRATOR, TECHNOLOGIST
from project.auditing import events
from ris.models import Order
from tests.factories import make_step, rule
from tests.factories import oru as h
from tests.support.hl7 import ack_fields
from tests.support.mllp_sink import AA, NA, NA_NO_NUMBER, UA

pytestmark = pytest.mark.django_db


@pytest.fixture
def sink(sink):
    sink.mode = NA  # the order placer answers a filler order with ORC-1 NA and its number
    return sink


@pytest.fixture
def fast(fast):
    fast.VNA_DESTINATIONS = ""
    return fast


def unmatched_study(patient_id: str, *, modality: str = "US") -> Study:
    """A received study that matches no order (wrong accession, no scheduled step of its patient)."""
    return Study.objects.create(
        study_instance_uid=generate_uid(), accession_number="TYPO1", patient_id=patient_id,
        issuer_of_patient_id="HOSP", patient_name="TESTPERSON^ANNA^MARIA", modalities_in_study=modality,
        study_description="POCUS", last_received_at=timezone.now(),
    )


def technologist(client):
    user = h.radiologist("tech")
    user.groups.add(Group.objects.get_or_create(name=TECHNOLOGIST)[0])
    client.force_login(user)
    return user


def new_order(client, study: Study, patient) -> Order:
    """The reconciliation page's "new order for this patient" (ORC-1 SN)."""
    response = client.post(reverse("imaging:new_order", args=[study.pk]),
                           {"patient": patient.pk, "description": "POCUS abdomen"})
    assert response.status_code == 302
    study.refresh_from_db()
    return study.requested_procedure.order


def ehr_order_message(control_id: str, order_control: str, order_status: str, placer: str, patient_id: str,
                      accession: str) -> bytes:
    """An ORM^O01 (v2.3.1) of the EHR naming the order by its placer number only (ORC-2)."""
    return "\r".join([
        f"MSH|^~\\&|EPIC|SYNTH_HOSP|PACS|RADIOLOGY|20261203120000||ORM^O01|{control_id}|P|2.3.1",
        f"PID|1||{patient_id}^^^HOSP^MR||TESTPERSON^ANNA^MARIA||19610314|F",
        f"ORC|{order_control}|{placer}|||{order_status}||||||||||",
        "|".join(["OBR", "1", placer, "", "POCUS^POCUS abdomen^LOCAL"] + [""] * 11
                 + ["D123^ORDERING^OTTO", "", "", accession]),  # OBR-16 ordering provider, OBR-18 accession
        "",
    ]).encode()


def test_a_new_order_goes_to_the_ehr_once_as_orm_sn_and_its_placer_number_is_stored(client, sink, fast):
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_results=False, sends_filler_orders=True)
    h.destination("status-only", sink.port, sends_results=False, sends_order_status=True)
    patient = h.patient()
    mrn = patient.identifiers.get().id_number
    technologist(client)
    order = new_order(client, unmatched_study(mrn), patient)
    rp = order.procedures.get()
    row = OutboundMessage.objects.get(status_event="filler-order")  # not to the status-only destination
    assert (row.destination_id, row.message_type, row.order_status) == (dest.pk, "ORM^O01", "CM")

    assert delivery.drain(dest.pk) == 1
    (received,) = sink.wait_for(1)
    assert received.control_id == row.message_control_id and received.payload == bytes(row.payload)
    assert received.segment("MSH")[9] == "ORM^O01" and received.segment("MSH")[12] == "2.3.1"
    orc, obr = received.segment("ORC"), received.segment("OBR")
    assert (orc[1], orc[2], orc[3].split("^")[0], orc[5]) == ("SN", "", order.filler_order_number, "CM")
    assert (obr[2], obr[3].split("^")[0], obr[18]) == ("", order.filler_order_number, rp.accession_number)
    assert obr[4].split("^")[1] == "POCUS abdomen"
    assert received.segment("PID")[3].split("^")[0] == mrn and received.segment("PV1")[2] == "U"

    order.refresh_from_db()
    assert (order.placer_order_number, order.placer_namespace) == (received.placer_order_number, "EHR")
    row.refresh_from_db()
    assert row.status == "DELIVERED" and row.placer_order_number == f"{received.placer_order_number}^EHR"
    audit = AuditRecord.records.get(event_id=events.ORDER_RECORD.value, action=events.UPDATE,
                                    detail__placer_order_number_assigned=row.placer_order_number)
    assert {"type": "order", "id": received.placer_order_number, "issuer": "EHR",
            "detail": "placer order number"} in audit.objects
    # Sent once: nothing more is queued or sent for that order.
    assert delivery.drain(dest.pk) == 0 and sink.count == 1
    assert OutboundMessage.objects.filter(status_event="filler-order").count() == 1


def test_the_ehrs_later_messages_find_the_order_by_the_placer_number(client, sink, fast):
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_results=False, sends_filler_orders=True)
    patient = h.patient()
    mrn = patient.identifiers.get().id_number
    technologist(client)
    order = new_order(client, unmatched_study(mrn), patient)
    rp = order.procedures.get()
    # Before the answer, the EHR's number means nothing to the engine.
    early = ack_fields(handle_payload(ehr_order_message("EHR0001", "XO", "CM", "PLX1^EHR", mrn, rp.accession_number)))
    assert early["msa_1"] == "AE" and "unknown" in early["msa_3"] + str(early["err"])

    delivery.drain(dest.pk)
    placer = sink.wait_for(1)[0].placer_order_number
    ack = ack_fields(handle_payload(ehr_order_message("EHR0002", "XO", "CM", f"{placer}^EHR", mrn,
                                                      rp.accession_number)))
    assert ack["msa_1"] == "AA", ack
    order.refresh_from_db()
    assert order.order_control == "XO" and order.ordering_provider.startswith("ORDERING^OTTO")
    assert InboundMessage.objects.get(message_control_id="EHR0002").status == "APPLIED"

    ack = ack_fields(handle_payload(ehr_order_message("EHR0003", "CA", "CA", f"{placer}^EHR", mrn,
                                                      rp.accession_number)))
    # Found again: the cancel reaches the order's procedure, which was performed, so it is kept
    # COMPLETED with the placer's cancel recorded beside it (a late cancel).
    assert ack["msa_1"] == "AA", ack
    rp.refresh_from_db()
    assert (rp.status, rp.placer_status) == ("COMPLETED", "CANCELED")
    assert "EHR0003" in rp.placer_status_cause


def test_a_rejection_is_shown_alarmed_and_resent_with_the_same_msh10(client, sink, fast, mail_settings):
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_results=False, sends_filler_orders=True)
    rule(OUTBOUND_BACKLOG, "ehr", minutes=60)
    patient = h.patient()
    user = technologist(client)
    order = new_order(client, unmatched_study(patient.identifiers.get().id_number), patient)
    row = OutboundMessage.objects.get()
    sink.script([UA])
    delivery.drain(dest.pk)
    row.refresh_from_db()
    assert row.status == "FAILED" and row.last_outcome == "AR" and "Simulated order rejection" in row.last_error
    assert "ORR^O02" in bytes(row.ack).decode() and "ORC|UA|" in bytes(row.ack).decode()
    order.refresh_from_db()
    assert order.placer_order_number == ""

    # Shown on the outbound page and its detail; counted by the backlog alarm.
    user.groups.add(Group.objects.get_or_create(name=ADMINISTRATOR)[0])
    page = client.get("/interfaces/").content.decode()
    assert row.message_control_id in page and "ORM^O01 ORC-1 SN" in page
    detail = client.get(f"/interfaces/outbound/{row.pk}/").content.decode()
    assert "Filler order (ORC-1 SN" in detail and "Simulated order rejection" in detail
    assert [f["id"] for f in selectors.failed_deliveries()] == [row.pk]
    assert services.evaluate(timezone.now() + dt.timedelta(minutes=61))["opened"] == 1
    assert Alarm.objects.get().interface_key == "ehr"

    # The operator resends it: the same bytes, the same MSH-10; this time the number is assigned.
    actions.retry(row.pk, user, "EHR interface fixed")
    assert delivery.drain(dest.pk) == 1
    first, second = sink.wait_for(2)
    assert first.control_id == second.control_id == row.message_control_id and first.payload == second.payload
    order.refresh_from_db()
    assert order.placer_order_number == second.placer_order_number != ""


def test_the_new_order_leaves_before_the_status_messages_it_causes(client, sink, fast):
    """A destination that takes both hears of the order (SN) before its exam is complete (SC CM)."""
    fast.STUDY_QUIET_PERIOD_SECONDS = 1
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_results=False, sends_filler_orders=True,
                         sends_order_status=True)
    patient = h.patient()
    study = unmatched_study(patient.identifiers.get().id_number)
    Study.objects.filter(pk=study.pk).update(last_received_at=timezone.now() - dt.timedelta(minutes=5))
    technologist(client)
    new_order(client, study, patient)
    rows = list(OutboundMessage.objects.order_by("id"))
    assert [(r.status_event, r.order_control) for r in rows] == [("filler-order", "SN"), ("exam-complete", "SC")]
    assert delivery.drain(dest.pk) == 2
    assert [m.segment("ORC")[1] for m in sink.wait_for(2)] == ["SN", "SC"]


def test_an_answer_without_a_placer_number_fails_the_message(client, sink, fast):
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_results=False, sends_filler_orders=True)
    patient = h.patient()
    technologist(client)
    order = new_order(client, unmatched_study(patient.identifiers.get().id_number), patient)
    sink.script([NA_NO_NUMBER])
    delivery.drain(dest.pk)
    row = OutboundMessage.objects.get()
    assert row.status == "FAILED" and "ORC-2 (placer order number) is empty" in row.last_error
    attempt = row.attempts.get()
    assert attempt.outcome == "AR" and attempt.detail.startswith("MSA-1 AA, but")
    order.refresh_from_db()
    assert order.placer_order_number == ""


def test_a_placer_number_another_order_holds_is_refused(client, sink, fast):
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_results=False, sends_filler_orders=True)
    patient = h.patient()
    technologist(client)
    order = new_order(client, unmatched_study(patient.identifiers.get().id_number), patient)
    # Another order already holds the number the sink is about to assign.
    other = make_step(h.patient()).requested_procedure.order
    Order.objects.filter(pk=other.pk).update(placer_order_number=f"PL{sink.port}00001", placer_namespace="EHR")
    delivery.drain(dest.pk)
    row = OutboundMessage.objects.get()
    assert row.status == "FAILED" and "belongs to another order" in row.last_error
    order.refresh_from_db()
    assert order.placer_order_number == ""


def test_a_v251_destination_gets_omi_o23_sn_and_answers_org_o20(client, sink, fast):
    dest = h.destination("ehr", sink.port, hl7_version="2.5.1", sends_results=False, sends_filler_orders=True)
    patient = h.patient()
    technologist(client)
    order = new_order(client, unmatched_study(patient.identifiers.get().id_number, modality="US"), patient)
    rp = order.procedures.get()
    row = OutboundMessage.objects.get()
    assert row.message_type == "OMI^O23" and row.message_control_id.startswith("OSN")
    assert delivery.drain(dest.pk) == 1
    (received,) = sink.wait_for(1)
    assert received.segment("MSH")[9] == "OMI^O23^OMI_O23"
    assert received.segment("ORC")[1] == "SN" and received.segment("ORC")[3].split("^")[0] == order.filler_order_number
    assert received.segment("OBR")[18] == rp.accession_number
    ipc = received.segment("IPC")
    assert (ipc[1], ipc[3], ipc[5].split("^")[0]) == (rp.accession_number, rp.study_instance_uid, "US")
    row.refresh_from_db()
    assert row.status == "DELIVERED" and "ORG^O20" in bytes(row.attempts.get().ack).decode()
    order.refresh_from_db()
    assert order.placer_order_number == received.placer_order_number


def test_other_sink_users_still_get_a_plain_ack(sink, fast):
    """The sink's ACK modes are unchanged by the order placer's answers."""
    rp = h.study()
    rp.steps.update(status="SCHEDULED")
    sink.mode = AA
    dest = h.destination("billing", sink.port)
    h.sign_report(rp, h.radiologist())
    delivery.drain(dest.pk)
    assert "ACK^R01" in bytes(OutboundMessage.objects.get().attempts.get().ack).decode()


@pytest.mark.parametrize(("answer", "reason"), [
    (b"MSH|^~\\&|EHR|H|PACS|R|20261203||ORR^O02|1|P|2.3.1\rMSA|AA|OSN1\rORC|NA|PL7\\S\\X^EHR|F1\r", ""),
    (b"MSH|^~\\&|EHR|H|PACS|R|20261203||ORR^O02|1|P|2.3.1\rMSA|AA|OSN1\rORC|OK|PL7^EHR\r", "ORC-1 OK is not NA"),
    (b"MSH|^~\\&|EHR|H|PACS|R|20261203||ACK|1|P|2.3.1\rMSA|AA|OSN1\r", "ORC-1 (empty) is not NA"),
])
def test_reading_the_placers_answer(answer, reason):
    read = read_order_answer(answer)
    assert filler_order_refusal(read).startswith(reason)
    if not reason:
        assert (read.message_type, read.placer_order_number, read.placer_namespace) == ("ORR^O02", "PL7^X", "EHR")
