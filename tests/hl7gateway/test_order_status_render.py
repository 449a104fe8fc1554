"""Order status messages to the order placer (hl7gateway.order_status, IHE RAD-3): the rule that
decides which change causes which message, and the ORM^O01 (v2.3.1) / OMI^O23 (v2.5.1) layouts,
read back by an independent parser (python-hl7).  Pure tests, synthetic values."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from hl7gateway import order_status as st
from hl7gateway import oru

CHANGED = dt.datetime(2026, 3, 2, 9, 15, 30, tzinfo=dt.UTC)
EXAM = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def content(**overrides) -> st.StatusContent:
    values = dict(
        patient_identifiers=(oru.PatientIdentifier("MRN000123", "HOSP", "MR"),),
        patient_name=oru.Person.from_dicom_pn("TESTPERSON^ANNA"),
        patient_birth_date=dt.date(1961, 3, 14),
        patient_sex="F",
        visit_number="VN42",
        patient_class="O",
        placer_order_number="PL777",
        placer_namespace="EHR",
        filler_order_number="FL888",
        filler_namespace="PACS",
        procedure_code_value="CTCHEST",
        procedure_code_meaning="CT chest",
        procedure_code_scheme="LOCAL",
        observation_datetime=EXAM,
        ordering_provider=oru.Person.from_dicom_pn("ORDERING^OTTO"),
        accession_number="ACC00000042",
        requested_procedure_id="RP42",
        study_instance_uid="2.25.4242",
        steps=(st.StepValues("SPS42A", "CT", "CT1"), st.StepValues("SPS42B", "CT", "CT2")),
        order_status="IP",
        transaction_at=CHANGED,
    )
    values.update(overrides)
    return st.StatusContent(**values)


def header(version: str, **overrides) -> oru.MessageHeader:
    return oru.MessageHeader(message_control_id="OSC000000000007", created_at=CHANGED, sending_application="PACS",
                             sending_facility="RADIOLOGY", receiving_application="EHR", receiving_facility="HOSP",
                             version=version, **overrides)


def parsed(version: str, **overrides):
    return hl7.parse(st.render_status(content(**overrides), header(version)))


# --- the rule -------------------------------------------------------------------------------------
@pytest.mark.parametrize("entity,from_status,to_status,event", [
    ("requested_procedure", "SCHEDULED", "IN_PROGRESS", st.STARTED),
    ("study", "RECEIVING", "COMPLETE", st.EXAM_COMPLETE),
    ("sps", "STARTED", "DISCONTINUED", st.DISCONTINUED),
    ("sps", "SCHEDULED", "DISCONTINUED", st.DISCONTINUED),
    ("report", "PRELIMINARY", "FINAL", st.REPORT_FINAL),
    ("report", "DRAFT", "FINAL", st.REPORT_FINAL),
    # Changes the placer is not told of: a step starting (the procedure says it once), the
    # procedure completing (the study's completion says it), a preliminary report, an addendum,
    # archiving, a study re-opened by a late instance, an outbound message delivered.
    ("sps", "SCHEDULED", "STARTED", None),
    ("requested_procedure", "IN_PROGRESS", "COMPLETED", None),
    ("report", "DRAFT", "PRELIMINARY", None),
    ("report", "FINAL", "ADDENDED", None),
    ("study", "COMPLETE", "ARCHIVED", None),
    ("study", "COMPLETE", "RECEIVING", None),
    ("oru_outbound", "PENDING", "DELIVERED", None),
])
def test_one_rule_decides_which_change_tells_the_placer(entity, from_status, to_status, event):
    assert st.event_for(entity, from_status, to_status) == event


@pytest.mark.parametrize("entity,to_status", [("requested_procedure", "IN_PROGRESS"), ("sps", "DISCONTINUED")])
def test_a_change_the_placer_asked_for_is_not_echoed(entity, to_status):
    assert st.event_for(entity, "SCHEDULED", to_status, placer_request=True) is None


def test_each_event_has_its_order_status():
    assert st.ORDER_STATUS == {st.STARTED: "IP", st.EXAM_COMPLETE: "CM", st.DISCONTINUED: "DC",
                               st.REPORT_FINAL: "CM"}
    assert st.RESULT_STATUS == {st.REPORT_FINAL: "F"}


# --- v2.3.1: ORM^O01 ------------------------------------------------------------------------------
def test_orm_o01_carries_status_numbers_and_dicom_keys_in_orc_obr_zds():
    msg = parsed("2.3.1", order_status="CM")
    assert str(msg.segment("MSH")[9]) == "ORM^O01" and str(msg.segment("MSH")[12]) == "2.3.1"
    assert str(msg.segment("MSH")[10]) == "OSC000000000007"
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "PV1", "ORC", "OBR", "ZDS"]
    orc, obr = msg.segment("ORC"), msg.segment("OBR")
    assert str(orc[1]) == "SC" and str(orc[5]) == "CM"
    assert str(orc[2]) == "PL777^EHR" and str(orc[3]) == "FL888^PACS"
    assert str(orc[9]) == "20260302091530+0000"  # ORC-9: when the change happened
    assert str(obr[2]) == "PL777^EHR" and str(obr[3]) == "FL888^PACS"
    assert str(obr[18]) == "ACC00000042" and str(obr[19]) == "RP42" and str(obr[20]) == "SPS42A"
    assert str(obr[24]) == "RAD" and str(obr[7]) == "20260302090000+0000"
    assert str(msg.segment("ZDS")[1]) == "2.25.4242^PACS^Application^DICOM"
    assert str(msg.segment("PID")[3]) == "MRN000123^^^HOSP^MR"


def test_obr25_is_f_only_when_the_report_is_final():
    assert str(parsed("2.3.1", order_status="CM", result_status="F").segment("OBR")[25]) == "F"
    obr = parsed("2.3.1", order_status="CM").segment("OBR")
    assert len(obr) <= 25 or str(obr[25]) == ""


# --- v2.5.1: OMI^O23 ------------------------------------------------------------------------------
def test_omi_o23_carries_the_accession_in_ipc_one_per_step():
    msg = parsed("2.5.1", order_status="DC")
    assert str(msg.segment("MSH")[9]) == "OMI^O23^OMI_O23" and str(msg.segment("MSH")[12]) == "2.5.1"
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "PV1", "ORC", "OBR", "IPC", "IPC"]
    orc, obr = msg.segment("ORC"), msg.segment("OBR")
    assert (str(orc[1]), str(orc[5]), str(orc[2]), str(orc[3])) == ("SC", "DC", "PL777^EHR", "FL888^PACS")
    assert str(orc[9]) == "20260302091530+0000"
    assert str(obr[2]) == "PL777^EHR" and str(obr[3]) == "FL888^PACS"
    assert len(obr) <= 18 or str(obr[18]) == ""  # v2.5.1: the accession number is IPC-1
    first, second = msg.segments("IPC")
    assert (str(first[1]), str(first[2]), str(first[3]), str(first[4]), str(first[5]), str(first[9])) == (
        "ACC00000042", "RP42", "2.25.4242", "SPS42A", "CT^^DCM", "CT1")
    assert (str(second[4]), str(second[9])) == ("SPS42B", "CT2")


def test_omi_without_steps_still_has_its_required_ipc():
    ipc = parsed("2.5.1", steps=()).segment("IPC")
    assert (str(ipc[1]), str(ipc[4])) == ("ACC00000042", "RP42")


def test_values_are_escaped_and_bad_input_refused():
    msg = parsed("2.3.1", placer_order_number="PL|1^2")
    assert str(msg.segment("ORC")[2]) == r"PL\F\1\S\2^EHR"
    with pytest.raises(ValueError, match="ORC-5"):
        st.render_status(content(order_status="ZZ"), header("2.5.1"))
    with pytest.raises(ValueError, match="unsupported version"):
        st.render_status(content(), header("2.4"))


# --- ORC-1 SN: a new filler order (HL7 v2.5.1 4.5.1.1) ------------------------------------------
def test_a_filler_order_is_sn_with_no_placer_number_and_its_accession_in_obr18():
    assert st.order_control(st.FILLER_ORDER) == "SN" and st.order_control(st.EXAM_COMPLETE) == "SC"
    assert [st.filler_order_status(s) for s in ("COMPLETED", "IN_PROGRESS", "SCHEDULED")] == ["CM", "IP", "SC"]
    for version in ("2.3.1", "2.5.1"):  # OBR-18 names the accession in both versions
        msg = parsed(version, order_control="SN", order_status="SC", placer_order_number="", placer_namespace="")
        orc, obr = msg.segment("ORC"), msg.segment("OBR")
        assert (str(orc[1]), str(orc[2]), str(orc[3]), str(orc[5])) == ("SN", "", "FL888^PACS", "SC")
        assert (str(obr[2]), str(obr[3]), str(obr[18])) == ("", "FL888^PACS", "ACC00000042")
    assert str(parsed("2.5.1", order_control="SN", order_status="CM").segment("IPC")[1]) == "ACC00000042"


def test_sc_keeps_its_order_statuses_and_other_order_controls_are_refused():
    with pytest.raises(ValueError, match="ORC-5"):
        st.render_status(content(order_status="SC"), header("2.3.1"))  # SC of an SC message: no news
    with pytest.raises(ValueError, match="ORC-1"):
        st.render_status(content(order_control="NW"), header("2.3.1"))
