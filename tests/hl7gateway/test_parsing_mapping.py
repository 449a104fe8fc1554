"""Tier 1 (pure): parsing, ACK building and mapping of fixture messages in several EHR styles."""

from __future__ import annotations

from datetime import date

import pytest

from hl7gateway.acks import build_ack, encode_ack, escape
from hl7gateway.mapping import map_message
from hl7gateway.parsing import HL7Error, Segment, parse, read_msh
from ris.commands import MergePatients, OrderCommand, RegisterPatient, UpdatePatient
from tests.support.hl7 import FIXTURES, ack_fields, fixture, with_control_id


@pytest.mark.parametrize("name,terminator", [
    ("epic_orm_o01_nw.hl7", b"\r"), ("cerner_orm_o01_nw_crlf.hl7", b"\r\n"), ("smallvendor_orm_o01_nw_lf.hl7", b"\n"),
])
def test_three_segment_terminators_parse_the_same(name, terminator):
    raw = fixture(name)
    assert terminator in raw
    msg = parse(raw)
    assert [s.id for s in msg.segments("ORC")] and msg.segment("PID") is not None
    # normalised: the same message with \r only gives the same segments
    norm = parse(raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
    assert str(norm.message) == str(msg.message)


def test_charset_from_msh18_latin1_and_default_utf8():
    cerner = parse(fixture("cerner_orm_o01_nw_crlf.hl7"))
    assert cerner.charset == "8859/1"
    assert map_message(cerner)[0].patient.patient_name == "Müller^Jürgen"
    omi = parse(fixture("omi_o23_nw.hl7"))
    assert map_message(omi)[0].patient.patient_name == "Åström^Zoë"
    small = parse(fixture("smallvendor_orm_o01_nw_lf.hl7"))
    assert small.charset == "UNICODE UTF-8"  # MSH-18 empty: HL7_DEFAULT_CHARSET


def test_default_charset_setting_is_used(settings):
    settings.HL7_DEFAULT_CHARSET = "8859/1"
    raw = fixture("smallvendor_orm_o01_nw_lf.hl7").replace(b"Smith^John", "Søren^Ærø".encode("latin-1"))
    assert map_message(parse(raw))[0].patient.patient_name == "Søren^Ærø"


def test_wrong_encoding_is_an_error_at_msh18():
    raw = fixture("epic_orm_o01_nw.hl7").replace(b"Testpatient", "Tëst".encode("latin-1"))
    with pytest.raises(HL7Error) as ei:
        parse(raw)
    assert ei.value.code == 102 and ei.value.location == "MSH^1^18" and ei.value.ack_code == "AE"


def test_unknown_charset_is_rejected():
    raw = fixture("epic_orm_o01_nw.hl7").replace(b"UNICODE UTF-8", b"ISO IR 87")
    with pytest.raises(HL7Error) as ei:
        parse(raw)
    assert (ei.value.code, ei.value.ack_code) == (103, "AR")


def test_msh_is_read_when_body_does_not_parse():
    raw = b"MSH|^~\\&|APP|FAC|PACS|RAD|2025||ORM^O01|X1|P|2.3.1\r\x00\x01garbage segment\r"
    msh = read_msh(raw)
    assert (msh.msh_3, msh.msh_10, msh.message_type, msh.version) == ("APP", "X1", "ORM^O01", "2.3.1")
    with pytest.raises(HL7Error) as ei:
        parse(raw)
    assert ei.value.ack_code == "AR" and ei.value.code == 100
    assert read_msh(b"no header at all") is None


@pytest.mark.parametrize("raw,code,location", [
    (b"MSH|^~\\&|A|B|C|D|2025||ORU^R01|1|P|2.5.1\rPID|1||1\r", 200, "MSH^1^9"),
    (b"MSH|^~\\&|A|B|C|D|2025||ADT^A03|1|P|2.5.1\rPID|1||1\r", 201, "MSH^1^9^2"),
    (b"MSH|^~\\&|A|B|C|D|2025||ORM^O01|1|P|2.2\rPID|1||1\r", 203, "MSH^1^12"),
    (b"MSH|^~\\&|A|B|C|D|2025||OMI^O23|1|P|2.3.1\rPID|1||1\r", 203, "MSH^1^12"),
])
def test_unsupported_type_event_version_rejected(raw, code, location):
    with pytest.raises(HL7Error) as ei:
        map_message(parse(raw))
    assert (ei.value.code, ei.value.location, ei.value.ack_code) == (code, location, "AR")


def test_ack_layout_original_mode():
    msh = read_msh(fixture("epic_orm_o01_nw.hl7"))
    ack = ack_fields(build_ack(msh, "AA"))
    assert (ack["msh_3"], ack["msh_4"], ack["msh_5"], ack["msh_6"]) == ("PACS", "RADIOLOGY", "EPIC", "SYNTH_HOSP")
    assert ack["msh_9"] == "ACK^O01^ACK" and ack["msh_12"] == "2.3.1"
    assert ack["msh_10"] and ack["msh_10"] != "EPC000101" and len(ack["msh_10"]) <= 20
    assert (ack["msa_1"], ack["msa_2"]) == ("AA", "EPC000101") and ack["err"] is None


def test_ack_error_v231_and_v251_err_layout():
    v231 = read_msh(fixture("epic_orm_o01_nw.hl7"))
    a = ack_fields(build_ack(v231, "AE", error_code=204, error_location="ORC^1^2", error_text="unknown order"))
    assert a["msa_1"] == "AE" and a["msa_3"] == "unknown order"
    assert a["err"] == "ERR|ORC^1^2^204&Unknown key identifier&HL70357"
    v251 = read_msh(fixture("omi_o23_nw.hl7"))
    b = ack_fields(build_ack(v251, "AR", error_code=101, error_location="IPC^1^5", error_text="no modality"))
    assert b["err"] == "ERR||IPC^1^5|101^Required field missing^HL70357|E||||no modality"
    assert b["msh_9"] == "ACK^O23^ACK"


def test_ack_without_any_msh_and_escaping():
    a = ack_fields(build_ack(None, "AR", error_code=100, error_location="MSH^1", error_text="a|b^c"))
    assert a["msa_1"] == "AR" and a["msa_2"] == ""
    assert escape("a|b^c~d\\e&f", read_msh(fixture("epic_orm_o01_nw.hl7"))) == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    latin = read_msh(fixture("cerner_orm_o01_nw_crlf.hl7"))
    assert encode_ack(build_ack(latin, "AE", error_code=207, error_text="Jürgen"), latin).count("ü".encode("latin-1"))


def test_epic_orm_two_groups_one_order_with_two_procedures():
    cmds = map_message(parse(fixture("epic_orm_o01_nw.hl7")))
    assert len(cmds) == 1
    cmd = cmds[0]
    assert isinstance(cmd, OrderCommand)
    assert (cmd.order_control, cmd.order_status, cmd.placer_order_number, cmd.placer_namespace) == (
        "NW", "SC", "P10001", "EPIC")
    assert [str(i) for i in cmd.patient.identifiers] == ["E1000001^^^SYNTHMRN", "900-00-0001^^^SSA"]
    assert cmd.patient.patient_birth_date == date(1980, 2, 15) and cmd.patient.patient_sex == "F"
    assert cmd.visit.visit_number == "V5000001" and cmd.referring_physician_name == "Referrer^Robert^^Dr"
    assert cmd.ordering_provider == "Orderer^Olivia^^Dr" and cmd.reason_for_study == "Headache"
    p1, p2 = cmd.procedures
    assert (p1.accession_number, p1.requested_procedure_id, p1.study_instance_uid) == (
        "EA100001", "RP100001", "1.2.826.0.1.3680043.10.1234.1001")
    assert (p1.procedure_code_value, p1.procedure_code_scheme) == ("CTHEAD", "EPICPROC")
    assert p1.requested_procedure_priority == "ROUTINE" and p2.requested_procedure_priority == "STAT"
    assert p1.steps[0].scheduled_procedure_step_id == "SPS100001" and p1.steps[0].modality == "CT"
    assert p1.steps[0].scheduled_start.isoformat() == "2025-03-02T09:30:00+00:00"


def test_orm_groups_with_different_placer_numbers_are_separate_orders():
    raw = fixture("epic_orm_o01_nw.hl7").replace(b"ORC|NW|P10001^EPIC|||SC||^^^20250302100000",
                                                 b"ORC|NW|P10002^EPIC|||SC||^^^20250302100000")
    cmds = map_message(parse(raw))
    assert [c.placer_order_number for c in cmds] == ["P10001", "P10002"]


def test_station_ae_site_rule_for_orm(settings):
    settings.HL7_STATION_AE_BY_MODALITY = "MR=MR1, CT = CT_ROOM2"
    cmd = map_message(parse(fixture("epic_orm_o01_nw.hl7")))[0]
    assert cmd.procedures[0].steps[0].scheduled_station_ae_title == "CT_ROOM2"


def test_omi_ipc_segments_are_steps():
    cmd = map_message(parse(fixture("omi_o23_nw.hl7")))[0]
    (proc,) = cmd.procedures
    assert (proc.accession_number, proc.requested_procedure_id) == ("EA400001", "RP400001")
    assert [(s.scheduled_procedure_step_id, s.modality, s.scheduled_station_ae_title) for s in proc.steps] == [
        ("SPS400001", "CT", "PETCT1"), ("SPS400002", "PT", "PETCT1")]
    assert proc.steps[1].protocol_code_value == "PTWB" and proc.steps[0].scheduled_station_name == "PETCT_ROOM"
    assert proc.steps[0].scheduled_start.isoformat() == "2025-03-03T08:15:00+00:00"


def test_adt_events():
    a04 = map_message(parse(fixture("cerner_adt_a04.hl7")))[0]
    assert isinstance(a04, RegisterPatient) and a04.visit.visit_number == "CV88010"
    a08 = map_message(parse(fixture("cerner_adt_a08.hl7")))[0]
    assert isinstance(a08, UpdatePatient) and a08.patient.patient_name == "Doe-Smith^Jane^Q"
    a01 = map_message(parse(fixture("epic_adt_a01.hl7")))[0]
    assert isinstance(a01, RegisterPatient) and a01.visit.admit_datetime is not None
    assert isinstance(map_message(parse(fixture("smallvendor_adt_a05_dup_source.hl7")))[0], RegisterPatient)
    a40 = map_message(parse(fixture("epic_adt_a40.hl7")))[0]
    assert isinstance(a40, MergePatients) and a40.retired.id_number == "E1000099"
    assert a40.survivor.primary.id_number == "E1000001"


@pytest.mark.parametrize("mutate,code,location", [
    (lambda r: r.replace(b"ORC|NW|", b"ORC|ZZ|", 1), 101, "ORC^1^1"),
    (lambda r: r.replace(b"ORC|NW|P10001^EPIC|||SC", b"ORC|NW||||SC", 1).replace(b"OBR|1|P10001^EPIC|", b"OBR|1||"),
     101, "ORC^1^2"),
    (lambda r: r.replace(b"|CT|||^^^20250302093000", b"||||^^^20250302093000", 1), 101, "OBR^1^24"),
    (lambda r: r.replace(b"E1000001^^^SYNTHMRN^MR~900-00-0001^^^SSA^SS", b"", 1), 101, "PID^1^3"),
    (lambda r: r.replace(b"19800215", b"19801315", 1), 102, "PID^1^7"),
])
def test_application_errors_carry_code_and_location(mutate, code, location):
    raw = mutate(fixture("epic_orm_o01_nw.hl7"))
    with pytest.raises(HL7Error) as ei:
        map_message(parse(raw))
    assert (ei.value.code, ei.value.location, ei.value.ack_code) == (code, location, "AE")


@pytest.mark.parametrize("name,anchor,location", [
    # a second OBR in the second ORC group of the ORM: the message's third OBR
    ("epic_orm_o01_nw.hl7", b"\rZDS|1.2.826.0.1.3680043.10.1234.1002", "OBR^3"),
    ("omi_o23_nw.hl7", b"\rIPC|EA400001|RP400001|1.2.826.0.1.3680043.10.1234.4001|SPS400001", "OBR^2"),
])
def test_a_second_obr_after_one_orc_is_a_segment_sequence_error(name, anchor, location):
    raw = fixture(name)
    assert anchor in raw
    raw = raw.replace(anchor, b"\rOBR|9|P1^EPIC||X^Y^EPICPROC||||||||||||||EA999999|RP999999" + anchor, 1)
    with pytest.raises(HL7Error) as ei:
        map_message(parse(raw))
    assert (ei.value.code, ei.value.location, ei.value.ack_code) == (100, location, "AE")


def test_with_control_id_helper():
    raw = with_control_id(fixture("smallvendor_orm_o01_nw_lf.hl7"), "NEW1")
    assert read_msh(raw).msh_10 == "NEW1"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.hl7")))
def test_field_split_matches_python_hl7(name):
    """Segments and fields read by our split are those of python-hl7's parse, escapes included."""
    msg = parse(fixture(name))
    reference = msg.message  # python-hl7's tree
    assert len(msg.fields) == len(reference)
    for ours, theirs in zip(msg.fields, reference, strict=True):
        assert ours == [str(f) for f in theirs]
        seg = Segment(ours, msg)
        for n in range(1, len(ours)):
            for rep in range(len(seg.repetitions(n))):
                assert seg.components(n, rep) == [reference.unescape(str(c)) for c in
                                                  str(theirs[n]).split(reference.separators[2])[rep]
                                                  .split(reference.separators[3])]


def test_escaped_field_is_unescaped():
    raw = fixture("epic_orm_o01_nw.hl7").replace(b"Testpatient^Anna", b"Test\\T\\patient^Anna\\F\\B")
    pid = parse(raw).segment("PID")
    assert pid.components(5)[:2] == ["Test&patient", "Anna|B"]
