"""ORU^R01 rendering (hl7gateway.oru): pure tests, checked by an independent parser (python-hl7)."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from hl7gateway import oru

UTC = dt.UTC
EXAM = dt.datetime(2026, 3, 2, 9, 15, tzinfo=UTC)
SIGNED = dt.datetime(2026, 3, 2, 11, 40, 5, tzinfo=UTC)
NASTY = r"Lesion 3|4 cm ^ left & right ~ stable \ unchanged"


def content(**overrides) -> oru.OruContent:
    values = dict(
        patient_identifiers=(oru.PatientIdentifier("MRN000123", "HOSP", "MR"), oru.PatientIdentifier("88", "NATL")),
        patient_name=oru.Person.from_dicom_pn("Müller-Lüdenscheidt^Jürgen^K^Dr.^Jr."),
        patient_birth_date=dt.date(1961, 3, 14),
        patient_sex="M",
        visit_number="VN42",
        patient_class="I",
        referring_physician=oru.Person.from_dicom_pn("REFERRER^ROSA"),
        placer_order_number="PL777",
        placer_namespace="EHR",
        filler_order_number="FL888",
        filler_namespace="PACS",
        procedure_code_value="CTCHEST",
        procedure_code_meaning="CT chest w/o contrast",
        procedure_code_scheme="LOCAL",
        observation_datetime=EXAM,
        ordering_provider=oru.Person.from_dicom_pn("ORDERING^OTTO"),
        accession_number="ACC00000042",
        requested_procedure_id="RP42",
        result_status="F",
        signer=oru.Person.from_dicom_pn("HAUSMANN^GREGORY", id_number="ghausmann"),
        signed_at=SIGNED,
        text_lines=("FINDINGS:", NASTY, "", "IMPRESSION:", "Größenkonstant."),
        study_instance_uid="2.25.123456789",
    )
    values.update(overrides)
    return oru.OruContent(**values)


def header(**overrides) -> oru.MessageHeader:
    values = dict(message_control_id="ORU000000000042", created_at=SIGNED, receiving_application="BILLING",
                  receiving_facility="HOSP")
    values.update(overrides)
    return oru.MessageHeader(**values)


def parse(text: str) -> hl7.Message:
    return hl7.parse(text)


def test_v251_fields():
    text = oru.render_oru(content(), header())
    assert text.endswith("\r") and "\n" not in text
    msg = parse(text)
    msh = msg.segment("MSH")
    assert str(msh[3]) == "PACS" and str(msh[4]) == "RADIOLOGY"
    assert str(msh[5]) == "BILLING" and str(msh[6]) == "HOSP"
    assert str(msh[7]) == "20260302114005+0000"
    assert str(msh[9]) == "ORU^R01^ORU_R01"
    assert str(msh[10]) == "ORU000000000042" and str(msh[11]) == "P" and str(msh[12]) == "2.5.1"
    assert str(msh[15]) == "" and str(msh[16]) == ""  # original acknowledgement mode
    assert str(msh[18]) == "UNICODE UTF-8"

    pid = msg.segment("PID")
    assert str(pid[3]) == "MRN000123^^^HOSP^MR~88^^^NATL"
    assert msg["PID.F3.R1.C1"] == "MRN000123" and msg["PID.F3.R1.C4"] == "HOSP"
    assert str(pid[5]) == "Müller-Lüdenscheidt^Jürgen^K^Jr.^Dr."  # XPN: suffix before prefix
    assert str(pid[7]) == "19610314" and str(pid[8]) == "M"

    pv1 = msg.segment("PV1")
    assert str(pv1[2]) == "I" and str(pv1[8]) == "^REFERRER^ROSA" and str(pv1[19]) == "VN42"

    orc = msg.segment("ORC")
    assert str(orc[1]) == "RE" and str(orc[2]) == "PL777^EHR" and str(orc[3]) == "FL888^PACS"
    assert str(orc[5]) == "CM"

    obr = msg.segment("OBR")
    assert str(obr[2]) == "PL777^EHR" and str(obr[3]) == "FL888^PACS"
    assert str(obr[4]) == "CTCHEST^CT chest w/o contrast^LOCAL"
    assert str(obr[7]) == "20260302091500+0000"
    assert str(obr[16]) == "^ORDERING^OTTO"
    assert str(obr[18]) == "ACC00000042" and str(obr[19]) == "RP42"
    assert str(obr[22]) == "20260302114005+0000"
    assert str(obr[24]) == "RAD" and str(obr[25]) == "F"
    assert str(obr[32]) == "ghausmann&HAUSMANN&GREGORY^20260302114005+0000"

    obx = msg.segments("OBX")
    assert len(obx) == 6  # five text lines + the Study Instance UID
    for i, seg in enumerate(obx[:5], start=1):
        assert str(seg[1]) == str(i)
        assert str(seg[2]) == "TX"
        assert str(seg[3]) == "18748-4^Diagnostic imaging study report^LN"
        assert str(seg[11]) == "F"
        assert str(seg[16]) == "ghausmann^HAUSMANN^GREGORY"
        assert str(seg[19]) == "20260302114005+0000"  # OBX-19 exists since v2.5
    assert [msg.unescape(str(s[5])) for s in obx[:5]] == list(content().text_lines)
    study = obx[5]
    assert str(study[2]) == "ST" and str(study[3]) == "113014^DICOM Study^DCM"
    assert str(study[5]) == "2.25.123456789" and str(study[11]) == "F"
    assert [str(s[0]) for s in msg] == ["MSH", "PID", "PV1", "ORC", "OBR"] + ["OBX"] * 6


def test_v231_differs_where_the_versions_differ():
    msg = parse(oru.render_oru(content(), header(version="2.3.1")))
    assert str(msg.segment("MSH")[12]) == "2.3.1"
    assert str(msg.segment("MSH")[9]) == "ORU^R01"
    assert str(msg.segment("MSH")[18]) == "UNICODE"  # table 0211 of v2.3.1 has no UNICODE UTF-8
    for seg in msg.segments("OBX"):
        assert len(seg) <= 17  # no OBX-19 (date/time of the analysis) before v2.5
    # Everything the receiver keys on is the same.
    v251 = parse(oru.render_oru(content(), header()))
    for address in ("PID.F3", "PV1.F19", "ORC.F1", "ORC.F2", "ORC.F3", "OBR.F4", "OBR.F18", "OBR.F25", "OBR.F32"):
        assert msg[address] == v251[address], address


@pytest.mark.parametrize("status", ["P", "F", "C"])
def test_obx_11_matches_obr_25(status):
    msg = parse(oru.render_oru(content(result_status=status), header()))
    assert str(msg.segment("OBR")[25]) == status
    assert {str(s[11]) for s in msg.segments("OBX")} == {status}
    assert str(msg.segment("ORC")[5]) == ("A" if status == "P" else "CM")


def test_delimiters_in_report_text_are_escaped():
    text = oru.render_oru(content(), header())
    line = [s for s in text.split("\r") if s.startswith("OBX|2|")][0]
    assert line.split("|")[5] == r"Lesion 3\F\4 cm \S\ left \T\ right \R\ stable \E\ unchanged"
    assert len(line.split("|")) == 20  # the | in the text did not add a field
    assert oru.unescape(line.split("|")[5]) == NASTY


def test_delimiters_in_every_other_value_are_escaped():
    c = content(
        patient_name=oru.Person.from_dicom_pn("O|BRIEN^MARY&ANN"),
        accession_number="A|1",
        procedure_code_meaning="CT ^ chest",
        placer_order_number="P&1",
        visit_number="V~1",
        patient_identifiers=(oru.PatientIdentifier("ID|1", "ISS^X"),),
    )
    msg = parse(oru.render_oru(c, header(receiving_application="BILL|ING")))
    assert str(msg.segment("MSH")[5]) == r"BILL\F\ING"
    assert str(msg.segment("PID")[5]) == r"O\F\BRIEN^MARY\T\ANN"
    assert str(msg.segment("PID")[3]) == r"ID\F\1^^^ISS\S\X"
    assert str(msg.segment("OBR")[18]) == r"A\F\1"
    assert str(msg.segment("OBR")[4]) == r"CTCHEST^CT \S\ chest^LOCAL"
    assert str(msg.segment("ORC")[2]) == r"P\T\1^EHR"
    assert str(msg.segment("PV1")[19]) == r"V\R\1"


def test_control_characters_cannot_break_frames_or_segments():
    c = content(text_lines=("start\x0bvt\x1cfs\rcr\x00nul\tTab",))
    text = oru.render_oru(c, header())
    for ch in ("\x0b", "\x1c", "\x00", "\n"):
        assert ch not in text
    assert text.count("\r") == len(text.split("\r")) - 1 == 7  # MSH PID PV1 ORC OBR OBX OBX
    assert "start vt fs cr nul\tTab" in text


def test_split_lines():
    assert oru.split_lines("a\r\nb\rc\nd\n\n  \n") == ["a", "b", "c", "d"]
    assert oru.split_lines("") == []
    assert oru.split_lines("x  \n\ny") == ["x", "", "y"]


def test_utf8_on_the_wire():
    data = oru.encode(oru.render_oru(content(), header()))
    assert "Müller-Lüdenscheidt".encode() in data and "Größenkonstant".encode() in data
    assert data.decode("utf-8")


def test_department_time_zone_with_offset():
    msg = parse(oru.render_oru(content(), header(), time_zone="Europe/Berlin"))
    assert str(msg.segment("OBR")[7]) == "20260302101500+0100"
    assert str(msg.segment("PID")[7]) == "19610314"  # a date has no zone


def test_ft_value_type_and_empty_optional_values():
    c = content(text_lines=("Only line",), study_instance_uid="", visit_number="", patient_class="",
                signer=oru.Person(), referring_physician=oru.Person(), ordering_provider=oru.Person(),
                observation_datetime=None)
    msg = parse(oru.render_oru(c, header(text_value_type="FT")))
    obx = msg.segments("OBX")
    assert len(obx) == 1 and str(obx[0][2]) == "FT"
    assert str(msg.segment("PV1")[2]) == "U"  # PV1-2 is required: unknown
    assert len(msg.segment("OBR")) == 26  # nothing after OBR-25 when there is no signer


@pytest.mark.parametrize(
    "kwargs",
    [{"version": "2.4"}, {"message_control_id": ""}, {"text_value_type": "ST"}],
)
def test_refuses_what_it_cannot_render(kwargs):
    with pytest.raises(ValueError):
        oru.render_oru(content(), header(**kwargs))


def test_refuses_unknown_result_status():
    with pytest.raises(ValueError):
        oru.render_oru(content(result_status="Z"), header())
