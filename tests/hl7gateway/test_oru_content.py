"""From a signed ris.ReportVersion to the ORU^R01 bytes in the outbox (hl7gateway.outbox.content
.content_for_report_version + rendering): every field taken from the right place."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest
from django.utils import timezone

from hl7gateway import oru
from hl7gateway.models import OutboundMessage
from ris.models import PatientIdentifier
from tests.factories import oru as h

pytestmark = pytest.mark.django_db


def sent(version) -> hl7.Message:
    row = OutboundMessage.objects.get(report_version=version)
    return hl7.parse(bytes(row.payload).decode("utf-8"))


def test_fields_come_from_the_order_patient_and_signature(settings):
    settings.TIME_ZONE = "Europe/Berlin"
    h.destination("ehr", 2577, receiving_application="EHR", receiving_facility="HOSP")
    patient = h.patient(name="DÖRFLER^JÖRG^^DR", mrn="MRN-777", issuer="HOSP")
    PatientIdentifier.objects.create(patient=patient, id_number="1234567890", assigning_authority="NATL",
                                     identifier_type_code="NI")
    rp = h.study(for_patient=patient, code="CTCH", meaning="CT chest", scheme="99LOCAL")
    user = h.radiologist("ghausmann", first_name="Gregory", last_name="Hausmann")
    version = h.sign_report(rp, user, findings="Nodule 4|5 mm ^ RUL.\r\nNo effusion.", impression="Benign.")
    msg = sent(version)
    order, visit = rp.order, rp.order.visit
    assert str(msg.segment("MSH")[5]) == "EHR" and str(msg.segment("MSH")[6]) == "HOSP"
    assert str(msg.segment("MSH")[3]) == settings.HL7_RECEIVING_APPLICATION
    assert str(msg.segment("PID")[3]) == "MRN-777^^^HOSP^MR~1234567890^^^NATL^NI"
    assert str(msg.segment("PID")[5]) == "DÖRFLER^JÖRG^^^DR"
    assert str(msg.segment("PID")[7]) == "19610314" and str(msg.segment("PID")[8]) == "F"
    assert str(msg.segment("PV1")[19]) == visit.visit_number and str(msg.segment("PV1")[2]) == "O"
    assert str(msg.segment("PV1")[8]) == "^REFERRER^ROSA"
    assert str(msg.segment("ORC")[2]) == f"{order.placer_order_number}^EHR"
    assert str(msg.segment("ORC")[3]) == f"{order.filler_order_number}^{settings.HL7_RECEIVING_APPLICATION}"
    obr = msg.segment("OBR")
    assert str(obr[4]) == "CTCH^CT chest^99LOCAL"
    step = rp.steps.get()
    assert str(obr[7]) == timezone.localtime(step.scheduled_start).strftime("%Y%m%d%H%M%S%z")
    assert str(obr[16]) == "^ORDERING^OTTO"
    assert str(obr[18]) == rp.accession_number and str(obr[24]) == "RAD" and str(obr[25]) == "F"
    assert str(obr[32]).startswith("ghausmann&Hausmann&Gregory^")
    lines = [msg.unescape(str(s[5])) for s in msg.segments("OBX") if str(s[2]) == "TX"]
    assert lines == ["FINDINGS:", "Nodule 4|5 mm ^ RUL.", "No effusion.", "", "IMPRESSION:", "Benign."]
    uid = [s for s in msg.segments("OBX") if str(s[3]) == "113014^DICOM Study^DCM"]
    assert len(uid) == 1 and str(uid[0][5]) == rp.study_instance_uid


def test_addendum_carries_the_report_and_every_addendum_so_far(django_capture_on_commit_callbacks):
    h.destination("ehr", 2577)
    rp, user = h.study(), h.radiologist(first_name="Ada", last_name="Reader")
    with django_capture_on_commit_callbacks(execute=False):
        h.sign_report(rp, user, "FINAL", findings="Findings text.", impression="Impression text.")
        h.sign_report(rp, user, "ADDENDUM", addendum="First addendum.")
        second = h.sign_report(rp, user, "ADDENDUM", addendum="Second addendum.")
    msg = sent(second)
    assert str(msg.segment("OBR")[25]) == "C"
    lines = [msg.unescape(str(s[5])) for s in msg.segments("OBX") if str(s[2]) == "TX"]
    assert lines[:5] == ["FINDINGS:", "Findings text.", "", "IMPRESSION:", "Impression text."]
    assert lines[6].startswith("ADDENDUM 1 (") and lines[6].endswith(", Ada Reader):") and lines[7] == "First addendum."
    assert lines[9].startswith("ADDENDUM 2 (") and lines[10] == "Second addendum."
    assert {str(s[11]) for s in msg.segments("OBX")} == {"C"}


def test_critical_result_communication_is_in_the_text(django_capture_on_commit_callbacks):
    h.destination("ehr", 2577)
    rp, user = h.study(), h.radiologist()
    when = timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=3)
    with django_capture_on_commit_callbacks(execute=False):
        version = h.sign_report(rp, user, critical_result=True, critical_communicated_to="Dr Ward, ext 4411",
                                critical_communicated_at=when)
    lines = [sent(version).unescape(str(s[5])) for s in sent(version).segments("OBX") if str(s[2]) == "TX"]
    assert lines[-2:] == ["CRITICAL RESULT:",
                          f"Communicated to Dr Ward, ext 4411 {timezone.localtime(when):%Y-%m-%d %H:%M}"]


def test_preliminary_status_and_order_without_filler_number(django_capture_on_commit_callbacks):
    h.destination("ehr", 2577)
    rp, user = h.study(), h.radiologist()
    rp.order.filler_order_number = ""
    rp.order.save()
    with django_capture_on_commit_callbacks(execute=False):
        version = h.sign_report(rp, user, "PRELIMINARY")
    msg = sent(version)
    assert str(msg.segment("OBR")[25]) == "P" and str(msg.segment("ORC")[5]) == "A"
    assert msg["ORC.F3.R1.C1"] == rp.accession_number  # no filler number: the accession identifies it


def test_content_is_plain_values():
    # The renderer's input has no model objects in it (the layer boundary).
    import dataclasses

    fields = {f.name for f in dataclasses.fields(oru.OruContent)}
    assert {"patient_identifiers", "accession_number", "result_status", "study_instance_uid"} <= fields
