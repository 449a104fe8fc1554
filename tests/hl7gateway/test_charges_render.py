"""Charge posting (hl7gateway.charges, IHE RAD-35; DFT^P03, HL7 v2.5.1 chapter 6): which event
posts which charge, the per-code setting, and the DFT^P03 layout in both versions, read back by
an independent parser (python-hl7).  Pure tests, synthetic values."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from hl7gateway import charges as ch
from hl7gateway import order_status, oru

POSTED = dt.datetime(2026, 3, 2, 10, 0, 5, tzinfo=dt.UTC)
EXAM = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def content(**overrides) -> ch.ChargeContent:
    values = dict(
        patient_identifiers=(oru.PatientIdentifier("MRN000123", "HOSP", "MR"),),
        patient_name=oru.Person.from_dicom_pn("TESTPERSON^ANNA"),
        patient_birth_date=dt.date(1961, 3, 14),
        patient_sex="F",
        visit_number="VN42",
        patient_class="O",
        charge_kind=ch.TECHNICAL,
        transaction_type=ch.CHARGE,
        transaction_id=ch.transaction_id(42, ch.TECHNICAL),
        transaction_at=EXAM,
        posted_at=POSTED,
        procedure_code_value="CTCHEST",
        procedure_code_meaning="CT chest",
        procedure_code_scheme="LOCAL",
        performed_by=oru.Person.from_dicom_pn("PERFORMER^PIA"),
        ordering_provider=oru.Person.from_dicom_pn("ORDERING^OTTO"),
        filler_order_number="FL888",
        filler_namespace="PACS",
    )
    values.update(overrides)
    return ch.ChargeContent(**values)


def header(version: str = "2.5.1") -> oru.MessageHeader:
    return oru.MessageHeader(message_control_id="DFT000000000007", created_at=POSTED, receiving_application="BILL",
                             receiving_facility="HOSP", version=version)


def parse(c: ch.ChargeContent, version: str = "2.5.1") -> hl7.Message:
    return hl7.parse(ch.render_charge(c, header(version)))


# --- the rule -----------------------------------------------------------------------------------
def test_exam_complete_posts_technical_and_final_report_posts_professional_nothing_else():
    assert ch.charge_for(order_status.EXAM_COMPLETE) == ch.TECHNICAL
    assert ch.charge_for(order_status.REPORT_FINAL) == ch.PROFESSIONAL
    assert [ch.charge_for(e) for e in (order_status.STARTED, order_status.DISCONTINUED, None)] == [None] * 3


def test_only_the_procedure_cancelled_credits():
    assert ch.credits("requested_procedure", "CANCELED")
    assert not ch.credits("requested_procedure", "DISCONTINUED")
    assert not ch.credits("sps", "CANCELED")


def test_the_setting_per_procedure_code_overrides_the_default():
    by_code = "CTHEAD=technical; XRCHEST=professional;MRKNEE=none;CTABD=professional,technical"
    default = "technical,professional"
    assert ch.kinds_for("CTHEAD", default, by_code) == {ch.TECHNICAL}
    assert ch.kinds_for("XRCHEST", default, by_code) == {ch.PROFESSIONAL}
    assert ch.kinds_for("MRKNEE", default, by_code) == set()
    assert ch.kinds_for("CTABD", default, by_code) == {ch.TECHNICAL, ch.PROFESSIONAL}
    assert ch.kinds_for("USLIVER", default, by_code) == {ch.TECHNICAL, ch.PROFESSIONAL}
    assert ch.kinds_for("USLIVER", "professional", by_code) == {ch.PROFESSIONAL}
    assert ch.kinds_for("USLIVER", "none", "") == set()


@pytest.mark.parametrize("value,named", [
    ("CTHEAD=technical;XRCHEST=profesional", "entry 'XRCHEST=profesional'"),
    ("CTHEAD", "entry 'CTHEAD'"),
    ("=technical", "entry '=technical'"),
    ("CTHEAD=technical;CTHEAD=none", "code 'CTHEAD' is listed twice"),
    ("CTHEAD=", "entry 'CTHEAD='"),
])
def test_a_bad_entry_is_named(value, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        ch.parse_by_code(value)
    assert ch.kinds_for("CTHEAD", "technical", value) == set()  # unreadable: post nothing


def test_the_transaction_id_is_stable_per_procedure_and_kind_and_fits_st_12():
    assert ch.transaction_id(42, ch.TECHNICAL) == ch.transaction_id(42, ch.TECHNICAL) == "T00000000042"
    assert ch.transaction_id(42, ch.PROFESSIONAL) == "P00000000042"
    assert len(ch.transaction_id(10**10, ch.PROFESSIONAL)) <= 12


# --- the message --------------------------------------------------------------------------------
@pytest.mark.parametrize("version,msh9", [("2.5.1", "DFT^P03^DFT_P03"), ("2.3.1", "DFT^P03")])
def test_dft_p03_field_by_field(version, msh9):
    msg = parse(content(), version)
    assert [str(s[0]) for s in msg] == ["MSH", "EVN", "PID", "PV1", "FT1"]
    assert (str(msg.segment("MSH")[9]), str(msg.segment("MSH")[10]), str(msg.segment("MSH")[12])) == (
        msh9, "DFT000000000007", version)
    evn = msg.segment("EVN")
    assert (str(evn[1]), str(evn[2])) == ("P03", "20260302100005+0000")
    assert str(msg.segment("PV1")[19]) == "VN42"
    assert str(msg.segment("PID")[3]) == "MRN000123^^^HOSP^MR"
    ft1 = msg.segment("FT1")
    assert str(ft1[2]) == "T00000000042"  # FT1-2 transaction ID
    assert str(ft1[4]) == "20260302090000+0000"  # FT1-4 transaction date: the exam
    assert str(ft1[5]) == "20260302100005+0000"  # FT1-5 posting date
    assert str(ft1[6]) == "CG"  # FT1-6, HL7 table 0017
    assert str(ft1[7]) == "CTCHEST^CT chest^LOCAL"  # FT1-7 transaction code (CE)
    assert str(ft1[10]) == "1"  # FT1-10 quantity
    assert str(ft1[20]) == "^PERFORMER^PIA"  # FT1-20 performed by (XCN)
    assert str(ft1[21]) == "^ORDERING^OTTO"  # FT1-21 ordered by (XCN)
    assert str(ft1[23]) == "FL888^PACS"  # FT1-23 filler order number
    assert str(ft1[25]) == "CTCHEST^CT chest^LOCAL"  # FT1-25 procedure code


def test_the_credit_is_cd_with_the_charges_transaction_id_and_values_are_escaped():
    msg = parse(content(transaction_type=ch.CREDIT, procedure_code_meaning="CT A|B^C"))
    ft1 = msg.segment("FT1")
    assert (str(ft1[6]), str(ft1[2])) == ("CD", "T00000000042")
    assert oru.unescape(str(ft1[8])) == "CT A|B^C"


def test_refuses_what_billing_could_not_read():
    with pytest.raises(ValueError, match="FT1-6"):
        ch.render_charge(content(transaction_type="XX"), header())
    with pytest.raises(ValueError, match="FT1-2"):
        ch.render_charge(content(transaction_id=""), header())
