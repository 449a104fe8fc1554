"""Every outbound message kind is valid HL7 for its version: ORU^R01 (v2.5.1 chapter 7), the order
status messages ORM^O01 (v2.3.1) / OMI^O23 (v2.5.1) and DFT^P03 (chapter 6), in both versions,
checked by hl7apy (``hl7gateway.conformance``: STRICT parse against MSH-12 and MSH-9's
structure, then hl7apy's Validator with its length and table findings).  Pure tests on synthetic
values, then the same for messages the outbox built from the database.

What was found and fixed in our messages by this check: MSH-18 ``UNICODE UTF-8`` in v2.3.1
(table 0211 of v2.3.1 has ``UNICODE`` only) and OBX-2 ``HD`` for the Study Instance UID (no HD in
table 0125 of v2.3.1 or v2.5.1; now ``ST``).  What is hl7apy's defect, not ours, is pinned by
the tests at the end (``test_hl7apy_*``): they fail once hl7apy is fixed, so that the handling
in ``hl7gateway.conformance`` can go.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from hl7gateway import charges, conformance, order_status, oru, report_pdf
from hl7gateway.models import OutboundMessage
from pacs.services import completion
from tests.factories import oru as h
from tests.factories import received_study

EXAM = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
SIGNED = dt.datetime(2026, 3, 2, 11, 40, 5, tzinfo=dt.UTC)
VERSIONS = ("2.5.1", "2.3.1")
#: A local coding system (table 0396 "99zzz"), as an order placer may send in OBR-4.3.
LOCAL = "99RAD"
LONG_LINE = "The lesion in the right upper lobe " * 12  # one paragraph longer than an ST's 199 characters


def identifiers() -> tuple[oru.PatientIdentifier, ...]:
    return (oru.PatientIdentifier("MRN000123", "HOSP", "MR"), oru.PatientIdentifier("88", "NATL"))


def oru_content(**overrides) -> oru.OruContent:
    values = dict(
        patient_identifiers=identifiers(), patient_name=oru.Person.from_dicom_pn("TESTPERSON^ANNA^M^^Dr."),
        patient_birth_date=dt.date(1961, 3, 14), patient_sex="F", visit_number="VN42", patient_class="I",
        assigned_location="WARD^12^1", referring_physician=oru.Person.from_dicom_pn("REFERRER^ROSA"),
        placer_order_number="PL777", placer_namespace="EHR", filler_order_number="FL888", filler_namespace="PACS",
        procedure_code_value="CTCHEST", procedure_code_meaning="CT chest w/o contrast", procedure_code_scheme=LOCAL,
        observation_datetime=EXAM, ordering_provider=oru.Person.from_dicom_pn("ORDERING^OTTO"),
        accession_number="ACC00000042", requested_procedure_id="RP42", result_status="F",
        signer=oru.Person.from_dicom_pn("HAUSMANN^GREGORY", id_number="ghausmann"), signed_at=SIGNED,
        text_lines=("FINDINGS:", r"Lesion 3|4 cm ^ left & right ~ stable \ unchanged", LONG_LINE, "",
                    "IMPRESSION:", "Größenkonstant."),
        study_instance_uid="2.25.123456789", viewer_url="https://viewer.example/study?uid=2.25.1&acc=A1",
        wado_rs_url="https://pacs.example/dicom-web/studies/2.25.123456789",
    )
    values.update(overrides)
    return oru.OruContent(**values)


def header(version: str, **overrides) -> oru.MessageHeader:
    values = dict(message_control_id="ORU000000000042", created_at=SIGNED, receiving_application="EHR",
                  receiving_facility="HOSP", version=version)
    values.update(overrides)
    return oru.MessageHeader(**values)


def status_content(event: str) -> order_status.StatusContent:
    return order_status.StatusContent(
        patient_identifiers=identifiers(), patient_name=oru.Person.from_dicom_pn("TESTPERSON^ANNA"),
        patient_birth_date=dt.date(1961, 3, 14), patient_sex="F", visit_number="VN42", patient_class="O",
        order_status=order_status.ORDER_STATUS[event], transaction_at=SIGNED,
        result_status=order_status.RESULT_STATUS.get(event, ""), placer_order_number="PL777",
        placer_namespace="EHR", filler_order_number="FL888", filler_namespace="PACS",
        procedure_code_value="CTCHEST", procedure_code_meaning="CT chest", procedure_code_scheme=LOCAL,
        observation_datetime=EXAM, ordering_provider=oru.Person.from_dicom_pn("ORDERING^OTTO"),
        accession_number="ACC00000042", requested_procedure_id="RP42", study_instance_uid="2.25.4242",
        steps=(order_status.StepValues("SPS42A", "CT", "CT1"), order_status.StepValues("SPS42B", "MR", "MR1")),
    )


def charge_content(kind: str, transaction_type: str) -> charges.ChargeContent:
    return charges.ChargeContent(
        patient_identifiers=identifiers(), patient_name=oru.Person.from_dicom_pn("TESTPERSON^ANNA"),
        patient_birth_date=dt.date(1961, 3, 14), patient_sex="F", visit_number="VN42", patient_class="O",
        charge_kind=kind, transaction_type=transaction_type, transaction_id=charges.transaction_id(42, kind),
        transaction_at=EXAM, posted_at=SIGNED, procedure_code_value="CTCHEST", procedure_code_meaning="CT chest",
        procedure_code_scheme=LOCAL, performed_by=oru.Person.from_dicom_pn("PERFORMER^PIA"),
        ordering_provider=oru.Person.from_dicom_pn("ORDERING^OTTO"), filler_order_number="FL888",
        filler_namespace="PACS",
    )


# --- every kind, every version ---------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("text", oru.TEXT_VALUE_TYPES)
@pytest.mark.parametrize("status", ["P", "F", "C"])
def test_oru_r01_is_valid(version, text, status):
    content = oru_content(result_status=status)
    message = oru.render_oru(content, header(version, text_value_type=text, link_viewer=True, link_wado_rs=True),
                             pdf=report_pdf.render_pdf(content))
    assert "|RP|" in message and "|ED|" in message  # the pointers and the PDF are part of what is checked
    assert conformance.problems(message) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_smallest_oru_r01_is_valid(version):
    content = oru_content(text_lines=("IMPRESSION:", "Normal."), study_instance_uid="", viewer_url="", wado_rs_url="",
                          referring_physician=oru.Person(), patient_birth_date=None, placer_order_number="")
    assert conformance.problems(oru.render_oru(content, header(version))) == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("event", sorted(order_status.ORDER_STATUS))
def test_order_status_message_is_valid(version, event):
    message = order_status.render_status(status_content(event), header(version, message_control_id="OSC1"))
    assert message.split("|", 9)[8] == order_status.message_type(version)
    assert conformance.problems(message) == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("orc_5", order_status.ORC5_VALUES)
def test_filler_order_message_is_valid(version, orc_5):
    """A new order of the department (ORC-1 SN): ORC-2 / OBR-2 empty, the placer assigns them."""
    import dataclasses

    content = dataclasses.replace(status_content(order_status.EXAM_COMPLETE), order_control="SN", order_status=orc_5,
                                  placer_order_number="", placer_namespace="")
    message = order_status.render_status(content, header(version, message_control_id="OSN000000000001"))
    orc = next(seg for seg in message.split("\r") if seg.startswith("ORC|")).split("|")
    assert (orc[1], orc[2], orc[5]) == ("SN", "", orc_5)
    assert conformance.problems(message) == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", charges.CHARGE_KINDS)
@pytest.mark.parametrize("transaction_type", [charges.CHARGE, charges.CREDIT])
def test_dft_p03_is_valid(version, kind, transaction_type):
    message = charges.render_charge(charge_content(kind, transaction_type), header(version, message_control_id="D1"))
    assert conformance.problems(message) == []


# --- the check finds what it must ---------------------------------------------------------------------
def test_the_defects_fixed_in_our_messages_are_found():
    v231 = oru.render_oru(oru_content(), header("2.3.1"))
    assert any("HL70211" in p for p in conformance.problems(v231.replace("|UNICODE\r", "|UNICODE UTF-8\r", 1)))
    v251 = oru.render_oru(oru_content(), header("2.5.1"))
    study = "|ST|113014^DICOM Study^DCM|"
    assert study in v251
    assert any("HL70125" in p for p in conformance.problems(v251.replace(study, "|HD|113014^DICOM Study^DCM|")))


@pytest.mark.parametrize("breakage,finding", [
    (lambda m: m.replace("\rPV1|", "\rIPC|ACC1|RP1|2.25.1|SPS1\rPV1|", 1), ""),  # a segment ORU^R01 does not have
    (lambda m: m.replace("\rOBR|", "\rOBR|1\rOBR|", 1), ""),  # a second OBR where one is allowed
    (lambda m: m.replace("|RAD|", "|RADIOLOGY|", 1), "HL70074"),  # OBR-24 outside its table
    (lambda m: m.replace("|19610314|", "|1961-03-14|", 1), ""),  # not a DT
    (lambda m: m.replace("CT chest w/o contrast", "C" * 250, 1), "max length"),  # a ST over 199 characters
    (lambda m: m.replace("|ORU^R01^ORU_R01|", "|ORU^R01^OMI_O23|", 1), ""),  # the wrong structure
    (lambda m: m.replace("^AP^PDF^Base64^", "^AP^PDF^Base64^#", 1), "Base64"),  # ED data not Base64
    (lambda m: m.replace("^AP^PDF^Base64^", "^XX^PDF^Base64^", 1), "HL70191"),  # ED-2 outside its table
    (lambda m: m.replace(f"^{LOCAL}|", "^LOCAL|", 1), "HL70396"),  # OBR-4.3 no coding system of table 0396
])
def test_an_invalid_message_is_refused_with_the_reason(breakage, finding):
    content = oru_content()
    message = oru.render_oru(content, header("2.5.1"), pdf=report_pdf.render_pdf(content))
    assert conformance.problems(message) == []
    found = conformance.problems(breakage(message))
    assert found, "the broken message passed"
    assert not finding or any(finding.lower() in p.lower() for p in found), found
    assert all(len(p) <= 300 for p in found)  # a quoted value is cut, never a whole PDF
    with pytest.raises(conformance.InvalidMessage):
        conformance.check(breakage(message))


def test_two_alternatives_of_a_choice_are_refused():
    message = order_status.render_status(status_content(order_status.STARTED), header("2.3.1", message_control_id="O"))
    assert conformance.problems(message) == []
    obr = next(s for s in message.split("\r") if s.startswith("OBR|"))
    found = conformance.problems(message.replace(obr, obr + "\rRQD|1", 1))
    assert any("ORM_O01_CHOICE" in p for p in found), found


# --- hl7apy's own defects, pinned ------------------------------------------------------------------
def _hl7apy_report(message: str) -> list[str]:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import ValidationError
    from hl7apy.parser import parse_message
    from hl7apy.validation import Validator

    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    try:
        Validator.validate(parsed)
    except ValidationError as exc:
        return [str(exc)]
    return []


def test_hl7apy_checks_a_choice_group_as_if_every_alternative_were_required():
    """HL7 v2.3.1 4.8.1 ORM^O01: ORDER DETAIL is a choice of OBR, RQD, RQ1, RXO, ODS, ODT; hl7apy's
    Validator demands all six, so no ORM^O01 v2.3.1 passes it as such."""
    message = order_status.render_status(status_content(order_status.STARTED), header("2.3.1", message_control_id="O"))
    assert _hl7apy_report(message) == ["Missing required child ORM_O01_CHOICE.RQD"]


def test_hl7apy_types_obx_5_as_short_strings_whatever_obx_2_says():
    """HL7 v2.5.1 7.4.2.5: OBX-5's data type is OBX-2's (TX: up to 65536 characters); hl7apy's
    STRICT parser takes every OBX-5 component for a ST of at most 199."""
    from hl7apy.exceptions import MaxLengthReached

    message = oru.render_oru(oru_content(), header("2.5.1"))
    assert f"|TX|18748-4^Diagnostic imaging study report^LN|1|{LONG_LINE}|" in message
    assert conformance.problems(message) == []
    with pytest.raises(MaxLengthReached):
        _hl7apy_report(message)


def test_hl7apy_lists_no_local_coding_system_nor_mime_subtype():
    """Table 0396 admits "99zzz" local systems, table 0291 IANA MIME subtypes; hl7apy's copies
    list neither (the literal "99zzz" is not a pattern to it)."""
    from hl7apy import load_reference

    assert LOCAL not in load_reference("HL70396", "Table", "2.5.1")[1]
    assert "PDF" not in load_reference("HL70291", "Table", "2.5.1")[1]


# --- the ED of the PDF ---------------------------------------------------------------------------------
def test_the_pdf_is_base64_in_an_ed_without_escapes_and_the_same_bytes_every_time():
    content = oru_content()
    pdf = report_pdf.render_pdf(content, time_zone="Europe/Berlin", institution="RADIOLOGY")
    assert pdf == report_pdf.render_pdf(content, time_zone="Europe/Berlin", institution="RADIOLOGY")
    assert pdf.startswith(b"%PDF-")
    message = oru.render_oru(content, header("2.5.1"), pdf=pdf)
    obx = [s.split("|") for s in message.split("\r") if s.startswith("OBX|")][-1]
    assert obx[2:5] == ["ED", "18748-4^Diagnostic imaging study report^LN", "2"]
    source, data_type, subtype, encoding, data = obx[5].split("^")
    assert (source, data_type, subtype, encoding) == ("PACS", "AP", "PDF", "Base64")
    assert not set(data) & set("|^~\\&\r\n")  # nothing to escape, nothing that ends a segment
    assert base64.b64decode(data, validate=True) == pdf
    assert obx[11] == "F"


# --- messages the outbox built from the database -----------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("version", VERSIONS)
def test_every_kind_the_outbox_queues_is_valid(version):
    h.destination("ehr", 2575, hl7_version=version, sends_order_status=True, sends_charges=True,
                  link_viewer=True, link_wado_rs=True, report_pdf=True)
    rp = h.study(scheme=LOCAL)
    received_study(rp, last_received_at=timezone.now() - dt.timedelta(hours=1))
    assert completion.sweep_quiet_studies() == 1  # order status CM, technical charge
    user = h.radiologist()
    h.sign_report(rp, user, "PRELIMINARY", impression="Probably benign.")
    h.sign_report(rp, user, "FINAL", impression="Benign; no follow-up needed.")  # status CM/F, charge, ORU
    h.sign_report(rp, user, "ADDENDUM", addendum="Compared with the prior study: unchanged.")
    rows = list(OutboundMessage.objects.order_by("id"))
    kinds = {(r.kind, r.message_type) for r in rows}
    assert {"ORU", "STATUS", "CHARGE"} == {k for k, _ in kinds}, kinds
    for row in rows:
        assert conformance.problems(bytes(row.payload)) == [], (row.message_type, row.message_control_id)


# --- the hot path does not load them --------------------------------------------------------------------
@pytest.mark.socket  # starts a Python process
def test_delivery_and_queueing_load_neither_hl7apy_nor_reportlab():
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, django; django.setup()\n"
        "import hl7gateway.outbox.delivery, hl7gateway.outbox.enqueue, hl7gateway.tasks\n"
        "print(sorted(m for m in ('hl7apy', 'reportlab') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
