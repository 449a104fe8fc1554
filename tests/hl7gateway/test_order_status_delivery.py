"""Order status messages (ORM^O01 / OMI^O23, IHE RAD-3) go the way of the ORU^R01: the same queue,
in order per patient and destination, retried with the outbox's backoff, held back by a failed
message, visible on the operator page and counted by the outbound backlog alarm.  Against a real
MLLP sink; delivery is called in-process as the Celery task calls it (the worker process is in
test_order_status_worker.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone
from pydicom.uid import generate_uid

from hl7gateway.models import OutboundMessage
from hl7gateway.outbox import actions, delivery
from monitoring import services
from monitoring.models import OUTBOUND_BACKLOG, Alarm
from pacs.services import mpps
from project.access import ADMINISTRATOR
from tests.factories import oru as h
from tests.factories import rule
from tests.support.mllp_sink import AA, AE, AR
from tests.support.mpps import n_create_dataset
from tests.support.net import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast(fast):
    fast.HL7_ORU_BATCH_SIZE = 50
    return fast


def scheduled(patient=None):
    """An order of ``patient`` whose exam has not started (its step SCHEDULED)."""
    rp = h.study(for_patient=patient)
    rp.steps.update(status="SCHEDULED")
    return rp


def start_exam(rp) -> None:
    mpps.create(generate_uid(), n_create_dataset(rp.steps.get()).to_json_dict(), calling_ae_title="CT1")


def test_one_patients_status_and_result_leave_in_the_order_they_were_caused(sink, fast):
    dest = h.destination("ehr", sink.port, sends_order_status=True)  # v2.5.1: OMI^O23
    rp, user = scheduled(), h.radiologist()
    start_exam(rp)  # OMI^O23 ORC-5 IP
    version = h.sign_report(rp, user)  # OMI^O23 ORC-5 CM (report final), then the ORU^R01 F
    rows = list(OutboundMessage.objects.order_by("id"))
    assert [(r.message_type, r.order_status, r.result_status) for r in rows] == [
        ("OMI^O23", "IP", ""), ("OMI^O23", "CM", "F"), ("ORU^R01", "", "F")]
    assert rows[2].report_version_id == version.pk
    assert delivery.drain(dest.pk) == 3
    received = sink.wait_for(3)
    assert [m.control_id for m in received] == [r.message_control_id for r in rows]
    assert [m.segment("MSH")[9] for m in received] == ["OMI^O23^OMI_O23", "OMI^O23^OMI_O23", "ORU^R01^ORU_R01"]
    assert [m.segment("ORC")[5] for m in received[:2]] == ["IP", "CM"]
    assert [m.payload for m in received] == [bytes(r.payload) for r in rows]  # the stored bytes
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {"DELIVERED"}


def test_a_rejected_status_message_holds_back_its_patients_result_not_others(sink, fast):
    dest = h.destination("ehr", sink.port, hl7_version="2.3.1", sends_order_status=True)
    user = h.radiologist()
    first, other = scheduled(), scheduled()
    start_exam(first)
    h.sign_report(first, user)
    h.sign_report(other, user)
    ip, cm, oru_first, cm_other, oru_other = OutboundMessage.objects.order_by("id")
    assert [r.message_type for r in (ip, cm, oru_first, cm_other, oru_other)] == [
        "ORM^O01", "ORM^O01", "ORU^R01", "ORM^O01", "ORU^R01"]
    assert oru_other.patient_id != ip.patient_id and cm.status_event == cm_other.status_event == "report-final"
    sink.script([AR])
    delivery.drain(dest.pk)
    assert sink.control_ids() == [ip.message_control_id, cm_other.message_control_id, oru_other.message_control_id]
    statuses = dict(OutboundMessage.objects.values_list("pk", "status"))
    assert [statuses[r.pk] for r in (ip, cm, oru_first, cm_other, oru_other)] == [
        "FAILED", "PENDING", "PENDING", "DELIVERED", "DELIVERED"]
    # The operator cancels the rejected one: the patient's next messages leave, in order.
    operator = h.radiologist("operator")
    actions.cancel(ip.pk, operator, "placer does not know this order")
    sink.mode = AA
    delivery.drain(dest.pk)
    assert sink.control_ids()[3:] == [cm.message_control_id, oru_first.message_control_id]


def test_an_ae_is_retried_with_the_outbox_backoff(sink, fast):
    dest = h.destination("ehr", sink.port, sends_order_status=True, sends_results=False)
    start_exam(scheduled())
    row = OutboundMessage.objects.get()
    sink.script([AE])
    before = timezone.now()
    delivery.drain(dest.pk)
    row.refresh_from_db()
    assert row.status == "PENDING" and row.attempt_count == 1 and row.last_outcome == "AE"
    assert before + dt.timedelta(seconds=0.9) <= row.next_attempt_at <= before + dt.timedelta(seconds=3)
    OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    assert delivery.deliver(row.pk) == "DELIVERED"
    assert [a.outcome for a in row.attempts.order_by("number")] == ["AE", "AA"]


def test_the_operator_page_shows_status_messages(client, sink, fast):
    h.destination("ehr", sink.port, hl7_version="2.3.1", sends_order_status=True)
    start_exam(scheduled())
    row = OutboundMessage.objects.get()
    user = h.radiologist("operator")
    user.groups.add(Group.objects.get_or_create(name=ADMINISTRATOR)[0])
    client.force_login(user)
    page = client.get("/interfaces/").content.decode()
    assert row.message_control_id in page and "ORM^O01 ORC-5 IP" in page
    detail = client.get(f"/interfaces/outbound/{row.pk}/").content.decode()
    assert "ORM^O01 " + row.message_control_id in detail and "Order status (ORC-1 SC, ORC-5)" in detail


def test_the_backlog_alarm_counts_status_messages(mail_settings, fast):
    fast.HL7_ORU_CONNECT_TIMEOUT_SECONDS = 0.5
    dest = h.destination("ehr", free_port(), sends_order_status=True)  # nothing listens there
    rule(OUTBOUND_BACKLOG, "ehr", minutes=60)
    start_exam(scheduled())
    assert delivery.drain(dest.pk) == 0  # connection refused: waits for its backoff
    start = timezone.now()
    assert services.evaluate(start + dt.timedelta(minutes=61))["opened"] == 1
    assert Alarm.objects.get().interface_key == "ehr"
