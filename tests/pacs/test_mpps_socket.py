"""MPPS over a real socket, pynetdicom as the modality's MPPS SCU (PS3.4 Annex F, IHE RAD-6/7)."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.models import PerformedProcedureStep
from pacs.signals import mpps_completed
from ris.models import RequestedProcedure, ScheduledProcedureStep, StatusChange
from tests.factories import make_patient, make_step
from tests.support.dicom import port_of
from tests.support.mpps import completion_dataset, n_create_dataset


@pytest.fixture
def mpps_scu(dicom_server):
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port_of(dicom_server), ae_title="PACS")
    assert assoc.is_established
    yield assoc
    assoc.release()


@pytest.fixture
def step(transactional_db):
    return make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1", modality="CT", station="CT1")


def n_create(assoc, ds, uid=None):
    uid = uid or generate_uid()
    status, attrs = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    return uid, status


def n_set(assoc, ds, uid):
    status, attrs = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
    return status


def test_in_progress_then_completed_moves_the_step(mpps_scu, step):
    received = []

    def listener(sender, performed_procedure_step, **kwargs):
        received.append((performed_procedure_step.pk, performed_procedure_step.status))

    mpps_completed.connect(listener)
    try:
        uid, status = n_create(mpps_scu, n_create_dataset(step))
        assert status.Status == 0x0000
        step.refresh_from_db()
        assert step.status == "STARTED"
        assert RequestedProcedure.objects.get(pk=step.requested_procedure_id).status == "IN_PROGRESS"
        pps = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
        assert pps.status == "IN PROGRESS" and pps.scheduled_step_id == step.pk
        assert pps.accession_number == "ACC1" and pps.calling_ae_title == "CT1" and pps.modality == "CT"
        assert pps.started_at is not None

        ds, image_uids = completion_dataset()
        assert n_set(mpps_scu, ds, uid).Status == 0x0000
        pps.refresh_from_db()
        step.refresh_from_db()
        assert pps.status == "COMPLETED" and pps.ended_at is not None
        assert step.status == "COMPLETED"
        assert RequestedProcedure.objects.get(pk=step.requested_procedure_id).status == "COMPLETED"
        assert sorted(pps.performed_instances.values_list("sop_instance_uid", flat=True)) == sorted(image_uids)
        assert received == [(pps.pk, "COMPLETED")]
        causes = list(StatusChange.objects.filter(entity="sps", object_id=step.pk).values_list("to_status", "cause"))
        assert causes == [("STARTED", f"MPPS N-CREATE {uid}"), ("COMPLETED", f"MPPS N-SET {uid}")]
    finally:
        mpps_completed.disconnect(listener)


def test_discontinued(mpps_scu, step):
    uid, _ = n_create(mpps_scu, n_create_dataset(step))
    ds, _ = completion_dataset("DISCONTINUED", n_images=0)
    assert n_set(mpps_scu, ds, uid).Status == 0x0000
    step.refresh_from_db()
    assert step.status == "DISCONTINUED"
    assert PerformedProcedureStep.objects.get(sop_instance_uid=uid).status == "DISCONTINUED"


def test_a_nul_in_a_value_is_kept_as_a_replacement_character(mpps_scu, step):
    """NUL is in no character repertoire (PS3.5 6.1) and cannot be stored as text or jsonb: the
    MPPS is recorded with U+FFFD in its place, not refused for the modality to retry."""
    ds = n_create_dataset(step)
    ds.PerformedProcedureStepDescription = "CT\x00HEAD"
    uid, status = n_create(mpps_scu, ds)
    assert status.Status == 0x0000
    pps = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert pps.performed_procedure_step_description == "CT\ufffdHEAD"
    assert pps.attributes["00400254"]["Value"] == ["CT\ufffdHEAD"]
    done, _ = completion_dataset()
    done.PerformedProcedureStepDescription = "CT\x00HEAD DONE"
    assert n_set(mpps_scu, done, uid).Status == 0x0000
    pps.refresh_from_db()
    assert pps.status == "COMPLETED" and pps.performed_procedure_step_description == "CT\ufffdHEAD DONE"


def test_intermediate_n_set_keeps_in_progress(mpps_scu, step):
    uid, _ = n_create(mpps_scu, n_create_dataset(step))
    ds, uids = completion_dataset("IN PROGRESS", n_images=2)
    del ds.PerformedProcedureStepEndDate
    del ds.PerformedProcedureStepEndTime
    assert n_set(mpps_scu, ds, uid).Status == 0x0000
    pps = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert pps.status == "IN PROGRESS" and pps.performed_instances.count() == 2
    step.refresh_from_db()
    assert step.status == "STARTED"


def _snapshot(step, uid):
    step.refresh_from_db()
    pps = PerformedProcedureStep.objects.filter(sop_instance_uid=uid).first()
    return (step.status, pps and (pps.status, pps.attributes, pps.ended_at, pps.performed_instances.count()),
            StatusChange.objects.count())


def test_n_set_after_final_state_is_refused_and_changes_nothing(mpps_scu, step):
    uid, _ = n_create(mpps_scu, n_create_dataset(step))
    ds, _ = completion_dataset()
    assert n_set(mpps_scu, ds, uid).Status == 0x0000
    before = _snapshot(step, uid)
    again, _ = completion_dataset("DISCONTINUED", n_images=5)
    status = n_set(mpps_scu, again, uid)
    assert status.Status == 0x0110
    assert status.ErrorID == 0xA710
    assert _snapshot(step, uid) == before


def test_forbidden_n_set_attribute_refused_and_changes_nothing(mpps_scu, step):
    uid, _ = n_create(mpps_scu, n_create_dataset(step))
    before = _snapshot(step, uid)
    ds, _ = completion_dataset()
    ds.PatientID = "SOMEONE-ELSE"
    status = n_set(mpps_scu, ds, uid)
    assert status.Status == 0x0106
    offending = status.AttributeIdentifierList
    assert 0x00100020 in ([int(offending)] if not isinstance(offending, list) else [int(t) for t in offending])
    assert _snapshot(step, uid) == before


def test_unknown_sop_instance_refused(mpps_scu, step):
    before = StatusChange.objects.count()
    ds, _ = completion_dataset()
    assert n_set(mpps_scu, ds, generate_uid()).Status == 0x0112
    assert StatusChange.objects.count() == before
    assert not PerformedProcedureStep.objects.exists()


def test_duplicate_n_create_refused(mpps_scu, step):
    uid, status = n_create(mpps_scu, n_create_dataset(step))
    assert status.Status == 0x0000
    _, again = n_create(mpps_scu, n_create_dataset(step), uid=uid)
    assert again.Status == 0x0111
    assert PerformedProcedureStep.objects.count() == 1


def test_n_create_must_be_in_progress(mpps_scu, step):
    _, status = n_create(mpps_scu, n_create_dataset(step, status="COMPLETED"))
    assert status.Status == 0x0106
    step.refresh_from_db()
    assert step.status == "SCHEDULED" and not PerformedProcedureStep.objects.exists()


def test_unscheduled_mpps_is_kept_for_reconciliation(mpps_scu, step):
    uid, status = n_create(mpps_scu, n_create_dataset(step, unscheduled=True))
    assert status.Status == 0x0000
    pps = PerformedProcedureStep.objects.get(sop_instance_uid=uid)
    assert pps.scheduled_step is None and pps.is_unscheduled
    ds, _ = completion_dataset()
    assert n_set(mpps_scu, ds, uid).Status == 0x0000
    pps.refresh_from_db()
    assert pps.status == "COMPLETED" and pps.performed_instances.count() == 3
    assert ScheduledProcedureStep.objects.get(pk=step.pk).status == "SCHEDULED"


def test_admin_lists_unscheduled(step, admin_client):
    PerformedProcedureStep.objects.create(sop_instance_uid="2.25.1", accession_number="", patient_id="P9")
    response = admin_client.get("/admin/pacs/performedprocedurestep/?scheduled=no")
    assert response.status_code == 200
    assert b"2.25.1" in response.content
