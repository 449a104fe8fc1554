"""Patient updates forwarded to an archive (hl7gateway.patient_updates, IHE RAD-12): the
ADT^A08 and ADT^A40 layouts (HL7 v2.5.1 chapter 3), read back by an independent parser
(python-hl7) and checked against their message structures by hl7apy (``hl7gateway.conformance``).  Pure tests, synthetic values."""

from __future__ import annotations

import datetime as dt

import hl7
import pytest

from hl7gateway import conformance, oru
from hl7gateway import patient_updates as pu

APPLIED = dt.datetime(2026, 3, 2, 10, 0, 5, tzinfo=dt.UTC)
HEADER = oru.MessageHeader(message_control_id="ADT000000000007", created_at=APPLIED, sending_application="PACS",
                           sending_facility="RADIOLOGY", receiving_application="VNA", receiving_facility="ARCHIVE")


def content(**overrides) -> pu.PatientUpdateContent:
    values = dict(
        event=pu.A08,
        patient_identifiers=(oru.PatientIdentifier("MRN000123", "HOSP", "MR"),
                             oru.PatientIdentifier("INS-77", "INSURER")),
        patient_name=oru.Person.from_dicom_pn("TESTPERSON^ANNA^MARIA"),
        patient_birth_date=dt.date(1961, 3, 14),
        patient_sex="F",
        recorded_at=APPLIED,
    )
    values.update(overrides)
    return pu.PatientUpdateContent(**values)


def parsed(c: pu.PatientUpdateContent) -> tuple[str, hl7.Message]:
    text = pu.render_patient_update(c, HEADER, time_zone="UTC")
    return text, hl7.parse(text)


def test_a08_carries_the_patient_as_held():
    text, msg = parsed(content())
    assert str(msg.segment("MSH")[9]) == "ADT^A08^ADT_A01" and str(msg.segment("MSH")[12]) == "2.5.1"
    assert [str(msg.segment("MSH")[n]) for n in (3, 4, 5, 6, 10)] == [
        "PACS", "RADIOLOGY", "VNA", "ARCHIVE", "ADT000000000007"]
    assert str(msg.segment("EVN")[1]) == "A08" and str(msg.segment("EVN")[2]) == "20260302100005+0000"
    pid = msg.segment("PID")
    assert str(pid[3]) == "MRN000123^^^HOSP^MR~INS-77^^^INSURER"
    assert (str(pid[5]), str(pid[7]), str(pid[8])) == ("TESTPERSON^ANNA^MARIA", "19610314", "F")
    assert [str(f) for f in msg.segment("PV1")[1:3]] == ["1", "N"]
    assert not [s for s in msg if str(s[0]) == "MRG"]
    assert conformance.problems(text) == []


def test_a40_names_the_retired_identifier():
    text, msg = parsed(content(event=pu.A40, retired_identifier=oru.PatientIdentifier("MRN000999", "HOSP")))
    assert str(msg.segment("MSH")[9]) == "ADT^A40^ADT_A39" and str(msg.segment("EVN")[1]) == "A40"
    assert str(msg.segment("MRG")[1]) == "MRN000999^^^HOSP"
    assert not [s for s in msg if str(s[0]) == "PV1"]
    assert conformance.problems(text) == []


def test_delimiters_in_a_name_are_escaped():
    _, msg = parsed(content(patient_name=oru.Person.from_dicom_pn("O|BRIEN&CO^ANNA")))
    assert oru.unescape(str(msg.segment("PID")[5][0][0])) == "O|BRIEN&CO"


@pytest.mark.parametrize("bad, reason", [
    (dict(event="A31"), "event must be one of"),
    (dict(event=pu.A40), "MRG-1"),
    (dict(patient_identifiers=()), "PID-3"),
])
def test_what_cannot_be_sent_is_refused_with_the_reason(bad, reason):
    with pytest.raises(ValueError, match=reason):
        pu.render_patient_update(content(**bad), HEADER)
