"""DICOM events on the audit trail (PS3.15 A.5.3): the real AE on an ephemeral port, dcmtk's
findscu / storescu / echoscu and pynetdicom as the peers, the records read back from PostgreSQL.

MWL C-FIND: one Query record (A.5.3.10) with the matching keys asked and the patients answered;
C-STORE: one DICOM Instances Transferred record (A.5.3.7, action C) per association and study;
MPPS: Procedure Record (A.5.3.15), C then U, in the transaction that applies it; refusals of
undeclared AEs and failed TLS handshakes: Security Alert, Node Authentication, outcome 8."""

from __future__ import annotations

import time

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, Verification

from audit import trail
from audit.models import AuditPatient, AuditRecord
from pacs.dimse import db
from pacs.models import DicomNode, DicomRefusal
from project.auditing import events
from tests.factories import local, make_patient, make_step
from tests.support.dicom import associate_from, findscu, port_of, tls_echoscu
from tests.support.mpps import completion_dataset, n_create_dataset
from tests.support.orthanc import storescu, write_study

SPS = "(0040,0100)[0]"


def _records(event, **filters):
    trail.flush()
    return list(AuditRecord.records.filter(event_id=event.value, **filters).order_by("id"))


def _records_at_association_end(event, count: int, timeout: float = 10.0):
    """The records the acceptor writes when an association ends: the SCU may return from its
    A-RELEASE before the acceptor's thread has run its end of association."""
    deadline = time.monotonic() + timeout
    while len(records := _records(event)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return records


@pytest.fixture(autouse=True)
def _drained_writer():
    yield
    assert trail.stop(timeout=60), "the audit writer did not drain"


@pytest.fixture
def worklist(transactional_db):
    make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1", modality="CT", station="CT1",
              start=local(2026, 11, 26, 9, 0))
    make_step(make_patient("ROE^JANE", "P2", issuer="OTHERHOSP"), accession="ACC2", modality="CT", station="CT1",
              start=local(2026, 11, 26, 10, 0))
    make_step(make_patient("POE^EDGAR", "P3"), accession="ACC3", modality="MR", station="MR1",
              start=local(2026, 11, 26, 11, 0))


def test_mwl_query_recorded_with_the_keys_asked_and_the_patients_answered(dicom_server, worklist, tmp_path):
    keys = ["PatientName=", "AccessionNumber=", f"{SPS}.Modality=CT", f"{SPS}.ScheduledProcedureStepStartDate="]
    proc, items = findscu(dicom_server, keys, tmp_path, aet="MOD1")
    assert proc.returncode == 0, proc.stderr
    assert sorted(i.AccessionNumber for i in items) == ["ACC1", "ACC2"]
    [record] = _records(events.QUERY)
    assert (record.action, record.outcome, record.actor, record.actor_kind) == ("E", 0, "MOD1", "dicom")
    assert record.source_address == "127.0.0.1" and record.destination == "PACS"
    [query] = [o for o in record.objects if o["type"] == "query"]
    assert query["id"] == "1.2.840.10008.5.1.4.31"  # ParticipantObjectID: the SOP Class UID (A.5.3.10)
    # only the matching keys: the empty return keys were not asked for
    assert query["detail"]["keys"] == {"ScheduledProcedureStepSequence": [{"Modality": "CT"}]}
    assert record.detail == {"answers": 2}
    # the patients answered, named by ID and issuer although the query did not return PatientID
    assert sorted(AuditPatient.objects.filter(record=record).values_list("patient_id", "issuer")) == [
        ("P1", "HOSP"), ("P2", "OTHERHOSP")]
    assert "DOE" not in str(record.objects) and "DOE" not in str(record.detail)  # no names on the trail


def test_mwl_query_naming_a_patient_keeps_the_search_text(dicom_server, worklist, tmp_path):
    proc, items = findscu(dicom_server, ["PatientID=P3", "PatientName=", f"{SPS}.Modality="], tmp_path, aet="MR1")
    assert proc.returncode == 0 and len(items) == 1, proc.stderr
    [record] = _records(events.QUERY)
    assert record.objects[-1]["detail"]["keys"] == {"PatientID": "P3"}
    assert list(AuditPatient.objects.filter(record=record).values_list("patient_id", "issuer")) == [("P3", "HOSP")]


def test_mwl_query_answering_nothing_is_recorded_without_patients(dicom_server, worklist, tmp_path):
    proc, items = findscu(dicom_server, ["PatientID=NOBODY"], tmp_path)
    assert proc.returncode == 0 and items == []
    [record] = _records(events.QUERY)
    assert record.detail == {"answers": 0} and not AuditPatient.objects.filter(record=record).exists()


def test_c_store_one_record_per_association_and_study(dicom_server, store_dir, tmp_path):
    first, second = generate_uid(), generate_uid()
    paths = (write_study(tmp_path / "a", 3, study_instance_uid=first, patient_id="PAT-A")
             + write_study(tmp_path / "b", 2, study_instance_uid=second, patient_id="PAT-B"))
    proc = storescu(port_of(dicom_server), paths, calling="CT1")  # one association, five instances
    assert proc.returncode == 0, proc.stderr
    records = _records_at_association_end(events.INSTANCES_TRANSFERRED, 2)
    assert len(records) == 2  # per study, not per instance
    by_study = {r.objects[-1]["id"]: r for r in records}
    assert by_study[first].objects[-1]["detail"] == {"instances": 3}
    assert by_study[second].objects[-1]["detail"] == {"instances": 2}
    for record, patient in ((by_study[first], "PAT-A"), (by_study[second], "PAT-B")):
        assert (record.action, record.outcome, record.actor, record.actor_kind) == ("C", 0, "CT1", "dicom")
        assert record.source_address == "127.0.0.1" and record.destination == "PACS"
        assert list(AuditPatient.objects.filter(record=record).values_list("patient_id", "issuer")) == [
            (patient, "HOSP")]
    # a second association sending the same study again is another record
    proc = storescu(port_of(dicom_server), paths[:1], calling="CT1")
    assert proc.returncode == 0, proc.stderr
    assert len(_records_at_association_end(events.INSTANCES_TRANSFERRED, 3)) == 3


def _mpps_records(uid: str) -> list:
    """The Procedure Records of the MPPS ``uid`` (the steps' status changes it causes are
    Procedure Records of their own, written by the domain)."""
    return [r for r in AuditRecord.records.filter(event_id=events.PROCEDURE_RECORD.value).order_by("id")
            if any(o.get("id") == uid for o in r.objects)]


def test_mpps_n_create_and_n_set_are_procedure_records(dicom_server, transactional_db):
    step = make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1", modality="CT", station="CT1")
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port_of(dicom_server), ae_title="PACS")
    assert assoc.is_established
    uid = generate_uid()
    try:
        status, _ = assoc.send_n_create(n_create_dataset(step), ModalityPerformedProcedureStep, uid)
        assert status.Status == 0
        # written in the N-CREATE's own transaction: there before any flush of the writer thread
        [created] = _mpps_records(uid)
        status, _ = assoc.send_n_set(completion_dataset()[0], ModalityPerformedProcedureStep, uid)
        assert status.Status == 0
    finally:
        assoc.release()
    created, updated = _mpps_records(uid)
    assert (created.action, updated.action) == ("C", "U")
    assert created.objects[-1]["id"] == uid and created.objects[-1]["detail"]["status"] == "IN PROGRESS"
    assert updated.objects[-1]["detail"]["status"] == "COMPLETED"
    for record in (created, updated):
        assert (record.actor, record.actor_kind, record.source_address) == ("CT1", "dicom", "127.0.0.1")
        assert list(AuditPatient.objects.filter(record=record).values_list("patient_id", flat=True)) == ["P1"]
    # the step's status changes the MPPS caused (STARTED, then COMPLETED) are the modality's too
    step_changes = [r for r in AuditRecord.records.filter(event_id=events.PROCEDURE_RECORD.value).order_by("id")
                    if r not in (created, updated)]
    assert len(step_changes) >= 2
    for record in step_changes:
        assert (record.actor, record.actor_kind, record.source_address) == ("CT1", "dicom", "127.0.0.1")


def test_refused_associations_are_security_alerts(listen, settings):
    settings.DICOM_UNKNOWN_AE_FROM = "127.0.0.1/32"  # 127.0.0.2 is not trusted
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", allow_echo=True)
    server = listen()
    assoc, rejected = associate_from(server, "INTRUDER", [Verification])
    assert not assoc.is_established and rejected is not None
    assoc, rejected = associate_from(server, "CT1", [Verification])  # a node from another address
    assert not assoc.is_established and rejected is not None
    db.flush()
    alerts = _records(events.SECURITY_ALERT)
    assert [(a.actor, a.source_address, a.detail["reason"]) for a in alerts] == [
        ("INTRUDER", "127.0.0.2", DicomRefusal.UNKNOWN_AE), ("CT1", "127.0.0.2", DicomRefusal.UNEXPECTED_ADDRESS)]
    for alert in alerts:
        assert (alert.event_type, alert.outcome, alert.action, alert.actor_kind) == (
            events.NODE_AUTHENTICATION.value, events.SERIOUS_FAILURE, "E", "dicom")
        assert alert.destination == "PACS"


def test_failed_tls_handshakes_are_security_alerts(tls_listen, pki):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    server = tls_listen()
    assert tls_echoscu(server, pki, pki.stranger).returncode != 0  # a certificate from an untrusted CA
    assert tls_echoscu(server, pki, pki.ct1).returncode == 0
    [alert] = _records(events.SECURITY_ALERT)
    assert (alert.event_type, alert.outcome, alert.source_address) == (
        events.NODE_AUTHENTICATION.value, events.SERIOUS_FAILURE, "127.0.0.1")
    assert alert.detail["reason"].startswith("TLS handshake failed")


def test_nothing_recorded_with_auditing_off(dicom_server, worklist, store_dir, tmp_path, settings):
    settings.AUDIT_ENABLED = False
    proc, items = findscu(dicom_server, [f"{SPS}.Modality=CT"], tmp_path / "find")
    assert proc.returncode == 0 and len(items) == 2
    proc = storescu(port_of(dicom_server), write_study(tmp_path / "s", 2, study_instance_uid=generate_uid()))
    assert proc.returncode == 0, proc.stderr
    trail.flush()
    assert not AuditRecord.records.exists()


def test_refused_mwl_query_is_recorded_as_a_failure(dicom_server, worklist, tmp_path):
    proc, items = findscu(dicom_server, ["StudyInstanceUID=1.2.*", "PatientID="], tmp_path)
    assert items == []  # 0xA900: no wildcards in UIDs (PS3.4 C.2.2.2.2)
    [record] = _records(events.QUERY)
    assert record.outcome == events.SERIOUS_FAILURE and record.detail == {"answers": 0}
    assert record.objects[-1]["detail"]["keys"] == {"StudyInstanceUID": "1.2.*"}
