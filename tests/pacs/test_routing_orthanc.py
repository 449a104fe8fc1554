# ruff: noqa: F811 - pytest fixtures imported from helper modules
"""Routing to a real Orthanc VNA through a real Celery worker: C-STORE over one association,
storage commitment N-ACTION + N-EVENT-REPORT, archived only when every instance is committed;
VNA down then up; a SOP class refused; a worker killed mid-transfer."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from django.db import connection
from django.utils import timezone
from pydicom.uid import generate_uid

from audit import trail
from audit.models import AuditRecord
from pacs.models import Study, Transfer, TransferItem, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services.routing import destinations, sweep, transfers
from project.auditing import events
from ris.models import StatusChange
from tests.support.dicom import port
from tests.support.orthanc import OrthancProcess, storescu, write_study
from tests.support.routing import complete_now, send_matched_study
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


def destination_for(vna, **kwargs) -> VnaDestination:
    return VnaDestination.objects.create(name=f"orthanc-{vna.dicom_port}", kind=tr.KIND_DICOM, ae_title=vna.aet,
                                         host="127.0.0.1", port=vna.dicom_port, **kwargs)


def test_study_routed_committed_archived_with_corrections(engine, orthanc, sender, worker, tmp_path):
    destination_for(orthanc)
    study, _ = send_matched_study(engine, tmp_path, 5)
    complete_now(study)
    transfer = Transfer.objects.get(study=study)
    wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 60,
             message=f"transfer committed; worker log:\n{worker.log()[-3000:]}")
    study.refresh_from_db()
    assert study.status == im.ARCHIVED and study.archived_at is not None
    assert orthanc.count_instances() == 5
    assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_COMMITTED).count() == 5
    uid = TransferItem.objects.filter(transfer=transfer).first().instance.sop_instance_uid
    tags = orthanc.instance_tags(uid)
    assert tags["PatientName"] == "DOE^JOHN"  # corrected from the order on the way to the VNA
    assert study.corrections == {"PatientName": ["DOE^JOHNNY", "DOE^JOHN"]}
    history = [c.to_status for c in StatusChange.objects.filter(entity="transfer", object_id=transfer.pk)]
    assert history == [tr.IN_PROGRESS, tr.COMMITTING, tr.COMMITTED]
    # On the audit trail (PS3.15 A.5.3.7): received once (action C, one record for the association)
    # and sent once (action R, with the destination), both naming the study and its patient.
    trail.flush()
    transferred = {r.action: r for r in AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value)}
    assert sorted(transferred) == ["C", "R"]
    assert transferred["R"].destination == f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    assert transferred["R"].objects[-1]["id"] == study.study_instance_uid
    assert transferred["R"].objects[-1]["detail"]["instances"] == 5
    assert transferred["C"].objects[-1]["detail"] == {"instances": 5} and transferred["C"].actor == "MODALITY"
    assert {p.patient_id for r in transferred.values() for p in r.patients.all()} == {"P1"}
    # The local copies are still there: nothing is deleted by routing.
    assert all((study_file.exists()) for study_file in [
        __import__("pacs.storage", fromlist=["x"]).absolute_path(i.instance.path)
        for i in TransferItem.objects.filter(transfer=transfer)])
    # Running the task again is a no-op.
    assert transfers.run_transfer(transfer.pk) == "skipped"


def test_vna_down_then_up_is_delivered_once(engine, sender, worker, tmp_path):
    from tests.support.orthanc import OrthancProcess

    vna = OrthancProcess(tmp_path / "late-orthanc", engine_aet="PACS", engine_port=port(engine))
    destination_for(vna)
    study, _ = send_matched_study(engine, tmp_path, 3)
    complete_now(study)
    transfer = Transfer.objects.get(study=study)
    wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.RETRYING, 30, message="retrying")
    refused = Transfer.objects.get(pk=transfer.pk)
    assert refused.attempts >= 1 and "no association" in refused.reason
    vna.start()
    try:
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 60,
                 message=f"committed after the VNA came up; worker:\n{worker.log()[-3000:]}")
        assert vna.count_instances() == 3
        assert Transfer.objects.get(pk=transfer.pk).attempts >= 2
    finally:
        vna.stop()


def test_vna_refusing_a_sop_class_fails_that_instance_with_the_reason_and_sends_the_others(
        engine, sender, worker, tmp_path):
    """Orthanc 1.10.1 cannot be told to refuse a SOP class by configuration; it is told to accept
    only little-endian uncompressed transfer syntaxes, so the presentation context of the Secondary
    Capture instance stored JPEG-lossless is refused: the same path as a refused SOP class."""
    import subprocess

    from tests.support.orthanc import SECONDARY_CAPTURE, OrthancProcess

    vna = OrthancProcess(tmp_path / "picky", engine_aet="PACS", engine_port=port(engine),
                         extra={"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]})
    vna.start()
    try:
        destination_for(vna)
        study, _ = send_matched_study(engine, tmp_path, 3)
        rp = study.requested_procedure
        sc = write_study(tmp_path / "sc", 1, study_instance_uid=study.study_instance_uid, sop_class_uid=SECONDARY_CAPTURE,
                         modality="OT", accession_number=rp.accession_number, patient_id="P1",
                         patient_name="DOE^JOHN")
        subprocess.run(["/usr/bin/dcmcjpeg", str(sc[0]), str(sc[0])], check=True)  # JPEG lossless SV1
        from pydicom import dcmread

        from pacs.models import Instance
        from tests.support.dicom import pynetdicom_store

        assert pynetdicom_store(port(engine), [dcmread(sc[0])]) == [0x0000]  # proposes JPEG lossless only

        assert Instance.objects.get(sop_class_uid=SECONDARY_CAPTURE).transfer_syntax_uid == "1.2.840.10008.1.2.4.70"
        complete_now(study)
        transfer = Transfer.objects.get(study=study)
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.FAILED, 60,
                 message=f"failed; worker:\n{worker.log()[-3000:]}")
        failed = Transfer.objects.get(pk=transfer.pk)
        assert SECONDARY_CAPTURE in failed.reason and "not accepted by the VNA" in failed.reason
        assert failed.attempts <= 2  # permanent: not retried (dcmtk: one more attempt for what followed it)
        assert vna.count_instances() == 3  # the others were sent
        assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_COMMITTED).count() == 3
        assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_FAILED).count() == 1
        study.refresh_from_db()
        assert study.status == im.COMPLETE  # not archived: one instance is not in the VNA
    finally:
        vna.stop()


SLOW_VNA = """
function ReceivedInstanceFilter(dicom, origin, info)
  os.execute('sleep 0.25')
  return true
end
"""


def test_worker_killed_mid_transfer_completes_after_restart_each_instance_once(engine, sender, worker,
                                                                                   tmp_path):
    from tests.support.orthanc import OrthancProcess

    vna = OrthancProcess(tmp_path / "slow", engine_aet="PACS", engine_port=port(engine), lua=SLOW_VNA).start()
    try:
        destination_for(vna)
        study, _ = send_matched_study(engine, tmp_path, 25)
        complete_now(study)
        transfer = Transfer.objects.get(study=study)
        wait_for(lambda: TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_SENT).count() >= 10, 60,
                 interval=0.05, message=f"ten sent; worker:\n{worker.log()[-3000:]}")
        worker.kill()
        assert Transfer.objects.get(pk=transfer.pk).status == tr.IN_PROGRESS
        pending = TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_PENDING).count()
        assert pending > 0, "the worker finished before it was killed"

        worker.start()
        # No worker holds the row once its lease has expired: the sweep hands it on.
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).lease_expires_at < timezone.now(), 30)
        assert sweep.sweep() >= 1
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 90,
                 message=f"committed after restart; worker:\n{worker.log()[-3000:]}")
        uids = vna.sop_instance_uids()
        assert len(uids) == 25 and len(set(uids)) == 25
        assert Transfer.objects.get(pk=transfer.pk).attempts >= 2
        study.refresh_from_db()
        assert study.status == im.ARCHIVED
    finally:
        vna.stop()


def test_stow_rs_destination_from_the_environment(engine, worker, tmp_path, routing_settings):
    """VNA_DESTINATIONS=stow+http://...: the study is POSTed to Orthanc's DICOMweb plug-in."""
    from tests.support.orthanc import OrthancProcess

    vna = OrthancProcess(tmp_path / "web", engine_aet="PACS", engine_port=port(engine), dicomweb=True).start()
    try:
        routing_settings.VNA_DESTINATIONS = f"stow+http://127.0.0.1:{vna.http_port}/dicom-web"
        destinations._synced = False
        study, _ = send_matched_study(engine, tmp_path, 4)
        complete_now(study)
        transfer = Transfer.objects.get(study=study)
        assert transfer.destination.kind == tr.KIND_STOW and transfer.destination.from_environment
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 60,
                 message=f"STOW committed; worker:\n{worker.log()[-3000:]}")
        assert vna.count_instances() == 4
        study.refresh_from_db()
        assert study.status == im.ARCHIVED
    finally:
        destinations._synced = False
        vna.stop()


def test_completed_by_mpps_then_by_the_quiet_period_sweep_task_both_routed(engine, orthanc, worker, tmp_path,
                                                                           routing_settings):
    """Study A completes by MPPS (N-CREATE/N-SET from the modality); study B has no MPPS and is
    completed by the ``pacs.imaging_sweep`` task run by the worker; both reach the VNA committed."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    from project.celery import app
    from tests.support.mpps import completion_dataset, n_create_dataset

    destination_for(orthanc)
    routing_settings.STUDY_QUIET_PERIOD_SECONDS = 3600  # A must not complete by quiet period here
    study_a, paths = send_matched_study(engine, tmp_path, 2)
    step = study_a.requested_procedure.steps.get()
    ds_set, _ = completion_dataset(n_images=0)
    ds_set.PerformedSeriesSequence[0].ReferencedImageSequence = []
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port(engine), ae_title="PACS")
    mpps_uid = generate_uid()
    assert assoc.send_n_create(n_create_dataset(step), ModalityPerformedProcedureStep, mpps_uid)[0].Status == 0
    assert assoc.send_n_set(ds_set, ModalityPerformedProcedureStep, mpps_uid)[0].Status == 0
    assoc.release()
    study_a.refresh_from_db()
    assert study_a.status == im.COMPLETE
    wait_for(lambda: Study.objects.get(pk=study_a.pk).status == im.ARCHIVED, 60,
             message=f"A archived; worker:\n{worker.log()[-3000:]}")

    study_b, _ = send_matched_study(engine, tmp_path, 3)
    Study.objects.filter(pk=study_b.pk).update(last_received_at=timezone.now() - dt.timedelta(hours=2))
    app.send_task("pacs.imaging_sweep")  # what celery beat sends every IMAGING_SWEEP_SECONDS
    wait_for(lambda: Study.objects.get(pk=study_b.pk).status == im.ARCHIVED, 60,
             message=f"B archived; worker:\n{worker.log()[-3000:]}")
    assert orthanc.count_instances() == 5


def test_late_instance_after_archiving_is_sent_alone_and_the_study_archived_again(engine, orthanc, worker, tmp_path):
    destination_for(orthanc)
    study, _ = send_matched_study(engine, tmp_path, 3)
    complete_now(study)
    wait_for(lambda: Study.objects.get(pk=study.pk).status == im.ARCHIVED, 60,
             message=f"archived; worker:\n{worker.log()[-3000:]}")
    rp = study.requested_procedure
    late = write_study(tmp_path / "late", 1, study_instance_uid=study.study_instance_uid,
                       accession_number=rp.accession_number, patient_id="P1", patient_name="DOE^JOHN")
    assert storescu(port(engine), late).returncode == 0
    assert Study.objects.get(pk=study.pk).status == im.RECEIVING  # re-opened
    complete_now(study)
    second = Transfer.objects.get(study=study, batch=2)
    assert second.items.count() == 1  # only the late instance
    wait_for(lambda: Study.objects.get(pk=study.pk).status == im.ARCHIVED, 60,
             message=f"archived again; worker:\n{worker.log()[-3000:]}")
    assert orthanc.count_instances() == 4
    assert Transfer.objects.get(pk=second.pk).status == tr.COMMITTED


def test_stow_rs_with_credentials_sealed_at_rest(engine, worker, tmp_path, routing_settings):
    """A STOW-RS VNA that asks for HTTP basic authentication: the credentials declared in
    VNA_DESTINATIONS are stored sealed, and the worker (another process) opens them to send."""
    password = "stow-pw-90210"
    vna = OrthancProcess(tmp_path / "web", engine_aet="PACS", engine_port=port(engine), dicomweb=True,
                         extra={"AuthenticationEnabled": True, "RegisteredUsers": {"engine": password}}).start()
    try:
        assert requests.get(f"{vna.url}/statistics", timeout=10).status_code == 401
        routing_settings.VNA_DESTINATIONS = f"stow+http://engine:{password}@127.0.0.1:{vna.http_port}/dicom-web"
        destinations._synced = False
        study, _ = send_matched_study(engine, tmp_path, 3)
        complete_now(study)
        transfer = Transfer.objects.get(study=study)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT password FROM {VnaDestination._meta.db_table} WHERE id = %s",
                           [transfer.destination_id])
            (stored,) = cursor.fetchone()
        assert stored.startswith("fernet:") and password not in stored
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 60,
                 message=f"STOW committed; worker:\n{worker.log()[-3000:]}")
        statistics = requests.get(f"{vna.url}/statistics", auth=("engine", password), timeout=10).json()
        assert statistics["CountInstances"] == 3
    finally:
        destinations._synced = False
        vna.stop()
