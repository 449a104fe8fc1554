"""Changes of patient data are on record, in the change's transaction (PS3.15 A.5.3.13-15):
through the HL7 intake (actor MSH-3^MSH-4, kind hl7, the control ID in detail), the domain
services, and the admin."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from audit import trail
from audit.models import AuditRecord
from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage
from project.auditing import events, recording
from project.auditing.actors import acting
from ris.commands import PatientData, PatientIdentity, RegisterPatient
from ris.models import Patient
from ris.services import patients
from tests.support.hl7 import fixture, new_order

pytestmark = pytest.mark.django_db


def _records(event, action):
    return list(AuditRecord.records.filter(event_id=event.value, action=action).order_by("id"))


def _named(record) -> set[tuple[str, str]]:
    return set(record.patients.values_list("patient_id", "issuer"))


def test_a08_writes_patient_record_update_with_before_and_after_as_the_sender():
    assert b"|AA|" in handle_payload(fixture("cerner_adt_a04.hl7"), "127.0.0.1:5000")
    [created] = _records(events.PATIENT_RECORD, events.CREATE)
    assert _named(created) == {("C2000010", "SYNTHCMRN")}
    assert created.actor == "CERNER^SYNTH_MED_CTR" and created.actor_kind == events.HL7
    assert created.detail["message_control_id"] == "CRN-A04-1"

    assert b"|AA|" in handle_payload(fixture("cerner_adt_a08.hl7"), "127.0.0.1:5000")
    [updated] = _records(events.PATIENT_RECORD, events.UPDATE)
    assert _named(updated) == {("C2000010", "SYNTHCMRN")}
    assert updated.actor == "CERNER^SYNTH_MED_CTR" and updated.actor_kind == events.HL7
    assert updated.detail["message_control_id"] == "CRN-A08-1"
    assert updated.detail["changed"] == {
        "patient_name": {"old": "Doe^Jane", "new": "Doe-Smith^Jane^Q"},
        "patient_birth_date": {"old": "1970-11-11", "new": "1970-11-12"},
    }


def test_a40_names_both_patients():
    handle_payload(fixture("epic_adt_a01.hl7"), "")
    retired = Patient.objects.create(patient_name="OLD^RECORD")
    retired.identifiers.create(id_number="E1000099", assigning_authority="SYNTHMRN")
    assert b"|AA|" in handle_payload(fixture("epic_adt_a40.hl7"), "")
    merge = [r for r in _records(events.PATIENT_RECORD, events.UPDATE) if "merge" in r.detail]
    assert len(merge) == 1
    assert {("E1000001", "SYNTHMRN"), ("E1000099", "SYNTHMRN")} <= _named(merge[0])
    assert merge[0].detail["message_control_id"] == "EPC-A40-1"
    assert merge[0].actor == "EPIC^SYNTH_HOSP"


def test_new_order_by_hl7_is_recorded_in_one_statement_with_the_message():
    from django.db import connection

    statements = []

    def capture(execute, sql, params, many, context):
        # The statement as the code wrote it (prepared statements are logged without their text).
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        assert b"|AA|" in handle_payload(new_order("AUD-NW-1"), "")
    audit_statements = [sql for sql in statements if "audit_audit" in sql]
    assert len(audit_statements) == 1, "the intake writes its audit records in one statement"
    [order] = _records(events.ORDER_RECORD, events.CREATE)
    assert _named(order) == {("E1000001", "SYNTHMRN")}
    assert order.actor == "EPIC^SYNTH_HOSP" and order.detail["message_control_id"] == "AUD-NW-1"
    assert {o["type"] for o in order.objects} >= {"order", "accession"}
    [patient] = _records(events.PATIENT_RECORD, events.CREATE)
    assert ("E1000001", "SYNTHMRN") in _named(patient)


def test_a_message_whose_change_rolls_back_leaves_no_record():
    # A cancel for an order nobody placed: the patient update in it is rolled back with it.
    handle_payload(fixture("epic_adt_a01.hl7"), "")
    before = AuditRecord.records.count()
    ack = handle_payload(fixture("epic_orm_o01_ca.hl7"), "")
    assert b"|AE|" in ack
    assert InboundMessage.objects.filter(status=InboundMessage.STATUS_ERROR).exists()
    assert AuditRecord.records.count() == before


def test_a_service_change_that_rolls_back_leaves_no_record():
    class Refused(Exception):
        pass

    cmd = RegisterPatient(PatientData([PatientIdentity("RB0001", "HOSP")], patient_name="ROLL^BACK"))
    with pytest.raises(Refused), transaction.atomic():
        with acting("alice", events.USER, source_address="192.0.2.7"):
            patients.register_patient(cmd)
        assert AuditRecord.records.filter(patients__patient_id="RB0001").count() == 1
        raise Refused
    assert not Patient.objects.filter(identifiers__id_number="RB0001").exists()
    assert AuditRecord.records.filter(patients__patient_id="RB0001").count() == 0


def test_the_domain_records_through_the_trail_the_audit_app_registered():
    """ris imports nothing of ours but project: its changes go to ``project.auditing.recording``,
    which the audit app pointed at its trail when Django started."""
    assert recording.registered() is trail


def test_a_service_change_with_no_recorder_raises_and_is_not_kept(monkeypatch):
    monkeypatch.setattr(recording, "_recorder", None)
    cmd = RegisterPatient(PatientData([PatientIdentity("NOREC1", "HOSP")], patient_name="NO^RECORDER"))
    with pytest.raises(ImproperlyConfigured, match="no audit recorder"), transaction.atomic():
        patients.register_patient(cmd)
    assert not Patient.objects.filter(identifiers__id_number="NOREC1").exists()
    assert AuditRecord.records.count() == 0


def test_a_message_with_no_recorder_is_refused_and_kept_but_changes_nothing(monkeypatch):
    monkeypatch.setattr(recording, "_recorder", None)
    ack = handle_payload(fixture("cerner_adt_a04.hl7"), "127.0.0.1:5000")
    assert b"|AA|" not in ack
    assert InboundMessage.objects.filter(message_control_id="CRN-A04-1").exists()
    assert not Patient.objects.filter(identifiers__id_number="C2000010").exists()
    assert AuditRecord.records.count() == 0


def test_the_actor_of_the_context_is_recorded_and_without_one_the_engine():
    with acting("alice", events.USER, source_address="192.0.2.7"):
        patients.register_patient(RegisterPatient(PatientData([PatientIdentity("CTX1", "HOSP")])))
    patients.register_patient(RegisterPatient(PatientData([PatientIdentity("CTX2", "HOSP")])))
    by_user, by_engine = _records(events.PATIENT_RECORD, events.CREATE)
    assert (by_user.actor, by_user.actor_kind, by_user.source_address) == ("alice", events.USER, "192.0.2.7")
    assert (by_engine.actor, by_engine.actor_kind) == ("pacs", events.SYSTEM)


def test_audit_enabled_off_records_no_change(settings):
    settings.AUDIT_ENABLED = False
    assert b"|AA|" in handle_payload(new_order("AUD-OFF-1"), "")
    assert AuditRecord.records.count() == 0
