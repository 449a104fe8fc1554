"""DICOM audit messages (PS3.15 A.5): every kind validated against the A.5.1.1 schema, and the
fields each A.5.3 table asks for."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from audit_export.message import AuditMessageError, Engine, to_xml
from tests.support.audit_records import ENGINE, PATIENT, RECORDS, SCHEMA, STUDY, record


def validated(message: bytes) -> etree._Element:
    root = etree.fromstring(message)
    assert SCHEMA.validate(root), SCHEMA.error_log
    return root


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_message_kind_validates_against_the_schema(name):
    root = validated(to_xml(RECORDS[name], ENGINE))
    assert root.find("EventIdentification/EventID").get("csd-code") == RECORDS[name]["event_id"]
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "RIS-PACS-TEST"


def test_the_schema_rejects_what_the_standard_forbids():
    """The validator is not vacuous: a message without EventDateTime, or with an outcome that is
    none of 0/4/8/12, or with an object without name or query, fails."""
    good = etree.fromstring(to_xml(RECORDS["patient record update"], ENGINE))
    for break_it in (
        lambda root: root.find("EventIdentification").attrib.pop("EventDateTime"),
        lambda root: root.find("EventIdentification").set("EventOutcomeIndicator", "1"),
        lambda root: root.find("ParticipantObjectIdentification").remove(
            root.find("ParticipantObjectIdentification/ParticipantObjectName")),
        lambda root: root.remove(root.find("AuditSourceIdentification")),
    ):
        broken = etree.fromstring(etree.tostring(good))
        break_it(broken)
        assert not SCHEMA.validate(broken)


def test_event_identification_in_utc_with_codes_and_meanings():
    root = validated(to_xml(RECORDS["failed login"], ENGINE))
    event = root.find("EventIdentification")
    assert event.get("EventDateTime") == "2025-03-14T07:26:53.589793Z"  # 09:26 at +02:00
    assert event.get("EventActionCode") == "E"
    assert event.get("EventOutcomeIndicator") == "4"
    assert dict(event.find("EventID").attrib) == {"csd-code": "110114", "codeSystemName": "DCM",
                                                   "originalText": "User Authentication"}
    assert event.find("EventTypeCode").get("csd-code") == "110122"
    assert event.find("EventTypeCode").get("originalText") == "Login"
    assert event.find("EventOutcomeDescription").text == "wrong password"


def test_query_source_and_destination_and_the_query_data_set():
    """A.5.3.12: the querying AE is Source (requestor), the engine Destination; the query object
    is the SOP Class UID with the data set base64 and its transfer syntax as a detail."""
    root = validated(to_xml(RECORDS["MWL query"], ENGINE))
    requestor, engine = root.findall("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("AlternativeUserID"), requestor.get("UserIsRequestor")) == (
        "CT1", "AETITLES=CT1", "true")
    assert requestor.get("NetworkAccessPointID") == "10.0.1.5"
    assert requestor.get("NetworkAccessPointTypeCode") == "2"
    assert requestor.find("RoleIDCode").get("csd-code") == "110153"
    assert (engine.get("UserID"), engine.get("AlternativeUserID"), engine.get("UserIsRequestor")) == (
        "RIS-PACS-TEST", "AETITLES=PACS", "false")
    assert engine.get("NetworkAccessPointID") == "pacs.test.example"
    assert engine.get("NetworkAccessPointTypeCode") == "1"
    assert engine.find("RoleIDCode").get("csd-code") == "110152"
    query = root.find("ParticipantObjectIdentification")
    assert (query.get("ParticipantObjectID"), query.get("ParticipantObjectTypeCode"),
            query.get("ParticipantObjectTypeCodeRole")) == ("1.2.840.10008.5.1.4.31", "2", "3")
    assert query.find("ParticipantObjectIDTypeCode").get("csd-code") == "110181"
    assert base64.b64decode(query.find("ParticipantObjectQuery").text) == b"\x08\x00\x50\x00\x0a\x00\x00\x00ACC-TEST-1"
    detail = query.find("ParticipantObjectDetail")
    assert detail.get("type") == "TransferSyntax"
    assert base64.b64decode(detail.get("value")) == b"1.2.840.10008.1.2.1"


def test_a_web_search_is_search_criteria_with_the_query_text():
    query = validated(to_xml(RECORDS["reading worklist search"], ENGINE)).find("ParticipantObjectIdentification")
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert query.find("ParticipantObjectIDTypeCode").get("csd-code") == "10"
    assert base64.b64decode(query.find("ParticipantObjectQuery").text) == b"modality=CT&status=unread"


def test_patient_and_study_objects():
    root = validated(to_xml(RECORDS["instances received by C-STORE"], ENGINE))
    study, patient = root.findall("ParticipantObjectIdentification")
    assert patient.get("ParticipantObjectID") == "TEST-000123^^^TESTHOSP"
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    assert dict(patient.find("ParticipantObjectIDTypeCode").attrib) == {
        "csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number"}
    assert patient.find("ParticipantObjectName").text == "TEST^PATIENT"
    assert study.get("ParticipantObjectID") == STUDY["id"]
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert study.find("ParticipantObjectDescription/Accession").get("Number") == "ACC-TEST-1"
    sop_class = study.find("ParticipantObjectDescription/SOPClass")
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == ("1.2.840.10008.5.1.4.1.1.2", "120")
    # The modality sent (Source), the engine received (Destination).
    sender, engine = root.findall("ActiveParticipant")
    assert sender.find("RoleIDCode").get("csd-code") == "110153"
    assert engine.find("RoleIDCode").get("csd-code") == "110152"


def test_an_outbound_transfer_has_the_engine_as_source_and_the_destination():
    root = validated(to_xml(RECORDS["instances sent to the VNA"], ENGINE))
    engine, destination = root.findall("ActiveParticipant")
    assert (engine.get("UserID"), engine.get("UserIsRequestor")) == ("RIS-PACS-TEST", "true")
    assert engine.find("RoleIDCode").get("csd-code") == "110153"
    assert (destination.get("UserID"), destination.get("UserIsRequestor")) == ("VNA@10.0.2.7:104", "false")
    assert destination.find("RoleIDCode").get("csd-code") == "110152"


def test_audit_log_used_names_the_audit_log():
    log = validated(to_xml(RECORDS["audit log used"], ENGINE)).find("ParticipantObjectIdentification")
    assert (log.get("ParticipantObjectTypeCode"), log.get("ParticipantObjectTypeCodeRole")) == ("2", "13")
    assert log.find("ParticipantObjectIDTypeCode").get("csd-code") == "12"
    assert log.find("ParticipantObjectName").text == "Security Audit Log"


def test_application_activity_roles():
    root = validated(to_xml(RECORDS["application stop by a user"], ENGINE))
    launcher, application = root.findall("ActiveParticipant")
    assert launcher.find("RoleIDCode").get("csd-code") == "110151"
    assert application.find("RoleIDCode").get("csd-code") == "110150"
    started = validated(to_xml(RECORDS["application start"], ENGINE)).findall("ActiveParticipant")
    assert len(started) == 1 and started[0].get("UserIsRequestor") == "true"


def test_order_number_as_filler_identifier():
    root = validated(to_xml(RECORDS["order record from HL7"], ENGINE))
    order = root.findall("ParticipantObjectIdentification")[1]
    assert order.get("ParticipantObjectID") == "F-1001^RIS"
    assert order.find("ParticipantObjectIDTypeCode").get("csd-code") == "FILL"
    assert order.find("ParticipantObjectDescription/Accession").get("Number") == "ACC-TEST-1"


def test_audit_source_from_settings(settings):
    settings.DICOM_AE_TITLE = "MYPACS"
    settings.AUDIT_SOURCE_ID = "HOSPITAL-RIS"
    root = validated(to_xml(RECORDS["login"]))
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "HOSPITAL-RIS"
    assert root.findall("ActiveParticipant")[1].get("AlternativeUserID") == "AETITLES=MYPACS"
    assert Engine.from_settings().ae_title == "MYPACS"


@pytest.mark.parametrize(("changes", "says"), [
    ({"event_id": "999999"}, "event_id"),
    ({"event_type": "123"}, "event_type"),
    ({"action": "X"}, "action"),
    ({"outcome": 3}, "outcome"),
    ({"actor_kind": "robot"}, "actor_kind"),
    ({"objects": [STUDY]}, "needs a patient object"),
    ({"objects": [STUDY, PATIENT, {"type": "spaceship", "id": "1"}]}, "object type"),
    ({"occurred_at": RECORDS["login"]["occurred_at"].replace(tzinfo=None)}, "aware"),
])
def test_a_record_that_cannot_be_a_valid_message_is_refused_naming_the_field(changes, says):
    bad = {**record("110103", "R", actor="dr.reader", actor_kind="user", objects=[STUDY, PATIENT]), **changes}
    with pytest.raises(AuditMessageError) as refused:
        to_xml(bad, ENGINE)
    assert says in str(refused.value)
    assert "TEST-000123" not in str(refused.value)  # never a patient's identifier
