"""A destination that validates (``validate=1``) gets only messages that are valid HL7 for their
version and structure; one that is not is not sent, fails with the findings on the outbound page
and in the backlog alarm, and can be retried.  A destination with ``pdf=1`` gets the report as a
PDF in an OBX of value type ED (HL7 v2.5.1 2A.24).  Against a real MLLP sink; delivery is called
in-process as the Celery task calls it."""

from __future__ import annotations

import base64
import datetime as dt
import re
import zlib

import pytest
from django.utils import timezone

from hl7gateway import conformance
from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import actions, delivery, destinations
from monitoring import selectors, services
from monitoring.models import ORU_UNDELIVERED, OUTBOUND_BACKLOG, Alarm
from tests.factories import oru as h
from tests.factories import rule

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast(fast):
    fast.HL7_ORU_BATCH_SIZE = 10
    return fast


def pdf_text(pdf: bytes) -> str:
    """The text a PDF page draws: every content stream (ReportLab: ASCII85 + Flate) decoded, the
    operands of its text operators joined."""
    shown = []
    for raw in re.findall(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        data = raw.strip()
        try:
            data = zlib.decompress(base64.a85decode(data, adobe=True))
        except ValueError:
            continue  # not a page's content stream
        shown += re.findall(rb"\((.*?)(?<!\\)\) Tj", data)
    return " ".join(s.decode("latin-1").replace("\\(", "(").replace("\\)", ")") for s in shown)


# --- validate=1 ---------------------------------------------------------------------------------
def test_a_valid_message_is_sent(sink, fast):
    dest = h.destination("ehr", sink.port, validate_messages=True, report_pdf=True, link_wado_rs=True)
    h.sign_report(h.study(scheme="99RAD"), h.radiologist())
    assert delivery.drain(dest.pk) == 1
    (received,) = sink.wait_for(1)
    row = OutboundMessage.objects.get()
    assert row.status == "DELIVERED" and received.payload == bytes(row.payload)
    assert conformance.problems(received.payload) == []


def test_an_invalid_message_is_not_sent_but_failed_with_the_findings_then_retried(sink, fast, operator,
                                                                                 mail_settings):
    # OBR-4.3 from the order placer is "LOCAL": no coding system of HL7 table 0396 (v2.5.1).
    dest = h.destination("ehr", sink.port, validate_messages=True)
    rule(OUTBOUND_BACKLOG, "ehr", minutes=60)
    rp = h.study(scheme="LOCAL")
    h.sign_report(rp, h.radiologist())
    h.sign_report(h.study(scheme="99RAD"), h.radiologist())  # another patient: not held back
    bad, good = OutboundMessage.objects.order_by("id")
    assert delivery.drain(dest.pk) == 2
    assert [r.control_id for r in sink.wait_for(1)] == [good.message_control_id]
    assert sink.count == 1  # the invalid one never left
    bad.refresh_from_db()
    assert (bad.status, bad.last_outcome) == ("FAILED", "INVALID")
    assert "LOCAL not in table HL70396" in bad.last_error and "OBR_4" in bad.last_error
    (attempt,) = bad.attempts.all()
    assert attempt.outcome == "INVALID" and "HL70396" in attempt.detail
    # The outbound page shows it with its reason; the alarm counts it.
    page = operator.get("/interfaces/")
    assert bad.message_control_id in [m.message_control_id for m in page.context["problems"]]
    assert "HL70396" in page.content.decode()
    assert selectors.outbound_error_counts("ehr", timezone.now() - dt.timedelta(hours=1)) == (1, 2)
    # Two alarms name it: the destination's backlog, and its final report without an ORU delivered.
    assert services.evaluate(timezone.now() + dt.timedelta(minutes=61))["opened"] == 2
    assert "1 outbound HL7 message(s) to ehr" in Alarm.objects.get(rule__kind=OUTBOUND_BACKLOG).message
    assert Alarm.objects.get(rule__kind=ORU_UNDELIVERED).interface_key == "ehr"
    # A retry while the destination still validates fails the same way; not a byte is sent.
    actions.retry(bad.pk, operator.user, "placer asked")
    assert delivery.deliver(bad.pk) == "FAILED" and sink.count == 1
    # The destination takes its coding systems as they are: validation off, the retry sends it.
    OutboundDestination.objects.filter(pk=dest.pk).update(validate_messages=False)
    actions.retry(bad.pk, operator.user, "EHR accepts LOCAL")
    assert delivery.deliver(bad.pk) == "DELIVERED"
    assert sink.wait_for(2)[1].payload == bytes(bad.payload)


# --- pdf=1 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
def test_the_oru_carries_the_report_as_a_pdf(sink, fast, version):
    dest = h.destination("ehr", sink.port, hl7_version=version, report_pdf=True, validate_messages=True)
    patient = h.patient(name="TESTPERSON^ANNA^MARIA")
    rp = h.study(for_patient=patient, scheme="99RAD", meaning="CT CHEST W/O CONTRAST")
    h.sign_report(rp, h.radiologist(first_name="Gregory", last_name="Hausmann"), findings="Nodule (4 mm) stable.",
                  impression="No acute cardiopulmonary process.")
    assert delivery.drain(dest.pk) == 1
    (received,) = sink.wait_for(1)
    obx = [s for s in received.segments() if s[0] == "OBX" and s[2] == "ED"]
    assert len(obx) == 1
    source, data_type, subtype, encoding, data = obx[0][5].split("^")
    assert (source, data_type, subtype, encoding) == ("PACS", "AP", "PDF", "Base64")
    pdf = base64.b64decode(data, validate=True)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    text = pdf_text(pdf)
    for expected in ("No acute cardiopulmonary process.", "Nodule (4 mm) stable.", "TESTPERSON, ANNA MARIA",
                     rp.accession_number, "CT CHEST W/O CONTRAST", "Hausmann"):
        assert expected in text, expected
    assert conformance.problems(received.payload) == []
    # The row stores the message once: a resend is these bytes, the PDF included.
    assert received.payload == bytes(OutboundMessage.objects.get().payload)


def test_no_pdf_unless_the_destination_asks(sink, fast):
    dest = h.destination("ehr", sink.port)
    h.sign_report(h.study(), h.radiologist())
    delivery.drain(dest.pk)
    (received,) = sink.wait_for(1)
    assert [s[2] for s in received.segments() if s[0] == "OBX"] == ["TX"] * 6 + ["ST"]


# --- the environment's syntax ------------------------------------------------------------------------
def test_validate_and_pdf_are_declared_in_the_environment(settings):
    settings.HL7_ORU_DESTINATIONS = ("ehr=mllp://ehr-host:2575?validate=1&pdf=1&messages=oru,status,"
                                     "billing=mllp://bill-host:2576?validate=0")
    destinations.sync_environment_destinations()
    ehr, billing = (OutboundDestination.objects.get(name=n) for n in ("ehr", "billing"))
    assert (ehr.validate_messages, ehr.report_pdf, ehr.sends_order_status) == (True, True, True)
    assert (billing.validate_messages, billing.report_pdf) == (False, False)
    # The environment decides: an option removed turns it off again.
    settings.HL7_ORU_DESTINATIONS = "ehr=mllp://ehr-host:2575,billing=mllp://bill-host:2576"
    destinations.sync_environment_destinations()
    ehr.refresh_from_db()
    assert (ehr.validate_messages, ehr.report_pdf) == (False, False)


@pytest.mark.parametrize("value", ["ehr=mllp://h:1?validate=maybe", "ehr=mllp://h:1?pdf=", "ehr=mllp://h:1?pdf=2"])
def test_a_bad_switch_is_refused(value):
    with pytest.raises(ValueError, match="must be 1 or 0"):
        destinations.parse_destinations(value)
