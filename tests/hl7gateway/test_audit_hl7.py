"""HL7 events on the audit trail (PS3.15 A.5.3): an ORU the receiving system acknowledged with AA
is an Export (A.5.3.4), recorded with the delivery; a message refused by the sender policy is a
Security Alert (A.5.3.11, Node Authentication, outcome 8).  The real MLLP listener, a real MLLP
sink answering AA / AR, the records read back from PostgreSQL."""

from __future__ import annotations

import pytest

from audit import trail
from audit.models import AuditPatient, AuditRecord
from hl7gateway.models import OutboundMessage
from hl7gateway.outbox import delivery
from hl7gateway.server import MLLPServer
from project.auditing import events
from tests.factories import oru as h
from tests.support.hl7 import ack_fields, connect, exchange, fixture, with_control_id
from tests.support.mllp_sink import AR, MLLPSink

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _drained_writer():
    yield
    assert trail.stop(timeout=60), "the audit writer did not drain"


@pytest.fixture
def sink(settings):
    settings.HL7_ORU_BATCH_SIZE = 1
    settings.HL7_ORU_CONNECT_TIMEOUT_SECONDS = 1.0
    with MLLPSink() as s:
        yield s


def _queued(sink) -> OutboundMessage:
    h.destination("ehr", sink.port)
    rp = h.study(for_patient=h.patient(mrn="MRN-AUD-1"))
    version = h.sign_report(rp, h.radiologist())
    return OutboundMessage.objects.get(report_version=version)


def _exports():
    trail.flush()
    return list(AuditRecord.records.filter(event_id=events.EXPORT.value).order_by("id"))


def test_oru_acknowledged_with_aa_is_an_export(sink):
    row = _queued(sink)
    assert _exports() == []  # queued is not sent
    assert delivery.deliver(row.pk) == "DELIVERED"
    [record] = _exports()
    assert (record.action, record.outcome, record.actor_kind) == ("R", 0, "system")
    assert record.destination == f"127.0.0.1:{sink.port}"
    assert list(AuditPatient.objects.filter(record=record).values_list("patient_id", "issuer")) == [
        ("MRN-AUD-1", "HOSP")]
    report = next(o for o in record.objects if o["type"] == "report")
    assert report["id"] == str(row.report_version_id)
    assert report["detail"]["message_control_id"] == row.message_control_id
    assert {"type": "order", "id": row.accession_number} in record.objects
    assert delivery.deliver(row.pk) == "settled" and len(_exports()) == 1  # once, however often the task runs


def test_oru_refused_with_ar_is_no_export(sink):
    sink.script([AR])
    row = _queued(sink)
    assert delivery.deliver(row.pk) == "FAILED"
    assert _exports() == []


def test_refused_sender_is_a_security_alert(settings):
    server = MLLPServer("127.0.0.1", 0).start()
    try:
        raw = with_control_id(fixture("epic_orm_o01_nw.hl7"), "AUD-1")
        with connect(server.port, "127.0.0.2") as sock:  # undeclared, not from the loopback default
            assert ack_fields(exchange(sock, raw))["msa_1"] == "AR"
        with connect(server.port, "127.0.0.1") as sock:  # admitted: no alert
            assert ack_fields(exchange(sock, with_control_id(raw, "AUD-2")))["msa_1"] == "AA"
    finally:
        server.stop()
    trail.flush()
    [alert] = AuditRecord.records.filter(event_id=events.SECURITY_ALERT.value)
    assert (alert.event_type, alert.outcome, alert.action) == (
        events.NODE_AUTHENTICATION.value, events.SERIOUS_FAILURE, "E")
    assert (alert.actor, alert.actor_kind, alert.source_address) == ("EPIC^SYNTH_HOSP", "hl7", "127.0.0.2")
    assert "not a declared sender" in alert.detail["reason"] and alert.detail["message_type"] == "ORM^O01"
    assert not AuditPatient.objects.filter(record=alert).exists()  # a refusal names no patient
