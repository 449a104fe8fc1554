"""Charges (DFT^P03, IHE RAD-35) go the way of every outbound message: the same queue, in order per
patient and destination, retried with the outbox's backoff -- a resend is the same bytes, so the
same FT1-2 transaction ID and MSH-10 -- and counted by the outbound backlog alarm.  Against a real
MLLP sink; delivery is called in-process as the Celery task calls it."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest
from django.utils import timezone

from hl7gateway.models import OutboundMessage
from hl7gateway.outbox import delivery
from monitoring import services
from monitoring.models import OUTBOUND_BACKLOG, Alarm
from pacs.services import completion
from tests.factories import oru as h
from tests.factories import received_study, rule
from tests.support.mllp_sink import AA, AE
from tests.support.net import free_port

pytestmark = pytest.mark.django_db


def complete(rp) -> None:
    received_study(rp, last_received_at=timezone.now() - dt.timedelta(hours=1))
    assert completion.sweep_quiet_studies() == 1


def test_charges_leave_in_order_with_the_results_of_their_patient(sink, fast):
    dest = h.destination("billing", sink.port, hl7_version="2.3.1", sends_charges=True)
    rp = h.study()
    complete(rp)  # DFT^P03 technical
    h.sign_report(rp, h.radiologist(), "FINAL")  # DFT^P03 professional, then the ORU^R01
    rows = list(OutboundMessage.objects.order_by("id"))
    assert [(r.message_type, r.charge_kind) for r in rows] == [
        ("DFT^P03", "technical"), ("DFT^P03", "professional"), ("ORU^R01", "")]
    assert delivery.drain(dest.pk) == 3
    received = sink.wait_for(3)
    assert [m.control_id for m in received] == [r.message_control_id for r in rows]
    assert [m.payload for m in received] == [bytes(r.payload) for r in rows]
    parsed = [hl7.parse(m.payload.decode()) for m in received[:2]]
    assert [str(p.segment("MSH")[9]) for p in parsed] == ["DFT^P03", "DFT^P03"]
    assert [str(p.segment("FT1")[2]) for p in parsed] == [f"T{rp.pk:011d}", f"P{rp.pk:011d}"]
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {"DELIVERED"}


def test_a_resend_carries_the_same_transaction_id(sink, fast):
    dest = h.destination("billing", sink.port, sends_charges=True, sends_results=False)
    complete(h.study())
    row = OutboundMessage.objects.get()
    sink.script([AE])
    delivery.drain(dest.pk)
    row.refresh_from_db()
    assert row.status == "PENDING" and row.last_outcome == "AE"
    OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
    sink.mode = AA
    assert delivery.deliver(row.pk) == "DELIVERED"
    first, second = sink.wait_for(2)
    assert first.payload == second.payload  # the same bytes: MSH-10 and FT1-2 unchanged
    ids = {str(hl7.parse(m.payload.decode()).segment("FT1")[2]) for m in (first, second)}
    assert ids == {row.transaction_id}
    assert [a.outcome for a in row.attempts.order_by("number")] == ["AE", "AA"]


def test_the_backlog_alarm_counts_charges(mail_settings, fast):
    fast.HL7_ORU_CONNECT_TIMEOUT_SECONDS = 0.5
    dest = h.destination("billing", free_port(), sends_charges=True, sends_results=False)  # nothing listens
    rule(OUTBOUND_BACKLOG, "billing", minutes=60)
    complete(h.study())
    assert delivery.drain(dest.pk) == 0
    start = timezone.now()
    assert services.evaluate(start + dt.timedelta(minutes=61))["opened"] == 1
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "billing" and "1 outbound HL7 message(s) to billing" in alarm.message
